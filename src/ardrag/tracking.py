"""Point tracking with OpenCV: the one tracker used by data preparation, the RL reward and the benchmark.

Two independent instruments share one output convention:

- ``track_points``: pyramidal Lucas-Kanade, frame to frame, with a forward-backward consistency check.
- ``track_points_flow``: dense optical flow (OpenCV DIS) chained along the points, with the same
  forward-backward check on the dense flow fields. The benchmark measures motion with this one so that
  the RL reward (LK) and the metric are not the same instrument.

Conventions: frames uint8 (T, H, W, 3) RGB; points float (N, 2) as (x, y) pixels on frame 0 (pixel
centres at integer coordinates, as in OpenCV); tracks float32 (T, N, 2) pixels; visible bool (T, N).
A point that fails the check or leaves the frame becomes invisible and stays invisible; its track then
holds its last trusted position, so tracks stay finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["LKParams", "FlowParams", "auto_window", "track_points", "track_points_flow", "to_gray"]


@dataclass(frozen=True)
class LKParams:
    """Pyramidal Lucas-Kanade settings (defaults suit 64 px toy clips up to 480p real video)."""

    win_size: int | None = None
    """Side of the square matching window, pixels (odd). None: ~1/7 of the shorter image side, clamped to
    7..21 (9 px at 64 x 64, 21 px from ~150 px up): a window much larger than the objects mixes their motion
    with the background's."""
    max_level: int = 3
    """Pyramid levels above the base image; 3 covers ~ +-60 px per frame with a 21 px window."""
    iters: int = 30
    """Max Gauss-Newton iterations per level."""
    eps: float = 0.01
    """Stop when an update is below this many pixels."""
    fb_threshold: float = 1.0
    """Max forward-backward round-trip error, pixels, before a point is declared lost."""
    min_eig: float = 1e-4
    """OpenCV's minimum-eigenvalue threshold: flat, textureless windows are declared lost."""
    min_ncc: float | None = 0.5
    """Appearance check: a point whose patch no longer correlates (zero-mean NCC) with its frame-0 patch
    above this is lost. Catches a textured occluder sliding over a point, which the forward-backward check
    misses because the window then consistently follows the occluder. None disables it."""


@dataclass(frozen=True)
class FlowParams:
    """DIS dense optical flow settings."""

    preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    """OpenCV DIS preset (ULTRAFAST=0, FAST=1, MEDIUM=2)."""
    fb_threshold: float = 1.0
    """Max forward-backward round-trip error, pixels, before a point is declared lost."""
    finest_scale: int | None = None
    """Pyramid level DIS stops at (0: full resolution). None: 0 for images up to 256 px on the shorter side
    (the preset's coarser default blurs the motion of small objects), else the preset's."""
    min_ncc: float | None = 0.5
    """Appearance check against the frame-0 patch, as in ``LKParams.min_ncc``."""
    patch: int | None = None
    """Side of the appearance-check patch, pixels (None: as LK's automatic window)."""


def auto_window(height: int, width: int) -> int:
    """Default LK window / appearance patch side for an image size: odd, ~min(H, W) / 7, in 7..21."""
    win = int(np.clip(round(min(height, width) / 7), 7, 21))
    return win if win % 2 else win + 1


def _patches(gray: np.ndarray, pts: np.ndarray, win: int) -> np.ndarray:
    """Bilinear (win x win) patches of a uint8 (H, W) image centred on (N, 2) sub-pixel points -> (N, win*win)."""
    off = np.arange(win, dtype=np.float32) - (win - 1) / 2
    ox, oy = np.meshgrid(off, off)
    map_x = (pts[:, :1] + ox.reshape(1, -1)).astype(np.float32)
    map_y = (pts[:, 1:2] + oy.reshape(1, -1)).astype(np.float32)
    out = cv2.remap(gray.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(pts), -1)


def _ncc_ok(template: np.ndarray, patch: np.ndarray, threshold: float) -> np.ndarray:
    """bool (N,): zero-mean NCC of each row pair above threshold; flat templates (no pattern) pass."""
    a = template - template.mean(axis=1, keepdims=True)
    b = patch - patch.mean(axis=1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    flat = na < 1.0 * np.sqrt(a.shape[1])  # template std under 1 grey level: NCC is noise
    ncc = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-6)
    return flat | (ncc >= threshold)


