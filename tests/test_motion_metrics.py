"""ObjMC: exact math of the core, known-motion clips through both instruments, the `static` floor."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from benchmark.metrics.motion import ObjMC, finalize_objmc, motion_metrics, objmc_sums


def _texture(size: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (uint8 (size, size, 3)): trackable everywhere."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 2.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return (tex * 255).astype(np.uint8)


def _translated_clip(vel: tuple[float, float], frames: int = 12, size: int = 64) -> np.ndarray:
    """A crop of a texture translated by ``vel`` px/frame (content moves by +vel), uint8 (T, size, size, 3)."""
    tex = _texture(2 * size)
    out = []
    for t in range(frames):
        # content at crop pixel p comes from texture pixel p + offset - vel * t
        m = np.float32([[1, 0, size // 2 - vel[0] * t], [0, 1, size // 2 - vel[1] * t]])
        out.append(cv2.warpAffine(tex, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return np.stack(out)


def _grid_points(size: int = 64, margin: int = 16, step: int = 8) -> np.ndarray:
    xs = np.arange(margin, size - margin + 1, step, dtype=np.float32)
    return np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)


def test_core_exact_with_lost_points():
    # 2 points, 3 frames. Point 1 is lost at frame 2 and held at its frame-1 position for the penalty.
    target = np.array([[[0, 0], [10, 10]], [[3, 4], [10, 10]], [[6, 8], [20, 10]]], np.float64)
    tracked = np.array([[[0, 0], [10, 10]], [[0, 0], [10, 10]], [[0, 0], [99, 99]]], np.float64)
    kvis = np.array([[1, 1], [1, 1], [1, 0]], bool)
    sums = objmc_sums(target, None, tracked, kvis)
    # seen pairs (frames 1-2): p0 f1 = 5, p1 f1 = 0, p0 f2 = 10 -> 15 / 3
    assert sums["err_count"] == 3 and sums["err_sum"] == pytest.approx(15.0)
    # penalised adds p1 f2 held at (10, 10) vs (20, 10) = 10 -> 25 / 4
    assert sums["pen_count"] == 4 and sums["pen_sum"] == pytest.approx(25.0)
    m = finalize_objmc(sums, (30, 40))
    assert m["objmc"] == pytest.approx(5.0)
    assert m["objmc_penalised"] == pytest.approx(6.25)
    assert m["coverage"] == pytest.approx(0.75)
    assert m["objmc_norm"] == pytest.approx(5.0 / 50.0)
    # report-resolution scaling: x errors doubled -> p0 f1 = hypot(6, 4)
    scaled = objmc_sums(target[:2, :1], None, tracked[:2, :1], kvis[:2, :1], scale_xy=(2.0, 1.0))
    assert scaled["err_sum"] == pytest.approx(np.hypot(6, 4))


def test_core_ignores_targets_invisible_at_frame0():
    target = np.zeros((3, 2, 2))
    target[:, 1] = [[0, 0], [5, 0], [10, 0]]
    tvis = np.array([[1, 0], [1, 1], [1, 1]], bool)  # point 1 is not on frame 0: cannot be seeded
    sums = objmc_sums(target, tvis, np.zeros_like(target), np.ones((3, 2), bool))
    assert sums["pen_count"] == 2 and sums["err_sum"] == 0.0


@pytest.mark.parametrize("instrument", ["lk", "flow"])
def test_objmc_known_motion(instrument):
    # Content moves at (1.0, 0.5) px/frame; targets ask for (2.0, 0.5): the error at frame t is exactly t px.
    frames = 12
    video = _translated_clip((1.0, 0.5), frames)
    start = _grid_points()
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    targets = start[None] + t * np.array([2.0, 0.5])
    m = motion_metrics(video, targets, instrument=instrument)
    known = float(np.mean(np.arange(1, frames)))  # mean of t over frames 1..T-1 = 6.0
    assert m["coverage"] == pytest.approx(1.0)
    assert m["objmc"] == pytest.approx(known, abs=0.15)
    assert m["objmc_penalised"] == pytest.approx(known, abs=0.15)
    assert m["resolution"] == [64, 64] and m["frames"] == frames
    # Targets that follow the content exactly: error ~ 0, up to the instrument's accuracy (chained dense flow
    # drifts a little more than LK over 11 frames).
    exact = start[None] + t * np.array([1.0, 0.5])
    assert (
        motion_metrics(video, exact, instrument=instrument)["objmc"] < {"lk": 0.15, "flow": 0.3}[instrument]
    )
    # Reported at twice the resolution: twice the pixels; per-diagonal value unchanged.
    m2 = motion_metrics(video, targets, instrument=instrument, report_size=(128, 128))
    assert m2["objmc"] == pytest.approx(2 * m["objmc"], rel=1e-6)
    assert m2["objmc_norm"] == pytest.approx(m["objmc_norm"], rel=1e-6)


def test_static_video_objmc_is_mean_target_displacement():
    # `static` baseline: the tracker sees no motion, so ObjMC = mean |target_t - target_0| over frames 1..T-1.
    frames = 10
    video = np.repeat(_texture(64)[None], frames, 0)
    rng = np.random.default_rng(1)
    start = _grid_points()
    vel = rng.uniform(-1.5, 1.5, size=(len(start), 2))
    targets = start[None] + np.arange(frames)[:, None, None] * vel[None]
    expected = float(np.linalg.norm(targets[1:] - targets[:1], axis=-1).mean())
    for instrument in ("lk", "flow"):
        m = motion_metrics(video, targets, instrument=instrument)
        assert m["coverage"] == 1.0
        assert m["objmc"] == pytest.approx(expected, abs=0.1)


def test_torchmetrics_wrapper_pools_videos_and_rescales_tracks():
    frames = 8
    static = np.repeat(_texture(64)[None], frames, 0)
    start = _grid_points()
    # targets given at 128 px: the wrapper rescales them to the 64 px video, reports at 64 px
    t = np.arange(frames)[:, None, None]
    tracks_128 = 2 * (start[None] + t * np.array([1.0, 0.0]))
    metric = ObjMC(instrument="lk", track_size=(128, 128))
    metric.update(torch.from_numpy(static), torch.from_numpy(tracks_128))
    metric.update(static, 2 * (start[None] + t * np.array([0.0, 3.0])))
    out = metric.compute()
    # pooled over equal counts: (mean t over 1..7) * (1 + 3) / 2 = 4 * 2 = 8
    assert out["objmc"] == pytest.approx(8.0, abs=0.1)
    assert out["n_videos"] == 2 and out["resolution"] == [64, 64] and out["frames"] == frames
    metric.reset()
    metric.update(static[:, :32, :48], tracks_128[:, :0])  # a new size after reset is fine
    assert metric.compute()["resolution"] == [32, 48]
