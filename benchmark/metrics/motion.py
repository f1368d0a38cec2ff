"""Motion alignment: ObjMC, the mean L2 pixel error between the target trajectories and the trajectories
tracked in a generated video.

Two independent instruments measure the generated motion:
- ``"lk"``: :func:`ardrag.tracking.track_points` (pyramidal Lucas-Kanade, forward-backward check) -- the same
  tracker the RL reward uses, so this column is *coupled* to the reward;
- ``"flow"``: :func:`ardrag.tracking.track_points_flow` (dense Farneback or DIS optical flow chained along the
  points) -- a different instrument, reported so that the metric is not only the reward's own measuring stick.

Per video we report, over the target-visible (point, frame) pairs of frames 1..T-1 (frame 0 is where the
tracker is seeded, so its error is zero by construction and would only dilute the mean):
- ``objmc``: mean error over the pairs the tracker still sees (lost points are excluded);
- ``coverage``: the fraction of pairs the tracker still sees (read ``objmc`` together with it);
- ``objmc_penalised``: mean error over *all* pairs, a lost point holding its last tracked position;
- ``*_norm``: the same divided by the image diagonal (resolution-free).
Errors are computed on the generated video's own resolution and reported in pixels of ``report_size``
(default: the video's size), scaling x and y separately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

INSTRUMENTS = ("lk", "flow")

# Per-video sums that pool exactly across videos (a pooled mean, not a mean of per-video means).
_SUM_KEYS = ("err_sum", "err_count", "pen_sum", "pen_count")


def _tracker(instrument: str) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    from ardrag import tracking  # lazy: only tracking is needed, never training code

    if instrument == "lk":
        return tracking.track_points
    if instrument == "flow":
        return tracking.track_points_flow
    raise ValueError(f"unknown motion instrument {instrument!r}; use one of {INSTRUMENTS}")


def objmc_sums(
    target_tracks: np.ndarray,
    target_visible: np.ndarray | None,
    tracked: np.ndarray,
    tracked_visible: np.ndarray,
    scale_xy: tuple[float, float] = (1.0, 1.0),
) -> dict[str, float]:
    """Error sums between target and tracked trajectories (the functional core, no tracker involved).

    Args:
        target_tracks: float (T, N, 2) target (x, y) in video pixels; ``tracked`` was seeded at frame 0 with it.
        target_visible: bool (T, N) or None (all visible); only target-visible pairs count.
        tracked: float (T, N, 2) positions measured in the video.
        tracked_visible: bool (T, N) whether the instrument still follows the point.
        scale_xy: multiply x and y errors by these before the norm (video pixels -> report pixels).

    Returns:
        ``err_sum``/``err_count`` over target-visible and tracked pairs; ``pen_sum``/``pen_count`` over all
        target-visible pairs with lost points held at their last tracked position (frames 1..T-1).
    """
    target_tracks = np.asarray(target_tracks, np.float64)
    tracked = np.asarray(tracked, np.float64)
    if target_tracks.shape != tracked.shape or target_tracks.ndim != 3 or target_tracks.shape[-1] != 2:
        raise ValueError(f"tracks must both be (T, N, 2); got {target_tracks.shape} and {tracked.shape}")
    t_len, n = target_tracks.shape[:2]
    tv = np.ones((t_len, n), bool) if target_visible is None else np.asarray(target_visible, bool)
    kv = np.asarray(tracked_visible, bool)
    # A point can only be followed if it was seeded on a visible target at frame 0.
    tv = tv & tv[:1]
    from ardrag.tracking import hold_last  # lazy, like the trackers: the one forward-fill rule

    held = hold_last(tracked, kv)
    scale = np.asarray(scale_xy, np.float64)
    err = np.linalg.norm((tracked - target_tracks) * scale, axis=-1)  # (T, N)
    pen = np.linalg.norm((held - target_tracks) * scale, axis=-1)
    tv[0] = False  # frame 0 is the seed: zero error by construction
    seen = tv & kv
    return {
        "err_sum": float(err[seen].sum()),
        "err_count": int(seen.sum()),
        "pen_sum": float(pen[tv].sum()),
        "pen_count": int(tv.sum()),
    }


def finalize_objmc(sums: dict[str, float], report_size: tuple[int, int]) -> dict[str, float]:
    """Turn pooled sums into ObjMC, coverage, penalised ObjMC and their per-diagonal versions.

    ``report_size`` is (H, W) of the pixels the errors are expressed in. Values are NaN when no pair counts.
    """
    diag = float(np.hypot(*report_size))
    err = sums["err_sum"] / sums["err_count"] if sums["err_count"] else float("nan")
    pen = sums["pen_sum"] / sums["pen_count"] if sums["pen_count"] else float("nan")
    cov = sums["err_count"] / sums["pen_count"] if sums["pen_count"] else float("nan")
    return {
        "objmc": err,
        "objmc_penalised": pen,
        "coverage": cov,
        "objmc_norm": err / diag,
        "objmc_penalised_norm": pen / diag,
    }


def motion_sums(
    video: np.ndarray,
    target_tracks: np.ndarray,
    target_visible: np.ndarray | None = None,
    instrument: str = "lk",
    track_size: tuple[int, int] | None = None,
    report_size: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Track the targets' frame-0 points through ``video`` and return the error sums (see :func:`objmc_sums`).

    Args:
        video: uint8 (T, H, W, 3) generated video.
        target_tracks: float (T', N, 2) targets in pixels of ``track_size`` (H, W) (default: the video's size);
            they are rescaled to the video. Only the first min(T, T') frames are compared.
        target_visible: bool (T', N) or None.
        instrument: ``"lk"`` (point tracker) or ``"flow"`` (dense optical flow).
        report_size: (H, W) whose pixels the errors are expressed in (default: the video's size).
    """
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 (T, H, W, 3); got {video.dtype} {video.shape}")
    h, w = video.shape[1:3]
    track_size = track_size or (h, w)
    report_size = report_size or (h, w)
    t_len = min(video.shape[0], np.shape(target_tracks)[0])
    targets = np.asarray(target_tracks, np.float64)[:t_len] * [w / track_size[1], h / track_size[0]]
    tvis = None if target_visible is None else np.asarray(target_visible, bool)[:t_len]
    valid0 = np.ones(targets.shape[1], bool) if tvis is None else tvis[0]
    out = {k: 0.0 for k in _SUM_KEYS}
    if t_len < 2 or not valid0.any():
        return out
    targets, tvis = targets[:, valid0], (None if tvis is None else tvis[:, valid0])
    tracked, kvis = _tracker(instrument)(video[:t_len], targets[0].astype(np.float32))
    scale = (report_size[1] / w, report_size[0] / h)
    return objmc_sums(targets, tvis, np.asarray(tracked), np.asarray(kvis), scale)


