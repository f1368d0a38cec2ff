"""Drag paths drawn in the browser -> trajectories, through the same contract as the trajectory file.

A path is the polyline a pointer traced (press, move, release) in pixels of the chosen image: P >= 1 points of
any spacing. Each path is resampled by arc length to the frames it should drive, and the whole set is then checked
by `ardrag.trajectory.parse_trajectory` with the model's limits, exactly as `ardrag-generate` checks a file.
"""

from __future__ import annotations

import numpy as np

from ardrag.trajectory import TrajectoryError, TrajectoryLimits, parse_trajectory

MAX_PATH_POINTS = 4096
"""Most points one drawn path may carry (the page thins long drags well below this)."""


def resample_path(points: np.ndarray, n: int) -> np.ndarray:
    """Resample a polyline to `n` points evenly spaced along its length.

    Args:
        points: float (P, 2) (x, y), P >= 1; repeated points are allowed.
        n: number of output points, >= 1.

    Returns:
        float32 (n, 2): the first and last points are the path's ends (n = 1: the first point); a path of zero
        length gives its point n times.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    assert len(pts) >= 1 and n >= 1
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])  # arc length at each input point
    if n == 1 or s[-1] == 0.0:
        return np.repeat(pts[:1], n, axis=0).astype(np.float32)
    keep = np.concatenate([[True], seg > 0])  # np.interp needs strictly increasing positions
    targets = np.linspace(0.0, s[-1], n)
    out = np.stack([np.interp(targets, s[keep], pts[keep, k]) for k in range(2)], axis=1)
    return out.astype(np.float32)


def paths_to_tracks(
    paths: object,
    num_frames: int,
    image_width: int,
    image_height: int,
    limits: TrajectoryLimits,
    start: int = 0,
) -> np.ndarray:
    """Drawn paths -> tracks (T, N, 2) in image pixels, validated by the trajectory-file contract.

    Path k's first point is held on frames 0..start-1 and the path is resampled over frames start..T-1, so a
    drag drawn while a video plays moves its point from the next frame on (start = frames already shown).
    Raises `TrajectoryError` (one line) for malformed paths, points far outside the image, or N / T over the
    model's limits.
    """
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise TrajectoryError(f"frame count must be a positive integer, got {num_frames!r}")
    if num_frames > limits.max_frames:
        raise TrajectoryError(f"{num_frames} frames exceed the model's limit of {limits.max_frames}")
    if not isinstance(paths, list) or not paths:
        raise TrajectoryError("draw at least one drag path on the image")
    if len(paths) > limits.max_tracks:
        raise TrajectoryError(f"{len(paths)} drag paths exceed the model's limit of {limits.max_tracks}")
    start = min(max(int(start), 0), num_frames - 1)
    one = TrajectoryLimits(max_frames=MAX_PATH_POINTS, max_tracks=1, margin=limits.margin)
    resampled = []
    for k, path in enumerate(paths):
        if isinstance(path, list) and len(path) > MAX_PATH_POINTS:
            raise TrajectoryError(f"path {k} has {len(path)} points; at most {MAX_PATH_POINTS}")
        try:  # structure, finiteness and the frame margin of this one path, in the file's wording
            pts = parse_trajectory({"tracks": [path]}, image_width, image_height, one)[0][:, 0]
        except TrajectoryError as e:
            raise TrajectoryError(f"path {k}: {e}") from None
        track = resample_path(pts, num_frames - start)
        resampled.append(np.concatenate([np.repeat(track[:1], start, axis=0), track]))
    obj = {"tracks": np.stack(resampled).tolist()}  # (N, T, 2), the file's nesting
    tracks, _ = parse_trajectory(obj, image_width, image_height, limits)
    return tracks
