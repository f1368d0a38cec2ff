"""Motion smoothness (flow-interp) on known cases: static, constant velocity, random frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmark.metrics.smoothness import MotionSmoothness, interpolate_midframe, motion_smoothness


def _texture(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 2.0)
    return ((tex - tex.min()) / (tex.max() - tex.min()) * 255).astype(np.uint8)


def _moving(frames: int = 16, size: int = 64, step: int = 2) -> np.ndarray:
    tex = _texture(size + step * frames + 8)
    return np.stack([tex[4 : 4 + size, step * t : step * t + size] for t in range(frames)])


def test_static_video_scores_one():
    video = np.repeat(_texture(64)[None], 9, 0)
    out = motion_smoothness(video)
    assert out["value"] == pytest.approx(1.0, abs=1e-6)
    assert out["n_interpolated"] == 4 and out["frames"] == 9 and out["resolution"] == [64, 64]


def test_constant_velocity_is_near_one_and_flow_beats_plain_blending():
    video = _moving()
    score = motion_smoothness(video)["value"]
    assert score > 0.995
    # Without motion compensation (average of the neighbours) the same clip scores clearly lower:
    blend = np.mean([np.abs((video[t - 1] / 2.0 + video[t + 1] / 2.0) - video[t]).mean() for t in (1, 3, 5)])
    assert 1 - blend / 255 < score - 0.01
    # The interpolated mid-frame itself matches the real one to within ~1 grey level.
    mid = interpolate_midframe(video[4], video[6])
    assert np.abs(mid - video[5]).mean() < 1.5


def test_random_frames_score_clearly_lower():
    rng = np.random.default_rng(0)
    video = (rng.random((12, 64, 64, 3)) * 255).astype(np.uint8)
    # mean |u - v| of independent uniform pixels is 255/3; flow can only reduce it a little
    assert motion_smoothness(video)["value"] < 0.8


def test_metric_wrapper_averages_and_rejects_bad_input():
    metric = MotionSmoothness()
    metric.update(np.repeat(_texture(32)[None], 5, 0))
    rng = np.random.default_rng(1)
    noisy = (rng.random((5, 32, 32, 3)) * 255).astype(np.uint8)
    metric.update(noisy)
    out = metric.compute()
    assert out["value"] == pytest.approx((1.0 + motion_smoothness(noisy)["value"]) / 2)
    assert out["n_videos"] == 2 and out["frames"] == 5 and out["resolution"] == [32, 32]
    with pytest.raises(ValueError, match="at least 3 frames"):
        motion_smoothness(noisy[:2])
