"""What both trackers share: input checks, bilinear sampling, gray patches and their NCC, ``hold_last``.

Conventions: frames uint8 (T, H, W, 3) RGB; points float (N, 2) as (x, y) pixels on frame 0 (pixel
centres at integer coordinates, as in OpenCV); tracks float32 (T, N, 2) pixels; visible bool (T, N).
While a point is invisible its track holds its last visible position, so tracks stay finite. A point whose
estimate leaves the frame is invisible from then on.
"""

from __future__ import annotations

import cv2
import numpy as np


def _sample(img: np.ndarray, pts: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Bilinear samples of float32 (H, W, C) ``img`` at points (N, 2) + offsets (P, 2) -> (N, P, C)."""
    map_x = pts[:, :1] + off[None, :, 0]
    map_y = pts[:, 1:2] + off[None, :, 1]
    # float32 already in the tracker: no second copy of the maps
    out = _remap(img, map_x.astype(np.float32, copy=False), map_y.astype(np.float32, copy=False))
    return out.reshape(len(pts), len(off), -1)


_REMAP_ROWS = 32000
"""OpenCV's remap refuses maps of 32767 rows or more; longer maps (one row per point or window) go in chunks."""


def _remap(img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear remap with replicated borders, in chunks of `_REMAP_ROWS` map rows (a point per row: remap reads
    each output pixel from its own map entry, so chunking changes nothing)."""
    return np.concatenate(
        [
            cv2.remap(
                img,
                map_x[r : r + _REMAP_ROWS],
                map_y[r : r + _REMAP_ROWS],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
            for r in range(0, max(len(map_x), 1), _REMAP_ROWS)
        ]
    )


def _search_area(img: np.ndarray, centres: np.ndarray, grid: np.ndarray, off: np.ndarray):
    """Samples each centre's whole search area once; returns ``cut(pi, gi)``, which gives
    ``_sample(img, centres[pi] + cand[gi], template offsets)`` bit for bit, for candidates ``cand`` on the
    square grid ``grid`` (1-D, step 2) around each centre.

    The search scores up to 121 overlapping template windows per point, so sampling each window anew (as
    ``_sample``) repeats most samples dozens of times. The sample positions are float32 sums
    ``(centre + g) + o``; they lie on one integer lattice per centre, except that ``centre + g`` rounds to a
    coarser float32 step where it crosses a power of two, so each run of grid columns (rows) with the same
    rounding gets its own lattice. ``off`` (1-D) are the template's offsets along an axis. Returns None (the
    caller samples per window) unless the lattices reproduce every sample position exactly.
    """
    if len(grid) < 2 or not (np.all(grid == np.round(grid)) and np.all(off == np.round(off))):
        return None
    step, ostep = grid[1] - grid[0], off[1] - off[0] if len(off) > 1 else 1.0
    lat = np.arange(grid[0] + off[0], grid[-1] + off[-1] + 1, dtype=np.float32)  # lattice offsets, 1 px
    pos = (grid[:, None] - grid[0] + off[None] - off[0]).astype(np.int64)  # (Ng, No) lattice index of g + o
    n = len(centres)
    coords, variant = [], []
    for c in centres.T:  # x, then y
        cg = c[:, None] + grid[None]  # (n, Ng) as the caller's candidates
        base = cg - grid[None]  # the centre as rounded with each g: exact float32 differences
        v = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(base[:, 1:] != base[:, :-1], 1)], 1)
        bases = np.repeat(base[:, :1], v.max() + 1, 1)
        bases[np.arange(n)[:, None], v] = base
        lc = bases[..., None] + lat  # (n, V, L) lattice positions
        want = cg[..., None] + off  # (n, Ng, No) the caller's sample positions
        if not np.array_equal(lc[np.arange(n)[:, None, None], v[..., None], pos[None]], want):
            return None
        coords.append(lc)
        variant.append(v)
    (lx, ly), (vx, vy) = coords, variant
    nl = len(lat)
    shape = (n, ly.shape[1], nl, lx.shape[1], nl)
    map_x = np.broadcast_to(lx[:, None, None], shape).reshape(-1, lx.shape[1] * nl)
    map_y = np.broadcast_to(ly[:, :, :, None, None], shape).reshape(-1, lx.shape[1] * nl)
    big = _remap(img, map_x, map_y).reshape(*shape, -1)  # (n, Vy, L, Vx, L, C)
    sn, svy, sy, svx, sx, sc = big.strides
    ng, no, k, s = len(grid), len(off), int(step), int(ostep)
    win = np.lib.stride_tricks.as_strided(
        big,
        (n, shape[1], ng, shape[3], ng, no, no, big.shape[-1]),
        (sn, svy, k * sy, svx, k * sx, s * sy, s * sx, sc),
        writeable=False,
    )

    def cut(pi: np.ndarray, gi: np.ndarray) -> np.ndarray:
        gy, gx = gi // ng, gi % ng
        return win[pi, vy[pi, gy], gy, vx[pi, gx], gx].reshape(len(pi), no * no, -1)

    return cut


def _patches(gray: np.ndarray, pts: np.ndarray, win: int) -> np.ndarray:
    """Bilinear (win x win) patches of a uint8 (H, W) image centred on (N, 2) sub-pixel points -> (N, win*win)."""
    off = np.arange(win, dtype=np.float32) - (win - 1) / 2
    ox, oy = np.meshgrid(off, off)
    map_x = (pts[:, :1] + ox.reshape(1, -1)).astype(np.float32)
    map_y = (pts[:, 1:2] + oy.reshape(1, -1)).astype(np.float32)
    return _remap(gray.astype(np.float32), map_x, map_y).reshape(len(pts), -1)


def _zncc(template: np.ndarray, patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean NCC of gray patches along the last axis (shapes broadcast, e.g. (N, 1, K) templates against (N, M,
    K) candidates), and whether each template is flat (std under 1 grey level: its NCC is noise)."""
    a = template - template.mean(axis=-1, keepdims=True)
    b = patch - patch.mean(axis=-1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(axis=-1) / np.maximum(na * nb, 1e-6), na < 1.0 * np.sqrt(a.shape[-1])


def _ncc_ok(template: np.ndarray, patch: np.ndarray, threshold: float) -> np.ndarray:
    """bool (N,): zero-mean NCC of each row pair above threshold; flat templates (no pattern) pass."""
    ncc, flat = _zncc(template, patch)
    return flat | (ncc >= threshold)


def _init(points: np.ndarray, t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = points.shape[0]
    tracks = np.zeros((t, n, 2), dtype=np.float32)
    visible = np.zeros((t, n), dtype=bool)
    tracks[0] = points
    visible[0] = _inside(points, h, w)
    return tracks, visible, visible[0].copy()


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


def _sample_flow(flow: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear sample of an (H, W, 2) flow field at (N, 2) sub-pixel points -> (N, 2)."""
    map_x = pts[:, 0].reshape(1, -1).astype(np.float32)
    map_y = pts[:, 1].reshape(1, -1).astype(np.float32)
    out = cv2.remap(flow, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 2)


def hold_last(tracks: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Forward-fill (T, N, 2) tracks where ``visible`` is False with the last visible position (a lost point
    counts as no longer following; used by the RL reward and the benchmark's penalised ObjMC)."""
    held = tracks.copy()
    for t in range(1, tracks.shape[0]):
        lost = ~visible[t]
        held[t, lost] = held[t - 1, lost]
    return held
