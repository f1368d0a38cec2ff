"""How well the point trackers do on cases with exact ground truth.

- ``toy_items``: the toy suite's items (configs/eval/toy.yaml: test split, 17 frames, up to 8 targets, moving
  first, seed 0) rebuilt from the toy-world renderer with the shard writer's MP4 round trip, so no data folder
  is needed; ``toy_scores`` pools coverage, ObjMC and penalised ObjMC exactly as the benchmark does.
- ``warped_photo``: a real photo (scikit-image) moved by a smooth random affine warp, optionally with an
  occluding box of another photo crossing it; ``warp_scores`` measures kept points, end error and occlusion.

Used by tests/test_tracking.py (thresholds) and scripts/bench_tracker.py (results/data/tracker_accuracy.*).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from benchmark.metrics.motion import finalize_objmc, objmc_sums
from benchmark.suites import select_tracks

Tracker = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")


def toy_items(n: int = 32, seed: int = 0, frames: int = 17, max_tracks: int = 8, min_motion: float = 1.0):
    """The first ``n`` toy test-split items as the toy suite sees them: (video, tracks, visible) each."""
    from ardrag.video import decode_video_bytes, encode_mp4
    from datamodules.toy_world import clip_seed, render_clip

    out = []
    for i in range(n):
        c = render_clip(clip_seed(seed, "test", i))
        video = decode_video_bytes(encode_mp4(c.video, c.meta["fps"]))[:frames]  # as stored in the shards
        tracks, visible = c.tracks[:frames], c.visible[:frames]
        idx = select_tracks(tracks, visible, max_tracks, min_motion, seed, f"test{i:07d}")
        out.append((video, tracks[:, idx], visible[:, idx]))
    return out


def toy_scores(tracker: Tracker, items) -> dict[str, float]:
    """Pooled over items: coverage, objmc, objmc_penalised (px), off_3px (share of shown target-visible pairs
    more than 3 px off) and shown_occluded (share of target-occluded pairs the tracker still shows)."""
    sums = dict.fromkeys(("err_sum", "err_count", "pen_sum", "pen_count"), 0.0)
    off = shown = occ_shown = occ = 0
    for video, tracks, visible in items:
        q = visible[0]
        tr, vis = tracker(video, tracks[0, q])
        for k, v in objmc_sums(tracks[:, q], visible[:, q], tr, vis).items():
            sums[k] += v
        err = np.linalg.norm(tr - tracks[:, q], axis=-1)[1:]
        tv, kv = visible[1:, q], vis[1:]
        off += int((err[tv & kv] > 3.0).sum())
        shown += int((tv & kv).sum())
        occ_shown += int((~tv & kv).sum())
        occ += int((~tv).sum())
    res = finalize_objmc(sums, (64, 64))
    return {
        "coverage": res["coverage"],
        "objmc": res["objmc"],
        "objmc_penalised": res["objmc_penalised"],
        "off_3px": off / max(shown, 1),
        "shown_occluded": occ_shown / max(occ, 1),
        "occluded_pairs": occ,
    }


@dataclass
class WarpCase:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    points: np.ndarray  # float32 (N, 2) on frame 0
    truth: np.ndarray  # float32 (T, N, 2)
    covered: np.ndarray  # bool (T, N): under the occluder (at least 1 px inside its edge)
    near: np.ndarray  # bool (T, N): within the occluder's edge band (+-3 px), where either answer is fair


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    from ardrag.assets import skimage_photo

    img = cv2.cvtColor(cv2.imread(str(skimage_photo(name)), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = size
    s = max(h / img.shape[0], w / img.shape[1])
    img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[y0 : y0 + h, x0 : x0 + w])


def warped_photo(
    name: str, seed: int, occluder: bool, frames: int = 30, size: tuple[int, int] = (240, 320)
) -> WarpCase:
    """``name`` moved by a smooth random affine warp (translation up to ~15 px, rotation ~4 deg, scale ~6 %,
    shear ~3 %, each a random low-frequency curve), every frame warped from the original so the truth is exact.
    With ``occluder``, a box cut from another photo slides across from frame 6 to frame 24 and leaves again."""
    rng = np.random.default_rng(seed)
    img = _photo(name, size)
    h, w = size
    s = np.linspace(0, 1, frames)

    def curve(amp: float) -> np.ndarray:  # smooth, zero at frame 0
        a, f, ph = rng.uniform(-amp, amp, 2), rng.uniform(0.3, 1.2, 2), rng.uniform(0, 2 * np.pi, 2)
        c = a[0] * np.sin(2 * np.pi * f[0] * s + ph[0]) + a[1] * s * np.cos(np.pi * f[1] * s + ph[1])
        return c - c[0]

    tx, ty, rot, scl, shr = curve(10), curve(10), curve(3.0), curve(0.04), curve(0.02)
    mats = []
    for t in range(frames):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rot[t], 1 + scl[t])
        m[:, :2] = m[:, :2] @ np.array([[1.0, shr[t]], [0.0, 1.0]])
        m[:, 2] += [tx[t], ty[t]]
        mats.append(m)
    video = np.stack(
        [cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT) for m in mats]
    )
    gray = cv2.cvtColor(video[0], cv2.COLOR_RGB2GRAY)
    pts = cv2.goodFeaturesToTrack(gray, 300, 0.01, 6).reshape(-1, 2)
    inv0 = np.linalg.inv(np.vstack([mats[0], [0, 0, 1]]))
    src = (inv0 @ np.c_[pts, np.ones(len(pts))].T).T
    truth = np.stack([(m @ src.T).T for m in mats]).astype(np.float32)
    margin = 16  # keep points whose true path stays well inside the frame
    keep = ((truth >= margin) & (truth <= np.array([w - 1 - margin, h - 1 - margin]))).all(axis=(0, 2))
    pts, truth = pts[keep].astype(np.float32), truth[:, keep]
    covered = np.zeros(truth.shape[:2], bool)
    near = np.zeros(truth.shape[:2], bool)
    if occluder:
        other = _photo(PHOTOS[(PHOTOS.index(name) + 1) % len(PHOTOS)] if name in PHOTOS else PHOTOS[0], size)
        bh, bw = h // 2, w // 4
        box = other[h // 4 : h // 4 + bh, w // 3 : w // 3 + bw]
        y0 = int(rng.integers(0, h - bh))
        for t in range(frames):
            # x0 goes from fully left of the frame (frame 6) to fully right of it (frame 24)
            x0 = int(round(-bw + (w + bw) * (t - 6) / 18))
            if x0 <= -bw or x0 >= w:
                continue
            xa, xb = max(x0, 0), min(x0 + bw, w)
            video[t, y0 : y0 + bh, xa:xb] = box[:, xa - x0 : xb - x0]
            x, y = truth[t, :, 0], truth[t, :, 1]
            inside = (x >= x0) & (x < x0 + bw) & (y >= y0) & (y < y0 + bh)
            deep = (x >= x0 + 1) & (x < x0 + bw - 1) & (y >= y0 + 1) & (y < y0 + bh - 1)
            band = (x >= x0 - 3) & (x < x0 + bw + 3) & (y >= y0 - 3) & (y < y0 + bh + 3)
            covered[t] = deep
            near[t] = band & ~deep | (inside & ~deep)
    return WarpCase(video, pts, truth, covered, near)


def warp_scores(tracker: Tracker, case: WarpCase) -> dict[str, float]:
    """kept_end: share of never-covered points shown on the last frame; median_end_err (px) over those shown;
    off_1px: share of shown (point, frame) pairs more than 1 px off; shown_covered: share of covered pairs shown;
    reappeared: points shown again after being covered; reappeared_err_max (px) over their shown frames after."""
    tr, vis = tracker(case.frames, case.points)
    err = np.linalg.norm(tr - case.truth, axis=-1)
    never = ~(case.covered | case.near).any(axis=0)
    end = vis[-1] & never
    ever = case.covered.any(axis=0)
    last_cov = np.where(ever, case.frames.shape[0] - 1 - np.argmax(case.covered[::-1], axis=0), -1)
    after = np.arange(case.frames.shape[0])[:, None] > last_cov[None]
    back = vis & after & ever[None] & ~case.near
    return {
        "points": int(len(case.points)),
        "never_covered": int(never.sum()),
        "kept_end": float(end.sum() / max(never.sum(), 1)),
        "median_end_err": float(np.median(err[-1][end])) if end.any() else float("nan"),
        "off_1px": float((err[vis] > 1.0).mean()),
        "covered_pairs": int(case.covered.sum()),
        "shown_covered": float(vis[case.covered].mean()) if case.covered.any() else 0.0,
        "reappeared": int(back.any(axis=0).sum()),
        "reappeared_err_max": float(err[back].max()) if back.any() else 0.0,
    }