def motion_metrics(
    video: np.ndarray,
    target_tracks: np.ndarray,
    target_visible: np.ndarray | None = None,
    instrument: str = "lk",
    track_size: tuple[int, int] | None = None,
    report_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """ObjMC of one video (pixels of ``report_size``), with coverage, penalised and per-diagonal variants.

    Also records ``n_points``, ``frames``, ``resolution`` (the report (H, W)) and ``instrument``.
    """
    h, w = np.shape(video)[1:3]
    report_size = tuple(report_size or (h, w))
    sums = motion_sums(video, target_tracks, target_visible, instrument, track_size, report_size)
    out: dict[str, Any] = finalize_objmc(sums, report_size)
    out.update(
        n_points=int(np.shape(target_tracks)[1]),
        frames=int(min(np.shape(video)[0], np.shape(target_tracks)[0])),
        resolution=list(report_size),
        instrument=instrument,
    )
    return out


class ObjMC(Metric):
    """torchmetrics wrapper of :func:`motion_sums`: pooled ObjMC over all videos seen.

    ``update(video, tracks, visible=None)`` takes one video (uint8 (T, H, W, 3), numpy or tensor) and its target
    tracks (T, N, 2) in pixels of ``track_size``; ``compute()`` returns the dict of :func:`finalize_objmc` plus
    ``n_videos``, ``frames`` and ``resolution``.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(
        self,
        instrument: str = "lk",
        report_size: tuple[int, int] | None = None,
        track_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if instrument not in INSTRUMENTS:
            raise ValueError(f"unknown motion instrument {instrument!r}; use one of {INSTRUMENTS}")
        self.instrument, self.report_size, self.track_size = instrument, report_size, track_size
        for key in _SUM_KEYS:
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_videos", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("frames", default=torch.tensor(0), dist_reduce_fx="max")
        self._seen_size: tuple[int, int] | None = None

    def update(self, video: Any, tracks: Any, visible: Any = None) -> None:
        video = video.cpu().numpy() if torch.is_tensor(video) else np.asarray(video)
        tracks = tracks.cpu().numpy() if torch.is_tensor(tracks) else np.asarray(tracks)
        if visible is not None:
            visible = visible.cpu().numpy() if torch.is_tensor(visible) else np.asarray(visible)
        size = tuple(self.report_size or video.shape[1:3])
        if self._seen_size is not None and size != self._seen_size:
            raise ValueError(f"videos of different sizes {size} vs {self._seen_size}: set report_size")
        self._seen_size = size
        sums = motion_sums(video, tracks, visible, self.instrument, self.track_size, size)
        for key in _SUM_KEYS:
            setattr(self, key, getattr(self, key) + sums[key])
        self.n_videos += 1
        self.frames = torch.maximum(self.frames, torch.tensor(min(video.shape[0], tracks.shape[0])))

    def reset(self) -> None:
        super().reset()
        self._seen_size = None

    def compute(self) -> dict[str, Any]:
        size = self._seen_size or (0, 0)
        out: dict[str, Any] = finalize_objmc({k: float(getattr(self, k)) for k in _SUM_KEYS}, size)
        out.update(n_videos=int(self.n_videos), frames=int(self.frames), resolution=list(size))
        return out
