"""Aesthetic score for the benchmark: the LAION predictor of ``ardrag.aesthetic`` (shared with the RL reward, which
must not import the benchmark) and its torchmetrics wrapper ``AestheticScore``.

Without local CLIP and head weights the metric is *absent* (NA in tables, with a note), never 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ardrag.aesthetic import (
    CLIP_MEAN,
    CLIP_STD,
    AestheticHead,
    AestheticScorer,
    aesthetic_score,
    load_aesthetic,
)
from benchmark.metrics.base import PerVideoMean

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "AestheticHead",
    "AestheticScore",
    "AestheticScorer",
    "aesthetic_score",
    "load_aesthetic",
]


class AestheticScore(PerVideoMean):
    """torchmetrics wrapper: mean per-video aesthetic score; ``compute()['value']`` is None without weights."""

    def __init__(self, scorer: AestheticScorer | None, frame_stride: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scorer, self.frame_stride = scorer, frame_stride
        self.available = scorer is not None

    def score(self, video: np.ndarray) -> float | None:
        return aesthetic_score(video, self.scorer, self.frame_stride)["value"]