def to_gray(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB -> uint8 (T, H, W) luma."""
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def _check_inputs(frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {frames.shape}")
    if frames.shape[0] < 1:
        raise ValueError("frames must hold at least one frame")
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[-1] != 2:
        raise ValueError(f"points must be float (N, 2) as (x, y), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points must be finite (found NaN or inf)")
    return np.ascontiguousarray(frames), points


def _inside(pts: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, 2) -> bool (N,): inside the image, pixel centres at integers, so [-0.5, W - 0.5)."""
    x, y = pts[:, 0], pts[:, 1]
    return (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5) & np.isfinite(pts).all(axis=1)


def _init(points: np.ndarray, t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = points.shape[0]
    tracks = np.zeros((t, n, 2), dtype=np.float32)
    visible = np.zeros((t, n), dtype=bool)
    tracks[0] = points
    visible[0] = _inside(points, h, w)
    return tracks, visible, visible[0].copy()


def track_points(
    frames: np.ndarray, points: np.ndarray, params: LKParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Track points through a clip with pyramidal Lucas-Kanade and a forward-backward check.

    Args:
        frames: uint8 (T, H, W, 3) RGB.
        points: float (N, 2) (x, y) pixels on frame 0.
        params: LK settings (``LKParams()`` by default).

    Returns:
        tracks float32 (T, N, 2) pixels and visible bool (T, N). Points outside frame 0 are invisible from
        the start; a lost point keeps its last trusted position and stays invisible.
    """
    p = params or LKParams()
    frames, points = _check_inputs(frames, points)
    t, h, w = frames.shape[:3]
    tracks, visible, alive = _init(points, t, h, w)
    if points.shape[0] == 0:
        return tracks, visible
    gray = to_gray(frames)
    win = p.win_size or auto_window(h, w)
    templates = _patches(gray[0], points, win) if p.min_ncc is not None else None
    lk = dict(
        winSize=(win, win),
        maxLevel=p.max_level,
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, p.iters, p.eps),
        minEigThreshold=p.min_eig,
    )
    cur = points.copy()
    for i in range(1, t):
        idx = np.flatnonzero(alive)
        if idx.size:
            p0 = cur[idx].reshape(-1, 1, 2)
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray[i - 1], gray[i], p0, None, **lk)
            # Backward pass seeded with the original points: agreement within fb_threshold means the match
            # is not a drift onto a look-alike patch or an occluder.
            p0b, st0, _ = cv2.calcOpticalFlowPyrLK(
                gray[i], gray[i - 1], p1, p0.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk
            )
            p1, p0b = p1.reshape(-1, 2), p0b.reshape(-1, 2)
            fb = np.linalg.norm(p0b - p0.reshape(-1, 2), axis=1)
            ok = (st1.ravel() == 1) & (st0.ravel() == 1) & (fb <= p.fb_threshold) & _inside(p1, h, w)
            if templates is not None:
                ok &= _ncc_ok(templates[idx], _patches(gray[i], p1, win), p.min_ncc)
            cur[idx[ok]] = p1[ok]
            alive[idx[~ok]] = False
        tracks[i] = cur
        visible[i] = alive
    return tracks, visible


def _sample_flow(flow: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear sample of an (H, W, 2) flow field at (N, 2) sub-pixel points -> (N, 2)."""
    map_x = pts[:, 0].reshape(1, -1).astype(np.float32)
    map_y = pts[:, 1].reshape(1, -1).astype(np.float32)
    out = cv2.remap(flow, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 2)


def track_points_flow(
    frames: np.ndarray, points: np.ndarray, params: FlowParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Track points by chaining dense DIS optical flow; same shapes and semantics as ``track_points``.

    Forward flow t -> t+1 moves each point; backward flow t+1 -> t, sampled at the moved point, must bring
    it back within ``fb_threshold`` pixels, else the point is lost (occlusion or a flow failure).

    Args:
        frames: uint8 (T, H, W, 3) RGB.
        points: float (N, 2) (x, y) pixels on frame 0.
        params: DIS settings (``FlowParams()`` by default).

    Returns:
        tracks float32 (T, N, 2) pixels and visible bool (T, N).
    """
    p = params or FlowParams()
    frames, points = _check_inputs(frames, points)
    t, h, w = frames.shape[:3]
    tracks, visible, alive = _init(points, t, h, w)
    if points.shape[0] == 0:
        return tracks, visible
    gray = to_gray(frames)
    dis = cv2.DISOpticalFlow_create(p.preset)
    finest = p.finest_scale if p.finest_scale is not None else (0 if min(h, w) <= 256 else None)
    if finest is not None:
        dis.setFinestScale(finest)
    win = p.patch or auto_window(h, w)
    templates = _patches(gray[0], points, win) if p.min_ncc is not None else None
    cur = points.copy()
    for i in range(1, t):
        idx = np.flatnonzero(alive)
        if idx.size:
            fwd = dis.calc(gray[i - 1], gray[i], None)
            bwd = dis.calc(gray[i], gray[i - 1], None)
            p0 = cur[idx]
            p1 = p0 + _sample_flow(fwd, p0)
            back = p1 + _sample_flow(bwd, p1)
            fb = np.linalg.norm(back - p0, axis=1)
            ok = (fb <= p.fb_threshold) & _inside(p1, h, w)
            if templates is not None:
                ok &= _ncc_ok(templates[idx], _patches(gray[i], p1, win), p.min_ncc)
            cur[idx[ok]] = p1[ok]
            alive[idx[~ok]] = False
        tracks[i] = cur
        visible[i] = alive
    return tracks, visible


def hold_last(tracks: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Forward-fill (T, N, 2) tracks where ``visible`` is False with the last visible position (a lost point
    counts as no longer following; used by the RL reward and the benchmark's penalised ObjMC)."""
    held = tracks.copy()
    for t in range(1, tracks.shape[0]):
        lost = ~visible[t]
        held[t, lost] = held[t - 1, lost]
    return held
