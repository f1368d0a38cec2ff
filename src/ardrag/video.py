"""Video and image I/O with OpenCV (decode) and OpenCV/Pillow (encode). Frames are uint8 (T, H, W, 3) RGB."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np


class VideoReadError(RuntimeError):
    """A video could not be opened or decoded."""


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file to uint8 (T, H, W, 3) RGB frames and its frame rate (fps, 0 if unknown)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoReadError(f"cannot open video {path}")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    frames = []
    try:
        while max_frames is None or len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise VideoReadError(f"no decodable frames in {path}")
    return np.stack(frames), fps


def decode_video_bytes(data: bytes, suffix: str = ".mp4") -> np.ndarray:
    """Decode an in-memory video (e.g. a WebDataset ``.mp4`` field) to uint8 (T, H, W, 3) RGB."""
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return read_video(tmp)[0]
    finally:
        os.unlink(tmp)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file to uint8 (H, W, 3) RGB; a clear error when it is not an image."""
    if not Path(path).is_file():  # checked here: cv2.imread would print its own WARN line first
        raise VideoReadError(f"image {path} does not exist")
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise VideoReadError(f"cannot read image {path}: not an image format OpenCV decodes")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def encode_mp4(frames: np.ndarray, fps: float = 16.0) -> bytes:
    """Encode uint8 (T, H, W, 3) RGB frames as MP4 (mp4v) bytes; H and W must be even for most players."""
    frames = _check_frames(frames)
    fd, tmp = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        t, h, w, _ = frames.shape
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not writer.isOpened():
            raise RuntimeError("OpenCV could not open an MP4 writer (mp4v)")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def encode_gif(frames: np.ndarray, fps: float = 8.0) -> bytes:
    """Encode uint8 (T, H, W, 3) RGB frames as an animated GIF."""
    import io

    from PIL import Image

    frames = _check_frames(frames)
    buf = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
    )
    return buf.getvalue()


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically (temp file in the same folder, then rename): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the umask)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 16.0) -> Path:
    """Write frames to ``.mp4`` or ``.gif`` (by suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        data = encode_gif(frames, fps)
    elif suffix in (".mp4", ".m4v", ".mov"):
        data = encode_mp4(frames, fps)
    else:
        raise ValueError(f"unsupported video suffix {suffix!r}: use .mp4 or .gif")
    atomic_write_bytes(path, data)
    return path


TRACK_COLORS = [(255, 64, 64), (64, 160, 255), (255, 220, 0), (0, 230, 120), (255, 110, 230), (0, 230, 230)]
"""RGB colours for drawn tracks, cycled by track index."""


def draw_tracks(
    frames: np.ndarray, tracks: np.ndarray, visible: np.ndarray | None = None, scale: int = 1
) -> np.ndarray:
    """Frames with target trajectories drawn over them (for logs, GIFs and the demo).

    Args:
        frames: uint8 (T, H, W, 3) RGB; not modified.
        tracks: float (T, N, 2) target (x, y) in pixels of `frames`.
        visible: bool (T, N) or None; invisible targets are not drawn at that frame.
        scale: integer upscale (nearest) before drawing, so 64 x 64 toy frames stay readable.

    Returns:
        uint8 (T, H * scale, W * scale, 3): each frame shows every track's path up to that frame as a line and
        its current target as a ring, in the track's colour.
    """
    frames = _check_frames(frames)
    tracks = np.asarray(tracks, np.float64)
    t_len, n = tracks.shape[:2]
    if tracks.shape != (t_len, n, 2) or t_len != len(frames):
        raise ValueError(f"tracks must be ({len(frames)}, N, 2), got {tracks.shape}")
    vis = np.ones((t_len, n), bool) if visible is None else np.asarray(visible, bool)
    out = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2) if scale > 1 else frames.copy()
    pts = (tracks + 0.5) * scale - 0.5  # pixel centres map to pixel centres
    radius = max(2, scale + 1)
    for t in range(t_len):
        img = np.ascontiguousarray(out[t])
        for j in range(n):
            color = TRACK_COLORS[j % len(TRACK_COLORS)]
            path = np.round(pts[: t + 1, j][vis[: t + 1, j]]).astype(np.int32)
            if len(path) > 1:
                cv2.polylines(img, [path.reshape(-1, 1, 2)], False, color, 1, cv2.LINE_AA)
            if vis[t, j]:
                x, y = np.round(pts[t, j]).astype(int)
                cv2.circle(img, (int(x), int(y)), radius, color, 1, cv2.LINE_AA)
        out[t] = img
    return out
