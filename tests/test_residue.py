"""Origin residue: calibrated on the toy suite (ground truth near 0, a static video 1) and on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.metrics.residue import ResidueParams, patch_difference, residue_rate, residue_sums


def _scene(leave_copy: bool) -> tuple[np.ndarray, np.ndarray]:
    """A textured square dragged 30 px right over a smooth background, with or without a copy left at its start."""
    rng = np.random.default_rng(0)
    t, h, w = 9, 64, 64
    yy, xx = np.mgrid[:h, :w]
    bg = np.stack([100 + 20 * np.sin(xx / 9), 110 + 15 * np.cos(yy / 7), 120 + 0 * xx], -1)
    sprite = rng.integers(0, 255, (9, 9, 3))
    video = np.repeat(bg[None], t, 0).astype(np.float64)
    tracks = np.zeros((t, 1, 2))
    for i in range(t):
        x = 14 + int(round(30 * i / (t - 1)))
        video[i, 26:35, x - 4 : x + 5] = sprite
        if leave_copy:
            video[i, 26:35, 10:19] = sprite
        tracks[i, 0] = (x, 30)
    return video.astype(np.uint8), tracks


def test_a_copy_left_at_the_start_is_a_residue_and_a_clean_drag_is_not():
    clean, tracks = _scene(False)
    copy, _ = _scene(True)
    static = np.repeat(clean[:1], len(clean), 0)
    r_clean = residue_rate(residue_sums(clean, tracks, None))
    r_copy = residue_rate(residue_sums(copy, tracks, None))
    r_static = residue_rate(residue_sums(static, tracks, None))
    assert residue_sums(clean, tracks, None)["pair_count"] >= 3  # frames past 16 px of motion
    assert r_clean == 0.0 and r_copy == 1.0 and r_static == 1.0
    # the tracks' frame may differ from the video's: coordinates scale with it
    half = residue_sums(clean, tracks / 2, None, track_size=(32, 32))
    assert half == residue_sums(clean, tracks, None)


def test_patch_difference_separates_colours_that_ssim_calls_alike():
    a = np.random.default_rng(1).integers(0, 255, (7, 7, 3))
    assert patch_difference(a, a) == 0.0
    red, muted = np.full((7, 7, 3), (220, 40, 40)), np.full((7, 7, 3), (110, 120, 100))
    assert patch_difference(red, muted) == pytest.approx((110 + 80 + 60) / 3)
    assert patch_difference(red, muted) > ResidueParams().threshold


@pytest.fixture(scope="module")
def toy_items(tmp_path_factory):
    from benchmark.suites import Suite
    from datamodules.toy_world import write_toy_world

    root = tmp_path_factory.mktemp("residue")
    write_toy_world(
        root, num_train=1, num_val=1, num_test=24, samples_per_shard=8, min_shards=1, progress=False
    )
    suite = {"name": "t", "path": str(root / "test"), "max_items": 24, "max_tracks": 8, "num_frames": 17}
    return Suite({**suite, "min_motion": 1.0, "seed": 0}).items()


def test_calibration_on_toy_clips_ground_truth_near_zero_static_near_one(toy_items):
    from benchmark.methods import build_method

    rates = {}
    for spec in ("groundtruth", "static"):
        m = build_method(spec)
        tot = {"residue_count": 0.0, "pair_count": 0.0}
        for it in toy_items:
            s = residue_sums(m.generate(it, 0), it["tracks"], it["visible"], ResidueParams())
            tot = {k: tot[k] + s[k] for k in tot}
        assert tot["pair_count"] >= 100
        rates[spec] = residue_rate(tot)
    assert rates["groundtruth"] <= 0.05
    assert rates["static"] >= 0.95
