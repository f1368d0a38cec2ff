"""Settings of the two trackers (``LKParams``, ``FlowParams``) and the size-dependent defaults."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
    ``track_points`` 2.3-2.7x slower than luma LK, and on the 240 x 320 warped photos luma gives the
    same kept points and errors (the template refinement and check are on RGB either way)."""
    second_start: bool = True
    """Also refine from the point's constant-velocity guess where it is over 1 px from the refined LK prediction,
    and keep the better template match (on warped real photos with a fast occluder, LK's coarse levels dragged
    never-covered points up to 60 px away and 0.81-0.93 of them were kept; see ``track_points``)."""
    jump_px: float | None = 3.0
    """A shown point's step more than this many pixels off its constant-velocity course (set by its last two
    shown frames; a point shown on one frame only needs the stricter ``reacquire_ncc`` match) hides it, however
    well it matches (it is then found again like any hidden point, see ``reacquire``); a hidden point's streak must
    stay within this of the course its first find set (None: off). With only the stricter ``reacquire_ncc``
    match required for such a step, corners on a weakly textured wall under a blinking box stay shown 21-26 px
    off (tests/test_tracking.py)."""
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
    against DIS's 68 ms). On the toy test split
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
    of 242 lost visible pairs, 0.50 of the 1.08 px penalised ObjMC). Without drift control a found point drifts
    off again (see ``ardrag.tracking.flow``). Measured with it (toy
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
