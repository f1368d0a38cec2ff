"""Origin residue: does a generated video still show a dragged point's frame-0 patch at its start after the point
has moved well away? The failure it measures: a model that draws the dragged object at its target but leaves a copy
behind at its start.

Per target point k and frame t >= 1 with the target visible at frames 0 and t and displaced from its start by more
than ``min_move`` (a fraction of the image's shorter side), compare the generated frame t's patch at the start
p_k(0) with the generated frame 0's patch there: a pair is a *residue* when their mean absolute difference over
the (2r + 1)^2 RGB patch is at most ``threshold`` 8-bit levels (a colour measure: SSIM's luminance term calls two
flat patches of clearly different colours, e.g. red (220, 40, 40) and a muted (110, 120, 100), 0.70 alike).
The rate is residues / pairs, pooled over a suite (``residue_sums`` gives the per-video sums). A static video
scores 1 by construction; the toy suite's ground truth scores near 0 (tests/test_residue.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ResidueParams:
    """What counts as moved away and as the same patch."""

    min_move: float = 0.25
    """A pair counts once the target is this fraction of min(H, W) from its start (16 px at 64 x 64): farther than a
    toy sprite's size, so the sprite itself no longer covers its start."""
    radius: float = 0.05
    """Patch half-size as a fraction of min(H, W), at least 2 px (3 px: a 7 x 7 patch at 64 x 64)."""
    threshold: float = 20.0
    """Mean absolute difference (8-bit levels, over the patch's pixels and channels) at or below which the start
    still shows the frame-0 patch."""


def patch_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two equal (h, w, 3) uint8 patches, in 8-bit levels."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def residue_sums(
    video: np.ndarray,
    tracks: np.ndarray,
    visible: np.ndarray | None,
    params: ResidueParams = ResidueParams(),
    track_size: tuple[int, int] | None = None,
) -> dict[str, float]:
    """``{"residue_count", "pair_count"}`` of one video.

    video: uint8 (T, H, W, 3); tracks: float (T, N, 2) target (x, y) in pixels of ``track_size`` (H, W) (default: the
    video's size); visible: bool (T, N) or None. Pairs whose start patch leaves the frame are skipped.
    """
    video = np.asarray(video)
    t_len, h, w = video.shape[:3]
    tracks = np.asarray(tracks, np.float64)[:t_len]
    n = tracks.shape[1]
    vis = np.ones((len(tracks), n), bool) if visible is None else np.asarray(visible, bool)[: len(tracks)]
    if track_size is not None and tuple(track_size) != (h, w):
        tracks = tracks * np.array([w / track_size[1], h / track_size[0]])
    side = min(h, w)
    r = max(2, int(round(params.radius * side)))
    move = np.linalg.norm(tracks - tracks[:1], axis=-1)  # (T, N)
    count = pairs = 0
    for k in range(n):
        if not vis[0, k]:
            continue
        x, y = (int(round(v)) for v in tracks[0, k])
        if x - r < 0 or y - r < 0 or x + r >= w or y + r >= h:
            continue
        ref = video[0, y - r : y + r + 1, x - r : x + r + 1]
        for t in range(1, len(tracks)):
            if not vis[t, k] or move[t, k] <= params.min_move * side:
                continue
            pairs += 1
            count += patch_difference(video[t, y - r : y + r + 1, x - r : x + r + 1], ref) <= params.threshold
    return {"residue_count": float(count), "pair_count": float(pairs)}


def residue_rate(sums: dict[str, float]) -> float | None:
    """Pooled rate from summed ``residue_sums`` (None when no pair qualified)."""
    return sums["residue_count"] / sums["pair_count"] if sums["pair_count"] else None
