"""The trajectory file (CLI input): parse, validate and rescale, with one-line errors naming the problem.

Format: a JSON object with "tracks": N lists of T [x, y] pairs in pixels of the input image; optional
"visible": N lists of T booleans; optional "width", "height" of the coordinate frame (default: the image size;
coordinates are rescaled when they differ). Internally tracks are float32 (T, N, 2) and visible bool (T, N).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class TrajectoryError(ValueError):
    """The trajectory input is malformed; the message is one line and says what is wrong."""


@dataclass
class TrajectoryLimits:
    max_frames: int = 1024
    """Most video frames a trajectory may have (the model's frame limit)."""
    max_tracks: int = 64
    """Most tracks (dragged points)."""
    margin: float = 0.5
    """Points may lie outside the frame by at most this fraction of its width/height (drags that exit the view)."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_trajectory(
    obj: Any, image_width: int, image_height: int, limits: TrajectoryLimits | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a decoded trajectory object and return (tracks (T, N, 2) in image pixels, visible (T, N))."""
    limits = limits or TrajectoryLimits()
    if not isinstance(obj, dict):
        raise TrajectoryError(
            f"trajectory must be a JSON object with a 'tracks' key, got {type(obj).__name__}"
        )
    unknown = set(obj) - {"tracks", "visible", "width", "height"}
    if unknown:
        raise TrajectoryError(f"unknown keys {sorted(unknown)}; allowed: tracks, visible, width, height")
    if "tracks" not in obj:
        raise TrajectoryError("missing 'tracks': give N lists of T [x, y] pairs")
    tracks = obj["tracks"]
    if not isinstance(tracks, list) or not tracks:
        raise TrajectoryError("'tracks' must be a non-empty list of tracks (each a list of [x, y] pairs)")
    if any(isinstance(tr, list) and len(tr) == 2 and all(_is_number(v) for v in tr) for tr in tracks):
        # e.g. {"tracks": [[x0, y0], [x1, y1], ...]}: one path written without its own list
        raise TrajectoryError(
            "'tracks' holds [x, y] points, not tracks: a track is a list of [x, y] pairs, so one dragged point "
            'is {"tracks": [[[x0, y0], [x1, y1], ...]]}'
        )
    if len(tracks) > limits.max_tracks:
        raise TrajectoryError(f"{len(tracks)} tracks exceed the model's limit of {limits.max_tracks}")
    lengths = set()
    for i, tr in enumerate(tracks):
        if not isinstance(tr, list) or not tr:
            raise TrajectoryError(f"track {i} must be a non-empty list of [x, y] pairs")
        for j, p in enumerate(tr):
            if not isinstance(p, list) or len(p) != 2 or not all(_is_number(v) for v in p):
                raise TrajectoryError(
                    f"track {i} point {j} must be a pair of numbers [x, y], got {json.dumps(p)}"
                )
            if not all(math.isfinite(v) for v in p):
                raise TrajectoryError(f"track {i} point {j} is not finite: {p}")
        lengths.add(len(tr))
    if len(lengths) != 1:
        raise TrajectoryError(
            f"all tracks must have the same number of frames, got lengths {sorted(lengths)}"
        )
    t = lengths.pop()
    if t > limits.max_frames:
        raise TrajectoryError(f"{t} frames exceed the model's limit of {limits.max_frames}")
    arr = np.asarray(tracks, dtype=np.float64).transpose(1, 0, 2)  # (T, N, 2)

    width, height = float(image_width), float(image_height)
    for key in ("width", "height"):
        if key in obj and (not _is_number(obj[key]) or not math.isfinite(obj[key]) or obj[key] <= 0):
            raise TrajectoryError(f"'{key}' must be a positive number, got {obj[key]!r}")
    src_w, src_h = float(obj.get("width", width)), float(obj.get("height", height))
    arr[..., 0] *= width / src_w
    arr[..., 1] *= height / src_h

    lo_x, hi_x = -limits.margin * width, (1 + limits.margin) * width
    lo_y, hi_y = -limits.margin * height, (1 + limits.margin) * height
    bad = (arr[..., 0] < lo_x) | (arr[..., 0] > hi_x) | (arr[..., 1] < lo_y) | (arr[..., 1] > hi_y)
    if bad.any():
        f, n = map(int, np.argwhere(bad)[0])
        x, y = arr[f, n]
        raise TrajectoryError(
            f"track {n} frame {f} at ({x:.1f}, {y:.1f}) is far outside the {width:.0f}x{height:.0f} frame"
        )

    if "visible" in obj:
        vis = obj["visible"]
        if (
            not isinstance(vis, list)
            or len(vis) != len(tracks)
            or any(not isinstance(v, list) or len(v) != t for v in vis)
        ):
            raise TrajectoryError(f"'visible' must be {len(tracks)} lists of {t} booleans, matching 'tracks'")
        if any(not isinstance(b, bool) for v in vis for b in v):
            raise TrajectoryError("'visible' entries must be true or false")
        visible = np.asarray(vis, dtype=bool).T
    else:
        visible = np.ones((t, len(tracks)), dtype=bool)
    return arr.astype(np.float32), visible


def load_trajectory(
    path: str | Path, image_width: int, image_height: int, limits: TrajectoryLimits | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a trajectory JSON file (see module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TrajectoryError(f"cannot read trajectory file {path}: {e.strerror}") from None
    try:
        obj = json.loads(text, parse_constant=lambda c: float(c))  # NaN/Infinity reach the finiteness check
    except json.JSONDecodeError as e:
        raise TrajectoryError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    return parse_trajectory(obj, image_width, image_height, limits)


def trajectory_to_json(tracks: np.ndarray, visible: np.ndarray | None, width: int, height: int) -> dict:
    """Inverse of parse_trajectory: (T, N, 2) (+ (T, N)) -> the file's JSON object."""
    obj: dict[str, Any] = {"tracks": np.asarray(tracks, dtype=float).transpose(1, 0, 2).tolist()}
    if visible is not None:
        obj["visible"] = np.asarray(visible, dtype=bool).T.tolist()
    obj["width"], obj["height"] = int(width), int(height)
    return obj
