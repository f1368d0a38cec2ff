"""A torchmetrics base for metrics that average one score per video and record the frames/resolution seen."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric


class PerVideoMean(Metric):
    """Mean of ``score(video)`` over the videos passed to ``update``; ``compute()`` returns a record dict.

    Subclasses implement ``score(video) -> float | None`` (None: not scored, e.g. no weights) and may override
    ``available`` (False makes ``compute()['value']`` None: absent, never 0).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_videos", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("frames", default=torch.tensor(0), dist_reduce_fx="max")
        self.add_state("height", default=torch.tensor(0), dist_reduce_fx="max")
        self.add_state("width", default=torch.tensor(0), dist_reduce_fx="max")

    available = True

    def score(self, video: np.ndarray) -> float | None:
        raise NotImplementedError

    def update(self, video: Any) -> None:
        """``video``: one uint8 (T, H, W, 3) video (numpy or tensor)."""
        video = video.cpu().numpy() if torch.is_tensor(video) else np.asarray(video)
        self.frames = torch.maximum(self.frames, torch.tensor(video.shape[0]))
        self.height = torch.maximum(self.height, torch.tensor(video.shape[1]))
        self.width = torch.maximum(self.width, torch.tensor(video.shape[2]))
        value = self.score(video)
        if value is None:
            return
        self.total += value
        self.n_videos += 1

    def compute(self) -> dict[str, Any]:
        n = int(self.n_videos)
        value = None if not self.available else (float(self.total) / n if n else float("nan"))
        return {
            "value": value,
            "n_videos": n,
            "frames": int(self.frames),
            "resolution": [int(self.height), int(self.width)],  # the largest seen
        }
