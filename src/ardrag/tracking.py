"""Point tracking with OpenCV: the one tracker used by data preparation, the RL reward and the benchmark.

Two independent instruments share one output convention:

- ``track_points``: pyramidal Lucas-Kanade (on RGB for small frames, luma for large) predicts each point frame
  to frame; the prediction is then refined by aligning the point's frame-0 RGB template to the current frame
  (so errors do not accumulate). Where the point's constant-velocity guess is over 1 px away, it is refined too
  and the better match wins (LK's coarse levels can be dragged off by a fast object nearby, such as an occluder
  passing).
- ``track_points_flow``: dense optical flow (OpenCV Farneback up to 256 px on the shorter side, DIS above; see
  ``FlowParams.method``) chained along the points, with a forward-backward check on the dense flow fields, a
  gray-patch NCC check against frame 0 or a slowly updated patch, and a check of the point's own colour; a point
  that fails is lost until it is found again by its frame-0 gray patch near its course on 3 frames in a row
  (``FlowParams.reacquire``). Positions come from the flow, each corrected within 1 px to the best gray frame-0 patch
  match on a half-pixel grid (``FlowParams.snap_radius``: a discrete search on unweighted gray patches, not LK's
  gradient alignment of colour-weighted templates), so the benchmark's flow column is not the RL reward's
  instrument. (Given the LK template check instead, its drifting positions were dropped more often: coverage 0.68
  vs 0.78 on the toy suite.)

Visibility (LK): a point is visible when its patch at the tracked position still matches its frame-0
template (weighted zero-mean NCC >= ``min_ncc``). The template is weighted towards pixels of the point's own
colour (chromaticity) near it, so a point next to an object's edge is judged on its object, not on the
background sliding behind it; an occluder of another colour fails the match. Where another object covers only
part of the template (the pixels at the point itself uncovered), the match is judged on the rest
(``partial_tau``). A step more than ``jump_px`` off the point's constant-velocity course needs the stricter
``reacquire_ncc`` (a point dragged along by an occluder, or snapped onto a look-alike, is rarely that close a
match). A point that fails is hidden and coasts along its course; it is shown again (re-acquired) once it is
found unambiguously in a window around that course and then matches strictly on the course it sets for
``reacquire`` frames in a row (``reacquire`` = 0: a lost point stays lost). Toy test split, loss categories
before this (219 lost pairs): 96 after a ground-truth occlusion had ended (never re-acquired), 35 in the 1-2
frames before an occlusion, 88 dropped while visible, nearly all with another sprite over part of the
template (at the true place the whole-template NCC was under 0.6 in 31 of 32 drop events); after (measured with
reacquire = 2; the default 3 re-acquires a little less): 63, 26, 74; with ``reacquire_ncc`` 0.7 (issue 8's fifth
round, reacquire 3): 45, 26, 70.
Flow: its losses (721 pairs: 583 dropped while visible, 108 after an occlusion, 30 just before one) were all
decided by the frame-0 patch check, not the forward-backward check (``fb_threshold`` 100 px changed nothing);
the patch is now also compared with a slowly updated one (406 lost pairs after). Of those, 268 were dropped with
no occlusion near, their DIS position a median 0.7 px off the truth on the last frame shown (drift, which the
check then caught). Farneback flow drifts less on the toy's small sprites (its shown points 0.40 px off on
average, DIS's 0.72 px) and loses fewer: 341 pairs (199 with no occlusion near, 108 after an occlusion, which
flow never recovers); 349 (205, 110) with the colour check of the fifth round. That round also tried showing a
lost flow point again after 3 finds in a row by RGB template matching around its course, each where the flow
carried the one before: toy suite penalised ObjMC 1.43 -> 0.95-1.28 px, but on the tests' warped real clip with a
sliding occluder 33 of 69 re-shown pairs were over 1 px off, up to 7.7 px (a find put a drifted point back in
place, then the flow drifted again while the slowly updated patch check let it), and on the warped photos points
hidden for 10 frames or more were found up to 10 px off; so flow points stayed lost. The sixth round added drift
control (``FlowParams.snap_radius``): 101 pairs then dropped with no occlusion near (205 before), 108 after an
occlusion; with shown points no longer drifting, re-acquisition (``FlowParams.reacquire``: a gray patch search
around the course, 3 finds in a row linked by the flow) brings points back within 1.4 px on the same warped clip
and photos; on the toy suite 89 lost pairs with no occlusion near and 95 after an occlusion remain.
Measured cause of the losses this replaces (toy test split): LK's window on a point inside a plain or striped
sprite only sees a straight edge or 1-D stripes (the aperture problem), so frame-to-frame LK slid along it and
the old frame-0 NCC check then dropped the drifted point; frame-0 anchoring removes the drift.

Conventions: frames uint8 (T, H, W, 3) RGB; points float (N, 2) as (x, y) pixels on frame 0 (pixel
centres at integer coordinates, as in OpenCV); tracks float32 (T, N, 2) pixels; visible bool (T, N).
While a point is invisible its track holds its last visible position, so tracks stay finite. A point whose
estimate leaves the frame is invisible from then on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "LKParams",
    "FlowParams",
    "auto_window",
    "auto_template",
    "hold_last",
    "track_points",
    "track_points_flow",
    "to_gray",
]


@dataclass(frozen=True)
class LKParams:
    """Lucas-Kanade tracker settings (defaults suit 64 px toy clips up to 480p real video)."""

    win_size: int | None = None
    """Side of the square LK prediction window, pixels (odd). None: ~1/7 of the shorter image side, clamped
    to 7..21 (9 px at 64 x 64, 21 px from ~150 px up)."""
    max_level: int = 3
    """Pyramid levels above the base image; 3 covers ~ +-60 px per frame with a 21 px window."""
    iters: int = 30
    """Max Gauss-Newton iterations per level."""
    eps: float = 0.01
    """Stop when an update is below this many pixels."""
    min_eig: float = 1e-4
    """OpenCV's minimum-eigenvalue threshold: flat, textureless windows are declared lost."""
    fb_threshold: float | None = None
    """Optional forward-backward round-trip limit of the LK prediction, pixels (None: off; the frame-0
    template match is the check, and a backward pass doubles the cost)."""
    template: int | None = None
    """Side of the frame-0 template used for refinement and the visibility check, pixels. None:
    ``auto_template`` (21 px at 64 x 64, 45 px from ~150 px up)."""
    refine_iters: int = 5
    """Max template-alignment iterations per frame (the LK prediction is usually within a pixel)."""
    min_ncc: float = 0.6
    """Visible when the weighted zero-mean NCC of the template and the patch at the point is at least this
    (0.5 keeps ~1 % more toy points but shows 2-6 % of the covered real-photo points, 0.6 1-2 %)."""
    lk_rgb: bool | None = None
    """LK prediction on RGB (True) or luma (False). None: RGB up to 256 px on the shorter side (a saturated toy
    sprite on a background of similar brightness vanishes in luma), luma above: at 480 x 832, RGB LK made
    ``track_points`` 2.3-2.7x slower than the old luma tracker, and on the 240 x 320 warped photos luma gives the
    same kept points and errors (the template refinement and check are on RGB either way)."""
    second_start: bool = True
    """Also refine from the point's constant-velocity guess where it is over 1 px from the refined LK prediction,
    and keep the better template match (on warped real photos with a fast occluder, LK's coarse levels dragged
    never-covered points up to 60 px away and 0.81-0.93 of them were kept; see ``track_points``)."""
    jump_px: float | None = 3.0
    """A shown point's step more than this many pixels off its constant-velocity course (set by its last two
    shown frames; a point shown on one frame only needs the stricter ``reacquire_ncc`` match) hides it, however
    well it matches (it is then found again like any hidden point, see ``reacquire``); a hidden point's streak must
    stay within this of the course its first find set (None: off). Until issue 8's third round such a step
    only needed the stricter ``reacquire_ncc`` match: corners on a weakly textured wall under a blinking box
    then stayed shown 21-26 px off (tests/test_tracking.py)."""
    reacquire: int = 3
    """A hidden point is shown again after this many strict, on-course matches in a row (0: a lost point stays
    lost), and then also on the earlier frames of that streak, at their finds (the same evidence vouches for
    them). The first must be an unambiguous find (``reacquire_margin``) in a window around the point's
    coasting course; it sets the course the following ones must keep to within ``jump_px``. Toy test split
    (scripts/bench_tracker.py): coverage 0.933 -> 0.944, penalised ObjMC 0.92 -> 0.79 px with re-acquisition,
    0.948 / 0.73 px once the streak's frames are shown too; no shown point over 3 px off; warped real photos
    with the box: 92-134 points come back, at worst 0.25-1.34 px off. Showing after 2 frames reached 0.950 /
    0.69 px on the toy split but let points come back up to 4.5 px off on the photos: 3 is the default because
    a point reported visible must be right."""
    reacquire_ncc: float = 0.7
    """The stricter match a hidden point needs on each of those frames (a look-alike elsewhere rarely passes)."""
    search_px: float = 10.0
    """With ``reacquire``: a hidden point is looked for up to this far from its course (2 px more per frame
    hidden)."""
    reacquire_margin: float = 0.1
    """With ``reacquire``: the best place found for a hidden point must match at least this much better (NCC)
    than any place 4 px or more from it."""
    max_coast: int = 16
    """With ``reacquire``: a hidden point is looked for along its constant-velocity course for at most this
    many frames (toy clips: occlusions last up to ~10 frames; 8 re-acquired fewer points)."""
    chroma_sigma: float = 0.06
    """Width of the colour weighting, in chromaticity units (r/(r+g+b+30), ...)."""
    partial_tau: float | None = 60.0
    """Partial occlusion of the template: where the whole-template match fails, template pixels more than this
    many grey levels off (zero-mean colour) are left out and the rest must match (None: off)."""
    partial_support: float = 0.5
    """...the pixels left must carry at least this share of the template weight, and"""
    partial_ncc: float = 0.8
    """...match at least this closely (NCC over them); the pixels at the point itself must all be kept."""


