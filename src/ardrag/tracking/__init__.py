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

Modules: ``params`` (settings), ``lk`` (LK tracker), ``templates`` (its templates and visibility rule), ``flow``
(flow tracker), ``appearance`` (its drift control and colour check), ``reacquire`` (its re-acquisition), ``core``
(sampling, patches, input checks, ``hold_last``).

Conventions: frames uint8 (T, H, W, 3) RGB; points float (N, 2) as (x, y) pixels on frame 0 (pixel
centres at integer coordinates, as in OpenCV); tracks float32 (T, N, 2) pixels; visible bool (T, N).
While a point is invisible its track holds its last visible position, so tracks stay finite. A point whose
estimate leaves the frame is invisible from then on.
"""

# The private names are re-exported for the tests and benchmarks that call them directly.
from ardrag.tracking.appearance import _Colour, _snap  # noqa: F401
from ardrag.tracking.core import (  # noqa: F401
    _check_inputs,
    _inside,
    _ncc_ok,
    _patches,
    _remap,
    _sample,
    _sample_flow,
    _search_area,
    _zncc,
    hold_last,
    to_gray,
)
from ardrag.tracking.flow import track_points_flow
from ardrag.tracking.lk import track_points
from ardrag.tracking.params import (  # noqa: F401
    SMALL_SIDE,
    FlowParams,
    LKParams,
    auto_template,
    auto_window,
)

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
