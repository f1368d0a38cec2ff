"""Benchmark suites: reference images + target trajectories (+ ground-truth videos) read from shard folders.

A suite is any folder of WebDataset shards in the sample schema (docs/method.md): the toy-world test split
(``datamodules.toy_world.write_toy_world``) or a folder made by ``ardrag-prepare`` from real videos. Each sample
becomes one item: frame 0 is the reference image, the clip is the ground truth, and up to ``max_tracks`` of its
tracks are the targets to condition on, chosen by a seeded rule that depends only on (suite seed, item key) and
is recorded in the item (``track_indices``), so every method and every run sees the same conditions.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np


@dataclass
class SuiteConfig:
    """Where a suite's samples come from and how conditions are chosen."""

    name: str
    """Suite name: results go to ``results/<name>/``."""
    path: str
    """Shard folder, glob or list (anything ``datamodules.shards.iter_samples`` accepts)."""
    max_items: int | None = None
    """Use the first this many valid samples (shard order), or all."""
    max_tracks: int = 8
    """Targets per item (K)."""
    num_frames: int | None = None
    """Trim clips and tracks to this many frames (or keep the stored length)."""
    min_motion: float = 1.0
    """Pixels: a track 'moves' if its largest displacement from frame 0 (visible frames) reaches this."""
    seed: int = 0
    """Seed of the track-selection rule."""
    size: list[int] | None = None
    """Optional [H, W] to resize clips to (tracks rescaled); default: stored size."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_tracks < 1:
            raise ValueError("suite.max_tracks must be >= 1")
        if self.num_frames is not None and self.num_frames < 3:
            raise ValueError("suite.num_frames must be >= 3 (motion smoothness needs 3 frames)")
        if self.size is not None and len(self.size) != 2:
            raise ValueError("suite.size must be [H, W]")


def select_tracks(
    tracks: np.ndarray, visible: np.ndarray, k: int, min_motion: float, seed: int, key: str
) -> np.ndarray:
    """Indices (sorted) of up to ``k`` targets: tracks visible on frame 0, moving ones first.

    Moving tracks (largest visible displacement >= ``min_motion`` px) are drawn at random with a generator
    seeded by (``seed``, crc32(``key``)); if none moves, static visible tracks are used instead, so every item
    has targets. Returns an empty array when no track is visible on frame 0.
    """
    vis0 = np.flatnonzero(visible[0])
    if len(vis0) == 0:
        return vis0
    disp = np.linalg.norm(tracks - tracks[:1], axis=-1)
    disp = np.where(visible, disp, 0.0).max(axis=0)
    moving = vis0[disp[vis0] >= min_motion]
    pool = moving if len(moving) else vis0
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return np.sort(rng.permutation(pool)[:k])


class Suite:
    """Iterate benchmark items of a shard folder (deterministic order, corrupt samples skipped and counted).

    Item: ``{"key", "image" uint8 (H, W, 3), "video" uint8 (T, H, W, 3) ground truth, "tracks" float32
    (T, K, 2) pixels of the image, "visible" bool (T, K), "track_indices", "prompt", "negative_prompt",
    "num_frames" T, "fps", "size" (H, W)}``.
    """

    def __init__(self, config: SuiteConfig | dict[str, Any]) -> None:
        from datamodules.shards import SkipStats

        self.config = config if isinstance(config, SuiteConfig) else SuiteConfig(**config)
        self.stats = SkipStats()
        self.n_no_tracks = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from datamodules.shards import iter_samples

        cfg = self.config
        n = 0
        for sample in iter_samples(cfg.path, stats=self.stats):
            if cfg.max_items is not None and n >= cfg.max_items:
                break
            item = self._item(sample)
            if item is None:
                continue
            n += 1
            yield item

    def items(self) -> list[dict[str, Any]]:
        """All items as a list (suites are small enough to hold; the cache holds generated videos)."""
        return list(self)

    def _item(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        cfg = self.config
        video, tracks, visible = sample["video"], sample["tracks"], sample["visible"]
        t = min(len(video), len(tracks))
        if cfg.num_frames is not None:
            if t < cfg.num_frames:
                self.stats.add("too_short", sample["key"], f"{t} frames < suite.num_frames {cfg.num_frames}")
                return None
            t = cfg.num_frames
        video, tracks, visible = video[:t], tracks[:t].astype(np.float32), visible[:t]
        if cfg.size is not None and tuple(cfg.size) != video.shape[1:3]:
            h, w = video.shape[1:3]
            nh, nw = cfg.size
            video = np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA) for f in video])
            tracks = tracks * np.array([nw / w, nh / h], np.float32)
        idx = select_tracks(tracks, visible, cfg.max_tracks, cfg.min_motion, cfg.seed, sample["key"])
        if len(idx) == 0:
            # not corrupt, but unusable as a benchmark item: counted separately
            self.n_no_tracks += 1
            return None
        meta = sample.get("meta", {})
        return {
            "key": sample["key"],
            "image": video[0],
            "video": video,
            "tracks": tracks[:, idx],
            "visible": visible[:, idx],
            "track_indices": idx.tolist(),
            "prompt": meta.get("prompt", ""),
            "negative_prompt": meta.get("negative_prompt", ""),
            "num_frames": t,
            "fps": float(meta.get("fps", 16.0)),
            "size": tuple(video.shape[1:3]),
        }

    def describe(self) -> dict[str, Any]:
        """Config and skip counts, for meta.json."""
        return {
            "config": asdict(self.config),
            "skipped": self.stats.as_dict(),
            "no_visible_tracks": self.n_no_tracks,
        }