@dataclass(frozen=True)
class FlowParams:
    """Dense optical flow settings (OpenCV Farneback for small frames, DIS for large ones)."""

    method: str | None = None
    """Dense flow: "farneback" (polynomial expansion, ``cv2.calcOpticalFlowFarneback``) or "dis" (``cv2.DIS``).
    None: Farneback up to 256 px on the shorter side, DIS above (at 480 x 832 Farneback took 211 ms per frame pair
    against DIS's 68 ms). DIS was the only method until issue 8's fourth round; on the toy test split
    (scripts/bench_tracker.py) it drifted (a median 0.7 px off where the appearance check then dropped a point
    seen all along) and kept 0.876 of the points, penalised ObjMC 1.81 px; Farneback keeps 0.896, 1.39 px (on 64
    other toy clips, seed 1: DIS 0.910 / 1.50 px, Farneback 0.924 / 1.07 px), and on the warped 240 x 320 real
    photos its median end error is 0.22-0.30 px (DIS 0.26-0.53 px) at about half DIS's time per frame pair (DIS
    there runs at full resolution, see ``finest_scale``)."""
    win_size: int | None = None
    """Farneback: averaging window, pixels (odd). None: as LK's automatic window (9 px at 64 x 64, 21 px from ~150
    px up). Toy clips: 7 px kept more points on the test split (0.903 vs 0.896) but fewer on 64 other clips (seed
    1: 0.915 vs 0.924, penalised ObjMC 1.20 vs 1.07 px); on the real photos 15 px or more drifted least."""
    levels: int = 3
    """Farneback: pyramid levels above the base image."""
    iters: int = 5
    """Farneback: iterations per level."""
    poly_n: int = 5
    """Farneback: neighbourhood of the polynomial expansion (5 with ``poly_sigma`` 1.1, OpenCV's advice)."""
    poly_sigma: float = 1.1
    preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    """DIS: OpenCV preset (ULTRAFAST=0, FAST=1, MEDIUM=2)."""
    finest_scale: int | None = None
    """DIS: pyramid level it stops at (0: full resolution). None: 0 for images up to 256 px on the shorter side
    (the preset's coarser default blurs the motion of small objects), else the preset's."""
    fb_threshold: float = 1.0
    """Max forward-backward round-trip error, pixels, before a point is declared lost."""
    min_ncc: float | None = 0.5
    """Appearance check: zero-mean NCC of the gray patch with its frame-0 patch (catches a textured occluder the
    forward-backward check misses). None disables it."""
    patch: int | None = None
    """Side of the appearance-check patch, pixels (None: as LK's automatic window)."""
    template_update: float | None = 0.2
    """A point also passes the appearance check when its patch matches a slowly updated template (each frame
    the point passes, this share of the new patch is blended in) at NCC >= ``recent_ncc`` (None: frame 0 only)."""
    recent_ncc: float = 0.7
    """The closer match the updated template needs."""
    snap_radius: float | None = 1.0
    """Drift control: after the flow step (and its forward-backward check) a point moves to the place within this
    many pixels, searched on a ``snap_step`` grid, where its gray patch best matches its frame-0 patch (zero-mean
    NCC), when that beats the flow's own place by more than ``snap_margin`` (None: off, positions from the flow
    alone). The appearance and colour checks still judge the flow's own place, so the search, a maximum over
    (2r/step + 1)^2 places, never makes a point pass them. Why: on the toy test split 205 of the 349 visible pairs
    flow lost were points dropped with no occlusion near, all by the patch check, after the flow had carried them
    about 1-2 px off (Farneback averages the motion of a small sprite with its background). Measured (toy suite /
    64 other toy clips): coverage 0.893 -> 0.926 / 0.920 -> 0.929, penalised ObjMC 1.43 -> 1.08 / 1.06 -> 0.97 px,
    shown pairs over 3 px off 0.27% -> 0.03% / 0.09% -> 0.24%; occluded pairs shown 1.5% -> 1.5% / 8.7% -> 12.5%
    (more points live to meet an occluder the checks miss: 14 + 9 -> 16 + 17 pairs on an occlusion's first / later
    frames). Gating the move on a strong match (NCC >= 0.7-0.9) kept fewer points (suite 0.90-0.92); judging the
    checks at the moved place kept more (0.937, 0.97 px) but showed 16% of the other clips' occluded pairs."""
    snap_step: float = 0.5
    """Grid step of the drift-control search, pixels."""
    snap_margin: float = 0.02
    """NCC gain over the flow's own place a move needs."""
    reacquire: int = 3
    """A lost point is shown again after this many frames in a row on which it is found (0: a lost point stays
    lost). A find: the best match of the point's frame-0 gray patch (zero-mean NCC) on the 1-px grid within
    ``search_px`` of its course (its last shown place plus its mean step over up to 4 shown frames before it was
    lost, per frame since) matches at ``reacquire_ncc`` or more, beats every place over 2 px from it by
    ``reacquire_margin``, and, after the drift control's search around it, has the point's own colour within half
    of ``colour_tau`` of its frame-0 colour; each find after the first must be within 1 px of where the flow
    carried the one before. Then the appearance checks restart from the frame-0 patch and colour. Why: after the
    drift control most of flow's remaining loss was points never shown again after an occlusion (toy suite: 108
    of 242 lost visible pairs, 0.50 of the 1.08 px penalised ObjMC). The fifth round tried this without drift
    control and dropped it: a found point drifted off again (see the module docstring). Measured with it (toy
    suite / 64 other toy clips): coverage 0.926 -> 0.934 / 0.929 -> 0.936, penalised ObjMC 1.08 -> 0.97 / 0.97
    -> 0.87 px, shown pairs over 3 px off unchanged (0.03% / 0.24%), occluded pairs shown unchanged (1.5% /
    12.5%); warped photos with the box: 61-96 points back, at worst 0.76-1.41 px off (kept to the end 0.91-0.92
    -> 0.94-0.96 on coffee and chelsea); the tests' occluded bikes clip: 54 pairs back, at worst 1.16 px off.
    2 frames kept more (suite 0.937 / 0.92 px) but the same streak rule as ``LKParams.reacquire`` is kept."""
    reacquire_ncc: float = 0.8
    """The match a find needs (toy: a point's frame-0 patch matches at 0.75-0.95 where it truly is after an
    occlusion; 0.85 found too few)."""
    search_px: float = 10.0
    """How far from its course a lost point is looked for, pixels (16: suite 0.95 px, other clips 0.89 px)."""
    reacquire_margin: float = 0.1
    """NCC by which a find must beat every place more than 2 px from it (0 changed nothing on the toy suite)."""
    max_hidden: int = 16
    """A lost point is looked for during at most this many frames (``LKParams.max_coast``)."""
    colour_tau: float | None = 80.0
    """The point's own colour (mean RGB of the 3 x 3 pixels around it) must stay within this distance of its
    frame-0 colour, or within half of it of its recently seen colour, else the point is lost (None: off). The
    gray patch check passes a point of a sprite that slid under a static one whose edge filled most of its frame-0
    patch: on 64 toy clips outside the suite 20.9% of the occluded pairs were shown, 8.8% with this check (suite
    3.0% -> 1.5%), shown pairs over 3 px off 0.52% -> 0.09% (suite 0.34% -> 0.27%); the cost, points lost to
    a colour change without an occlusion: coverage 0.924 -> 0.920 (suite 0.896 -> 0.893), penalised ObjMC 1.07 ->
    1.06 px (suite 1.39 -> 1.43 px)."""


