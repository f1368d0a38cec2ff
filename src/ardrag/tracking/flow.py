"""``track_points_flow``: dense optical flow chained along the points, with checks, drift control and re-acquisition.

Why each check, measured on the toy test split (lost visible pairs; "no occlusion near" = dropped while visible
with no ground-truth occlusion within 2 frames):
- with the frame-0 gray patch check alone, DIS flow loses 721 pairs (583 dropped while visible, 108 after an
  occlusion, 30 just before one), all decided by the patch check, not the forward-backward check
  (``fb_threshold`` 100 px changes nothing); also comparing with a slowly updated patch (``template_update``):
  406; 268 of those with no occlusion near, their DIS position a median 0.7 px off the truth on the last frame
  shown (drift, which the check then catches).
- Farneback flow drifts less on the toy's small sprites (shown points 0.40 px off on average, DIS 0.72 px) and
  loses 341 pairs (199 with no occlusion near, 108 after an occlusion); 349 (205, 110) with the colour check.
- drift control (``FlowParams.snap_radius``): 101 pairs with no occlusion near, 108 after an occlusion.
- re-acquisition (``FlowParams.reacquire``: a gray patch search around the course, 3 finds in a row linked by the
  flow): 89 with no occlusion near, 95 after an occlusion; on the tests' warped real clip with a sliding occluder
  and on the warped photos, re-shown points are within 1.4 px. Without drift control the same re-acquisition
  (by RGB template matching) puts points back that then drift off again: 33 of 69 re-shown pairs over 1 px off,
  up to 7.7 px, on that clip, and points hidden for 10 frames or more found up to 10 px off on the photos.
"""

from __future__ import annotations

import cv2
import numpy as np

from ardrag.tracking.appearance import _Colour, _snap
from ardrag.tracking.core import _check_inputs, _init, _inside, _ncc_ok, _patches, _sample_flow, to_gray
from ardrag.tracking.params import FlowParams, _small, auto_window
from ardrag.tracking.reacquire import _FlowReacquire


def _flow_fn(p: FlowParams, h: int, w: int):
    """(prev, next) uint8 gray -> (H, W, 2) float32 flow, as ``p.method`` says."""
    method = p.method or ("farneback" if _small(h, w) else "dis")
    if method == "farneback":
        win = p.win_size or auto_window(h, w)
        return lambda a, b: cv2.calcOpticalFlowFarneback(
            a, b, None, 0.5, p.levels, win, p.iters, p.poly_n, p.poly_sigma, 0
        )
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(p.preset)
        finest = p.finest_scale if p.finest_scale is not None else (0 if _small(h, w) else None)
        if finest is not None:
            dis.setFinestScale(finest)
        return lambda a, b: dis.calc(a, b, None)
    raise ValueError(f"FlowParams.method must be 'farneback' or 'dis', got {p.method!r}")


def track_points_flow(
    frames: np.ndarray, points: np.ndarray, params: FlowParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Track points by chaining dense optical flow (``FlowParams.method``); shapes and semantics as ``track_points``.

    Forward flow t -> t+1 moves each point; backward flow t+1 -> t, sampled at the moved point, must bring it back
    within ``fb_threshold`` pixels, its gray patch must still match (``min_ncc``) and its own colour must not have
    changed (``colour_tau``), else the point is lost (occlusion or a flow failure). A shown point's position is
    corrected within ``snap_radius`` to its best frame-0 patch match (drift control); a lost point is shown again
    once found near its course on ``reacquire`` frames in a row.

    Args:
        frames: uint8 (T, H, W, 3) RGB.
        points: float (N, 2) (x, y) pixels on frame 0.
        params: flow settings (``FlowParams()`` by default).

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
    flow = _flow_fn(p, h, w)
    win = p.patch or auto_window(h, w)
    snap = p.snap_radius is not None and p.snap_radius > 0
    templates = _patches(gray[0], points, win) if p.min_ncc is not None or snap else None
    recent = templates.copy() if p.min_ncc is not None and p.template_update else None
    colour = _Colour(frames, points, p.colour_tau) if p.colour_tau is not None else None
    cur = points.copy()
    re = _FlowReacquire(points, p) if p.reacquire and templates is not None else None
    for i in range(1, t):
        idx = np.flatnonzero(alive)
        if idx.size or (re is not None and re.searching(i).any()):
            fwd = flow(gray[i - 1], gray[i])
            bwd = flow(gray[i], gray[i - 1])
            ok = np.zeros(0, bool)
            if idx.size:
                p0 = cur[idx]
                p1 = p0 + _sample_flow(fwd, p0)
                back = p1 + _sample_flow(bwd, p1)
                fb = np.linalg.norm(back - p0, axis=1)
                ok = (fb <= p.fb_threshold) & _inside(p1, h, w)
                moved = p1.copy()
                if snap and ok.any():
                    moved[ok] = _snap(gray[i], templates[idx[ok]], p1[ok], win, p)
                    ok &= _inside(moved, h, w)
                if p.min_ncc is not None:
                    patch = _patches(gray[i], p1, win)
                    same = _ncc_ok(templates[idx], patch, p.min_ncc)
                    if recent is not None:
                        # Appearance that changed slowly (background sliding behind an edge point, shading) is
                        # compared with the recently seen patch; an occluder arriving changes it at once.
                        same |= _ncc_ok(recent[idx], patch, p.recent_ncc)
                    ok &= same
                if colour is not None:
                    ok &= colour.check(i, idx, p1, ok)
                if recent is not None:
                    upd = idx[ok]
                    recent[upd] = (1 - p.template_update) * recent[upd] + p.template_update * patch[ok]
                cur[idx[ok]] = moved[ok]
                alive[idx[~ok]] = False
            if re is not None:
                back_on = re.step(i, gray[i], fwd, templates, tracks, alive, idx[~ok], win, h, w, colour)
                if back_on.size:
                    cur[back_on] = re.pos[back_on]
                    alive[back_on] = True
                    if recent is not None:
                        recent[back_on] = templates[back_on]
                    if colour is not None:
                        colour.restart(back_on)
        tracks[i] = cur
        visible[i] = alive
    return tracks, visible