SMALL_SIDE = 256
"""Frames up to this many pixels on the shorter side count as small: LK predicts on RGB, flow is Farneback, DIS
runs at full resolution (each default's docstring says why)."""


def _small(height: int, width: int) -> bool:
    return min(height, width) <= SMALL_SIDE


def auto_window(height: int, width: int) -> int:
    """Default LK window side for an image size: odd, ~min(H, W) / 7, in 7..21."""
    win = int(np.clip(round(min(height, width) / 7), 7, 21))
    return win if win % 2 else win + 1


def auto_template(height: int, width: int) -> int:
    """Default template side: twice the LK window plus 3, at most 21 px (21 px from 64 px up): at 64 px this
    reaches past a straight edge or stripes to a corner of a sprite (the aperture problem); larger frames keep
    21 px, since a large frame-0 template is distorted by rotation and scaling over a clip."""
    return min(2 * auto_window(height, width) + 3, 21)


_MAX_SAMPLES = 21  # template samples per side; larger templates sample a blurred frame at a coarser stride


def _stride(size: int) -> int:
    """Sampling stride of a template of ``size`` pixels (1 up to 21 px: every pixel)."""
    return max(1, int(np.ceil(size / _MAX_SAMPLES)))


def _prep(frame: np.ndarray, stride: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float32, low-passed when the template is sampled at a stride (no aliasing)."""
    img = frame.astype(np.float32)
    return cv2.GaussianBlur(img, (0, 0), 0.5 * stride) if stride > 1 else img


class _Templates:
    """Frame-0 templates of N points: colour samples on a grid spanning ``size`` pixels (every ``_stride``
    pixels of the ``_prep``-ed frame), their gradients, and weights (spatial Gaussian x similarity of
    chromaticity to the point's own pixel)."""

    def __init__(self, img: np.ndarray, pts: np.ndarray, size: int, chroma_sigma: float):
        stride = _stride(size)
        half = stride * ((size - 1) // (2 * stride))
        g = np.arange(-half, half + 1, stride, dtype=np.float32)
        ox, oy = np.meshgrid(g, g)
        self.off = np.stack([ox.ravel(), oy.ravel()], 1)  # (P, 2)
        self.off1 = g  # the offsets along each axis (the template is square)
        self.centre = np.flatnonzero(np.hypot(*self.off.T) <= max(1.5, stride))  # samples at the point itself
        d = np.float32(0.5 * stride)
        shifts = [(0, 0), (d, 0), (-d, 0), (0, d), (0, -d)]
        s = _sample(img, pts, np.concatenate([self.off + sh for sh in shifts]))
        p = len(self.off)
        t, xp, xm, yp, ym = (s[:, k * p : (k + 1) * p] for k in range(5))  # (N, P, C) each
        spatial = np.exp(-(self.off**2).sum(1) / (2 * (size / 3) ** 2))
        chroma = t / (t.sum(-1, keepdims=True) + 30.0)  # +30: dark pixels have no reliable colour
        centre = chroma[:, p // 2 : p // 2 + 1]
        w = spatial[None] * np.exp(-((chroma - centre) ** 2).sum(-1) / (2 * chroma_sigma**2))
        self.w = (w / w.sum(1, keepdims=True)).astype(np.float32)  # (N, P)
        mean = np.einsum("np,npc->nc", self.w, t)
        self.t = t - mean[:, None]  # zero weighted mean: offsets in brightness cancel
        self.tn = np.sqrt(np.einsum("np,npc,npc->n", self.w, self.t, self.t))
        self.flat = self.tn < 1.0  # weighted std under one grey level: nothing to match against
        n, c = t.shape[0], t.shape[2]
        self.w1 = self.w[:, None, :]  # (N, 1, P): batched matmuls below are much faster than einsum
        self.wt = (self.w[..., None] * self.t).reshape(n, 1, p * c)
        gx, gy = (xp - xm) / stride, (yp - ym) / stride
        wg = np.stack([self.w[..., None] * gx, self.w[..., None] * gy], 1)  # (N, 2, P, C)
        # For the zero-mean error: sum_p w g (I - mean(I)) = sum_p w g I - (sum_p w g) . mean(I).
        self.sg = wg.sum(2)  # (N, 2, C)
        self.gt = np.einsum("nkpc,npc->nk", wg, self.t)  # (N, 2)
        hess = np.einsum("nkpc,nlpc->nkl", wg, np.stack([gx, gy], 1))
        self.wg = np.ascontiguousarray(wg.reshape(n, 2, p * c))
        tr = np.trace(hess, axis1=1, axis2=2)
        # Damping: along a direction with no gradient (an edge, stripes) the update stays near the prediction.
        damp = (1e-2 * tr + 1e-6)[:, None, None] * np.eye(2)
        self.hinv = np.linalg.inv(hess + damp).astype(np.float32)

    def ncc(self, img: np.ndarray, pts: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Weighted zero-mean NCC (N',) of templates ``idx`` with ``img`` sampled at ``pts`` (N', 2)."""
        return self.ncc_of(_sample(img, pts, self.off), idx)

    def ncc_of(self, patch: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``ncc`` of templates ``idx`` (N',) with patches already sampled: (N', P, C) -> (N',), or (N', G, P, C)
        (G patches per template) -> (N', G)."""
        ex = (slice(None),) + (None,) * (patch.ndim - 3)  # a template's arrays are shared by its G patches
        w1 = self.w1[idx][ex]
        mean = (w1 @ patch)[..., 0, :]  # (N', [G,] C)
        var = (w1 @ (patch * patch))[..., 0, :].sum(-1) - (mean * mean).sum(-1)
        dot = (self.wt[idx][ex] @ patch.reshape(*patch.shape[:-2], -1, 1))[..., 0, 0]
        out = dot / np.maximum(self.tn[idx][ex] * np.sqrt(np.maximum(var, 0)), 1e-6)
        return np.where(self.flat[idx][ex], 1.0, out)

    def robust_ncc(
        self, img: np.ndarray, pts: np.ndarray, idx: np.ndarray, tau: float, iters: int = 3
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Match of templates ``idx`` that ignores the part of the template hidden by something else.

        Template pixels whose zero-mean colour differs from the patch by more than ``tau`` grey levels are
        outliers (an object in front of part of the template, or the background that slid behind an edge);
        the means are re-estimated without them a few times. Returns the weighted zero-mean NCC over the
        inliers (N',), the inlier share of the template weight (N',) and whether the pixels within 1.5 px of
        the point itself are all inliers (N',): a point that is itself covered fails that.
        """
        patch = _sample(img, pts, self.off)  # (n, P, C)
        w, t = self.w[idx], self.t[idx]
        m = np.ones(w.shape, bool)
        for _ in range(iters):
            wm = w * m
            s = np.maximum(wm.sum(1, keepdims=True), 1e-6)[..., None]
            dp = patch - (wm[..., None] * patch).sum(1, keepdims=True) / s
            dt = t - (wm[..., None] * t).sum(1, keepdims=True) / s
            m = np.linalg.norm(dp - dt, axis=-1) < tau
        wm = w * m
        dot = np.einsum("np,npc,npc->n", wm, dp, dt)
        var_p = np.einsum("np,npc,npc->n", wm, dp, dp)
        var_t = np.einsum("np,npc,npc->n", wm, dt, dt)
        ncc = dot / np.maximum(np.sqrt(var_p * var_t), 1e-6)
        flat = var_t < wm.sum(1)  # inlier template std under one grey level: nothing left to compare
        ncc = np.where(flat, 0.0, ncc)
        centre = m[:, self.centre].all(1)
        return ncc, wm.sum(1), centre

    def refine(self, img: np.ndarray, pts: np.ndarray, idx: np.ndarray, iters: int) -> np.ndarray:
        """Align templates ``idx`` to ``img`` starting at ``pts`` (inverse-compositional translation LK); a
        point stops once its step is under 0.02 px."""
        pts = pts.copy()
        act = np.flatnonzero(~self.flat[idx])  # positions in idx still iterating
        for _ in range(iters):
            if act.size == 0:
                break
            j = idx[act]
            patch = _sample(img, pts[act], self.off)  # (n, P, C)
            mean = self.w1[j] @ patch  # (n, 1, C)
            b = (self.wg[j] @ patch.reshape(len(j), -1, 1))[..., 0]
            b -= (self.sg[j] @ mean.transpose(0, 2, 1))[..., 0] + self.gt[j]
            step = np.clip((self.hinv[j] @ b[..., None])[..., 0], -2.0, 2.0)
            pts[act] -= step
            act = act[np.abs(step).max(1) >= 0.02]
        return pts


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


class _Visibility:
    """The visibility rule: shown while matching; once hidden, shown again after ``reacquire`` strict matches
    in a row; a point whose estimate left the frame, failed outright or coasted too long is never followed
    again."""

    def __init__(self, points: np.ndarray, t: int, h: int, w: int, reacquire: int):
        n = points.shape[0]
        self.tracks = np.zeros((t, n, 2), dtype=np.float32)
        self.visible = np.zeros((t, n), dtype=bool)
        self.tracks[0] = points
        self.visible[0] = _inside(points, h, w)
        self.followed = self.visible[0].copy()  # still has a position estimate
        self.streak = np.zeros(n, dtype=np.int64)  # consecutive matching frames while hidden
        self.reacquire = reacquire
        self.est = points.copy()
        self.vel = np.zeros_like(points)  # last frame-to-frame step of each estimate, pixels
        self.hidden_for = np.zeros(n, dtype=np.int64)  # frames since the point was last shown
        self.est_at = np.zeros((t, n, 2), dtype=np.float32)  # each frame's estimate (a streak's finds)
        self.est_at[0] = points

    def update(
        self,
        i: int,
        idx: np.ndarray,
        new: np.ndarray,
        alive: np.ndarray,
        match: np.ndarray,
        strict: np.ndarray,
    ) -> None:
        """Frame i: followed points ``idx`` moved to ``new``; ``alive`` False ends following; ``match`` keeps a
        shown point shown; ``strict`` (a closer match) counts towards showing a hidden point again."""
        was = self.visible[i - 1]
        ok = np.zeros_like(self.followed)
        ok[idx] = alive & match
        good = np.zeros_like(self.followed)
        good[idx] = alive & match & strict
        # A hidden point keeps the velocity of its course (a point found again after a search would otherwise
        # take the search's correction as its velocity).
        step = new - self.est[idx]
        self.vel[idx] = np.where(was[idx, None], step, self.vel[idx])
        self.est[idx] = new
        self.est_at[i] = self.est
        self.followed[idx[~alive]] = False
        self.streak = np.where(good, self.streak + 1, 0)
        if self.reacquire > 0:
            vis = ok & (was | (self.streak >= self.reacquire))
        else:
            vis = ok & was
            self.followed[idx] &= vis[idx]  # lost stays lost: stop following
        self.visible[i] = vis
        self.hidden_for = np.where(vis, 0, self.hidden_for + 1)
        self.tracks[i] = np.where(vis[:, None], self.est, self.tracks[i - 1])
        if self.reacquire > 1:
            # A point shown again was found on each frame of its streak (strict, unambiguous, on course): those
            # frames are shown too, at their finds (the evidence that shows frame i vouches for them).
            back = np.flatnonzero(vis & ~was)
            for k in range(1, self.reacquire):
                self.visible[i - k, back] = True
                self.tracks[i - k, back] = self.est_at[i - k, back]


def track_points(
    frames: np.ndarray, points: np.ndarray, params: LKParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Track points through a clip: RGB pyramidal LK prediction, frame-0 template refinement, template check.

    Args:
        frames: uint8 (T, H, W, 3) RGB.
        points: float (N, 2) (x, y) pixels on frame 0.
        params: settings (``LKParams()`` by default).

    Returns:
        tracks float32 (T, N, 2) pixels and visible bool (T, N). Points outside frame 0 are invisible
        throughout; an invisible point's track holds its last visible position.
    """
    p = params or LKParams()
    frames, points = _check_inputs(frames, points)
    t, h, w = frames.shape[:3]
    state = _Visibility(points, t, h, w, p.reacquire)
    if points.shape[0] == 0:
        return state.tracks, state.visible
    win = p.win_size or auto_window(h, w)
    size = p.template or auto_template(h, w)
    stride = _stride(size)
    tpl = _Templates(_prep(frames[0], stride), points, size, p.chroma_sigma)
    lk = dict(
        winSize=(win, win),
        maxLevel=p.max_level,
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, p.iters, p.eps),
        minEigThreshold=p.min_eig,
    )
    rgb = p.lk_rgb if p.lk_rgb is not None else _small(h, w)
    lk_frames = frames if rgb else to_gray(frames)
    # The search grid for hidden points (offsets from the course, 2 px apart; see the search below).
    g = np.arange(-p.search_px, p.search_px + 1, 2.0, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    prev = lk_frames[0]
    for i in range(1, t):
        cur = lk_frames[i]
        idx = np.flatnonzero(state.followed)
        if idx.size:
            img = _prep(frames[i], stride)
            guess = state.est[idx] + state.vel[idx]  # the point's constant-velocity course
            hidden = ~state.visible[i - 1, idx]
            # A hidden point (occluded, so LK would follow whatever covers it) coasts along its course and is
            # looked for there: LK's prediction is not used for it, so LK runs on the shown points only (LK
            # tracks each point on its own).
            alive = hidden.copy()
            new = guess.copy()
            # Refined and matched here: the shown points only (a hidden point's place and match come from the
            # search below, which overwrites both; a point is only followed while hidden with ``reacquire``).
            ncc = np.zeros(len(idx), np.float32)
            shown = np.flatnonzero(~hidden)
            if shown.size:
                p0 = state.est[idx[shown]].reshape(-1, 1, 2)
                p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **lk)
                ok = st1.ravel() == 1
                if p.fb_threshold is not None:
                    p0b, st0, _ = cv2.calcOpticalFlowPyrLK(
                        cur, prev, p1, p0.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk
                    )
                    fb = np.linalg.norm(p0b - p0, axis=-1).ravel()
                    ok &= (st0.ravel() == 1) & (fb <= p.fb_threshold)
                alive[shown] = ok
                new[shown[ok]] = p1.reshape(-1, 2)[ok]
                # Anchored at frame 0: no accumulated drift.
                new[shown] = tpl.refine(img, new[shown], idx[shown], p.refine_iters)
                ncc[shown] = tpl.ncc(img, new[shown], idx[shown])
            if p.second_start:
                # LK's coarse pyramid levels see up to 8x its window, so an object moving fast nearby (an
                # occluder passing) can drag the prediction tens of pixels; the point's own constant-velocity
                # guess, refined the same way, is the other start, and the better template match wins.
                far = shown[np.linalg.norm(guess[shown] - new[shown], axis=1) > 1.0]
                if far.size:
                    alt = tpl.refine(img, guess[far], idx[far], p.refine_iters)
                    alt_ncc = tpl.ncc(img, alt, idx[far])
                    better = alt_ncc > ncc[far]
                    new[far[better]], ncc[far[better]] = alt[better], alt_ncc[better]
                    alive[far[better]] = True
            if p.reacquire > 0 and hidden.any():
                # Look for a hidden point around its course, in a window that grows while it stays hidden (its
                # course is extrapolated from before the occlusion): best NCC on a 2 px grid, then refined.
                hid = np.flatnonzero(hidden)
                rad = np.minimum(2.0 * state.hidden_for[idx[hid]], p.search_px)
                cand = guess[hid, None] + grid[None]  # (n, G, 2)
                # Scored only inside each point's window (most of the tracker's time goes here); points hidden
                # equally long have the same window and are scored together, sharing their template's arrays.
                inside = np.abs(grid).max(1)[None] <= rad[:, None]  # (n, G)
                cut = _search_area(img, guess[hid], g, tpl.off1)
                sc = np.full(inside.shape, -np.inf, dtype=np.float32)
                for r in np.unique(rad):
                    same = np.flatnonzero(rad == r)
                    gr = np.flatnonzero(inside[same[0]])
                    # In blocks of about 1 MB of patches: the temporaries stay in the CPU cache.
                    block = max(1, (1 << 20) // (len(gr) * tpl.off.shape[0] * img.shape[-1] * img.itemsize))
                    for pr in np.split(same, np.arange(block, len(same), block)):
                        pi, gi = np.repeat(pr, len(gr)), np.tile(gr, len(pr))
                        patch = cut(pi, gi) if cut is not None else _sample(img, cand[pi, gi], tpl.off)
                        patch = patch.reshape(len(pr), len(gr), *patch.shape[1:])
                        sc[pr[:, None], gr] = tpl.ncc_of(patch, idx[hid[pr]])
                top = sc.argmax(1)
                best = cand[np.arange(len(hid)), top]
                # Only an unambiguous find counts: every place 4 px or more from the best must match clearly
                # worse (on a texture that repeats, or a scene with look-alikes, the best is often wrong).
                apart = np.abs(grid[None] - grid[top][:, None]).max(-1) >= 4.0
                second = np.where(apart, sc, -np.inf).max(1)
                unique = sc.max(1) - second >= p.reacquire_margin
                found = tpl.refine(img, best, idx[hid], p.refine_iters)
                new[hid] = found
                ncc[hid] = -1.0
                if unique.any():  # only an unambiguous find is matched
                    ncc[hid[unique]] = tpl.ncc(img, found[unique], idx[hid[unique]])
            alive &= _inside(new, h, w)
            partial = np.zeros(len(idx), bool)
            if p.partial_tau is not None:
                # Part of the template hidden by another object (the point itself uncovered): judged on the rest.
                weak = np.flatnonzero((ncc < p.min_ncc) & ~hidden)
                if weak.size:
                    rn, sup, cen = tpl.robust_ncc(img, new[weak], idx[weak], p.partial_tau)
                    partial[weak] = cen & (sup >= p.partial_support) & (rn >= p.partial_ncc)
            match = ncc >= p.min_ncc
            strict = ncc >= p.reacquire_ncc
            if p.jump_px is not None:
                # A shown point's step far from its constant-velocity course (an occluder dragged it, or it
                # snapped onto a look-alike) is not trusted, however well it matches: on a weakly textured
                # template a place 20 px away can match as closely as the point itself. The point is hidden and
                # must be found again like any hidden point: an unambiguous find, then on-course strict matches.
                on_course = np.linalg.norm(new - guess, axis=1) <= p.jump_px
                # (A point shown on one frame only has no course yet: its step needs the strict match alone.)
                course = state.visible[i - 1, idx] & (state.visible[i - 2, idx] if i >= 2 else False)
                match &= on_course | (strict & ~course)  # (a hidden point has no course)
                partial &= on_course  # a partial match never vouches for a jump
                # A hidden point found anywhere in its search window starts a streak; each further frame of the
                # streak must find it on the course the streak set.
                strict &= on_course | (hidden & (state.streak[idx] == 0))
            # A hidden point that is not found keeps coasting (it is shown again only after ``reacquire`` strict
            # on-course matches in a row); one coasting longer than ``max_coast`` frames is no longer followed.
            match |= partial
            lost = ~match | (hidden & ~strict)  # a point that fails to match coasts from here on
            new[lost] = guess[lost]
            alive &= _inside(new, h, w) & (state.hidden_for[idx] < p.max_coast)
            state.update(i, idx, new, alive, match, strict)
        else:
            state.tracks[i] = state.tracks[i - 1]
        prev = cur
    return state.tracks, state.visible


def _sample_flow(flow: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear sample of an (H, W, 2) flow field at (N, 2) sub-pixel points -> (N, 2)."""
    map_x = pts[:, 0].reshape(1, -1).astype(np.float32)
    map_y = pts[:, 1].reshape(1, -1).astype(np.float32)
    out = cv2.remap(flow, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 2)


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


class _FlowReacquire:
    """Lost flow points found again by their frame-0 gray patch around their course (``FlowParams.reacquire``)."""

    def __init__(self, points: np.ndarray, p: FlowParams):
        n = len(points)
        self.p = p
        self.lost_at = np.full(n, -1)
        self.anchor = points.copy()
        self.vel = np.zeros_like(points)
        self.streak = np.zeros(n, int)
        self.pos = points.copy()
        self.r = int(np.floor(p.search_px))
        off = np.arange(-self.r, self.r + 1, dtype=np.float32)
        ox, oy = np.meshgrid(off, off)
        self.grid = np.stack([ox.ravel(), oy.ravel()], axis=1)  # row-major, as cv2.matchTemplate's result

    def searching(self, i: int) -> np.ndarray:
        """bool (N,): points lost no more than ``max_hidden`` frames before frame i."""
        return (self.lost_at >= 0) & (i - self.lost_at <= self.p.max_hidden)

    def step(
        self,
        i: int,
        gray: np.ndarray,
        fwd: np.ndarray,
        templates: np.ndarray,
        tracks: np.ndarray,
        alive: np.ndarray,
        newly_lost: np.ndarray,
        win: int,
        h: int,
        w: int,
        colour: _Colour | None,
    ) -> np.ndarray:
        """Frame i: start the course of the points ``newly_lost`` on it, look for the points lost before, and
        return those whose streak of finds reached ``reacquire`` (their place on frame i is ``self.pos``)."""
        p = self.p
        if newly_lost.size:  # course: last shown position and velocity
            self.lost_at[newly_lost] = i
            self.anchor[newly_lost] = tracks[i - 1, newly_lost]
            k = min(i - 1, 4)
            self.vel[newly_lost] = (tracks[i - 1, newly_lost] - tracks[i - 1 - k, newly_lost]) / max(k, 1)
            self.streak[newly_lost] = 0
        cand = np.flatnonzero(~alive & self.searching(i) & (self.lost_at < i))  # not those lost on frame i
        if cand.size == 0:
            return cand
        course = self.anchor[cand] + self.vel[cand] * (i - self.lost_at[cand] + 1)[:, None]
        r = self.r
        areas = _patches(gray, course, 2 * r + win).reshape(len(cand), 2 * r + win, 2 * r + win)
        tm = templates[cand].reshape(len(cand), win, win)
        ncc = np.stack([cv2.matchTemplate(a, t, cv2.TM_CCOEFF_NORMED).ravel() for a, t in zip(areas, tm)])
        ncc[templates[cand].std(axis=1) < 1.0] = -1.0  # a flat template cannot be found unambiguously
        best = ncc.argmax(axis=1)
        rows = np.arange(len(cand))
        s1 = ncc[rows, best]
        far = np.linalg.norm(self.grid[None] - self.grid[best][:, None], axis=2) > 2.0
        s2 = np.where(far, ncc, -1.0).max(axis=1)
        found = (s1 >= p.reacquire_ncc) & (s1 - s2 >= p.reacquire_margin)
        f = course + self.grid[best]
        if p.snap_radius and found.any():
            f[found] = _snap(gray, templates[cand[found]], f[found], win, p)
        found &= _inside(f, h, w)
        if colour is not None and found.any():
            found &= colour.near_first(i, cand, f, 0.5)
        # a streak continues when the find is where the flow carried the previous find
        prev_ok = self.streak[cand] > 0
        carried = self.pos[cand] + _sample_flow(fwd, self.pos[cand])
        linked = prev_ok & (np.linalg.norm(f - carried, axis=1) <= 1.0)
        self.streak[cand] = np.where(found, np.where(linked, self.streak[cand] + 1, 1), 0)
        self.pos[cand[found]] = f[found]
        back = cand[self.streak[cand] >= p.reacquire]
        self.lost_at[back] = -1
        self.streak[back] = 0
        return back


def _snap(gray: np.ndarray, templates: np.ndarray, pts: np.ndarray, win: int, p: FlowParams) -> np.ndarray:
    """(N, 2) points moved to their best frame-0 match (zero-mean NCC of (N, win*win) gray ``templates``) on a
    ``snap_step`` grid within ``snap_radius`` pixels, where it beats the match at the point by ``snap_margin``."""
    off = np.arange(-p.snap_radius, p.snap_radius + 1e-6, p.snap_step, dtype=np.float32)
    ox, oy = np.meshgrid(off, off)
    grid = np.stack([ox.ravel(), oy.ravel()], axis=1)  # (M, 2), the centre included
    cand = _patches(gray, (pts[:, None] + grid[None]).reshape(-1, 2), win).reshape(len(pts), len(grid), -1)
    ncc, _ = _zncc(templates[:, None], cand)  # (N, M)
    centre = int(np.argmin(np.abs(grid).sum(axis=1)))
    best = ncc.argmax(axis=1)
    rows = np.arange(len(pts))
    move = ncc[rows, best] - ncc[:, centre] > p.snap_margin
    out = pts.copy()
    out[move] += grid[best[move]]
    return out


class _Colour:
    """A point's own colour (mean RGB of the 3 x 3 pixels around it) against its frame-0 colour and its recently
    seen one (blended in like ``FlowParams.template_update``'s patch, a fifth per frame the point passes)."""

    _OFF = np.array([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.float32)

    def __init__(self, frames: np.ndarray, points: np.ndarray, tau: float):
        self.frames, self.tau = frames, tau
        self.first = self._at(0, points)
        self.recent = self.first.copy()

    def _at(self, i: int, pts: np.ndarray) -> np.ndarray:
        return _sample(self.frames[i].astype(np.float32), pts, self._OFF).mean(1)

    def check(self, i: int, idx: np.ndarray, pts: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """bool (len(idx),): points ``idx`` at ``pts`` on frame i within ``tau`` of their frame-0 colour or within
        half of it of their recent colour; the recent colour of those that pass and are ``ok`` otherwise is
        updated."""
        c = self._at(i, pts)
        good = (np.linalg.norm(c - self.first[idx], axis=1) <= self.tau) | (
            np.linalg.norm(c - self.recent[idx], axis=1) <= 0.5 * self.tau
        )
        upd = good & ok
        self.recent[idx[upd]] = 0.8 * self.recent[idx[upd]] + 0.2 * c[upd]
        return good

    def near_first(self, i: int, idx: np.ndarray, pts: np.ndarray, share: float) -> np.ndarray:
        """bool (len(idx),): points ``idx`` at ``pts`` on frame i within ``share * tau`` of their frame-0 colour."""
        return np.linalg.norm(self._at(i, pts) - self.first[idx], axis=1) <= share * self.tau

    def restart(self, idx: np.ndarray) -> None:
        """A re-acquired point's recent colour starts again from its frame-0 colour."""
        self.recent[idx] = self.first[idx]


def hold_last(tracks: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Forward-fill (T, N, 2) tracks where ``visible`` is False with the last visible position (a lost point
    counts as no longer following; used by the RL reward and the benchmark's penalised ObjMC)."""
    held = tracks.copy()
    for t in range(1, tracks.shape[0]):
        lost = ~visible[t]
        held[t, lost] = held[t - 1, lost]
    return held
