"""Methods behind one generator interface: conditions in, uint8 video out.

A suite item is ``{"key", "image" uint8 (H, W, 3), "tracks" float (T, N, 2) pixels of the image, "visible" bool
(T, N), "prompt", "negative_prompt", "num_frames" T, ...}``. A method turns an item and a seed into uint8
(T', H', W', 3) frames (``generate``); ``stream`` yields the same frames one at a time (latency is measured on
it). Method specs (the ``spec`` field of an eval-config row):

- ``static``: the reference image repeated T times (the motion floor: no motion at all);
- ``warp``: the reference image warped along a dense displacement field interpolated from the target
  trajectories (Gaussian-weighted, per frame): a non-learned motion baseline;
- ``groundtruth``: the suite's real video (sanity row; the FID/FVD floor);
- ``videos:DIR``: another method's pre-generated outputs, ``DIR/<key>/seed<k>.mp4`` (or ``.gif``/``.npy``;
  ``DIR/<key>.mp4`` is accepted as a seed-independent output). A missing or unreadable file is skipped and
  counted, not fatal;
- ``pipeline:FOLDER``: an exported ardrag pipeline folder (AR or bidirectional, the folder says which), loaded
  with ``ardrag.ARDragPipeline.from_pretrained``; ``options`` in the row are passed to the pipeline call
  (e.g. a number of steps).

The benchmark never imports training code: only ``ardrag.pipeline`` (lazily) and ``ardrag.video``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np


class MissingVideo(FileNotFoundError):
    """A ``videos:DIR`` method has no (readable) output for an item and seed: skipped and counted."""


class Method:
    """Base generator. Subclasses implement ``generate``; ``stream`` defaults to yielding its frames, so a
    non-streaming method's first frame arrives only when the whole video is done (honest for latency)."""

    spec: str = ""
    deterministic: bool = False
    """True when the output does not depend on the seed (run once; interval 0 with n_seeds = 1)."""
    generates: bool = True
    """False for methods that only read videos (no latency)."""

    def generate(self, item: dict[str, Any], seed: int) -> np.ndarray:
        raise NotImplementedError

    def stream(self, item: dict[str, Any], seed: int) -> Iterator[np.ndarray]:
        yield from self.generate(item, seed)

    def identity(self) -> dict[str, Any]:
        """What the cached results depend on (spec, options, checkpoint fingerprint)."""
        return {"spec": self.spec}


class StaticMethod(Method):
    """Repeat the reference image for every frame."""

    spec, deterministic = "static", True

    def generate(self, item: dict[str, Any], seed: int) -> np.ndarray:
        return np.repeat(np.asarray(item["image"], np.uint8)[None], int(item["num_frames"]), axis=0)


def warp_image_along_tracks(
    image: np.ndarray,
    tracks: np.ndarray,
    visible: np.ndarray | None = None,
    radius: float | None = None,
    sigma: float | None = None,
) -> np.ndarray:
    """Warp ``image`` along sparse trajectories: uint8 (H, W, 3), (T, N, 2) pixels -> uint8 (T, H, W, 3).

    Frame t samples the image at p + D_t(p), where D_t is a weighted average of the displacements back to the
    start, ``tracks[0, n] - tracks[t, n]``, of the points visible at 0 and t, placed at their frame-t positions.
    A point's weight is 1 within ``radius`` px (default 10% of the diagonal: a rigid patch around the point, as
    a dragged object moves as a whole) and falls off as a Gaussian of width ``sigma`` px beyond (default 5%).
    Weights are normalised by max(1, sum), so a lone point's patch moves exactly with it and the field fades to
    0 (no motion) far from all points.
    """
    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    tracks = np.asarray(tracks, np.float32)
    visible = np.ones(tracks.shape[:2], bool) if visible is None else np.asarray(visible, bool)
    diag = float(np.hypot(h, w))
    radius = float(0.10 * diag if radius is None else radius)
    sigma = float(0.05 * diag if sigma is None else sigma)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    frames = [image]
    for t in range(1, tracks.shape[0]):
        ok = visible[0] & visible[t]
        if not ok.any():
            frames.append(image)
            continue
        pt = tracks[t, ok]  # (K, 2)
        d = tracks[0, ok] - pt  # displacement back to the source
        dist = np.sqrt((xs[None] - pt[:, 0, None, None]) ** 2 + (ys[None] - pt[:, 1, None, None]) ** 2)
        wgt = np.exp(-(np.maximum(dist - radius, 0.0) ** 2) / (2 * sigma**2))
        norm = np.maximum(wgt.sum(0), 1.0)
        fx = (wgt * d[:, 0, None, None]).sum(0) / norm
        fy = (wgt * d[:, 1, None, None]).sum(0) / norm
        frames.append(cv2.remap(image, xs + fx, ys + fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    return np.stack(frames)


class WarpMethod(Method):
    """Non-learned motion baseline: see :func:`warp_image_along_tracks`."""

    spec, deterministic = "warp", True

    def __init__(self, radius: float | None = None, sigma: float | None = None) -> None:
        self.radius, self.sigma = radius, sigma

    def generate(self, item: dict[str, Any], seed: int) -> np.ndarray:
        t = int(item["num_frames"])
        return warp_image_along_tracks(
            item["image"], item["tracks"][:t], item["visible"][:t], self.radius, self.sigma
        )

    def stream(self, item: dict[str, Any], seed: int) -> Iterator[np.ndarray]:
        # frame by frame, so time to first frame is that of the first frame only
        t = int(item["num_frames"])
        for i in range(t):
            yield warp_image_along_tracks(
                item["image"], item["tracks"][[0, i]], item["visible"][[0, i]], self.radius, self.sigma
            )[-1]

    def identity(self) -> dict[str, Any]:
        return {"spec": self.spec, "radius": self.radius, "sigma": self.sigma}


class GroundTruthMethod(Method):
    """The suite's real clip."""

    spec, deterministic, generates = "groundtruth", True, False

    def generate(self, item: dict[str, Any], seed: int) -> np.ndarray:
        if item.get("video") is None:
            raise ValueError(f"groundtruth: suite item {item['key']} has no ground-truth video")
        return np.asarray(item["video"], np.uint8)[: int(item["num_frames"])]


class VideoFolderMethod(Method):
    """Pre-generated videos ``DIR/<key>/seed<k>.{mp4,gif,npy}`` (or seed-independent ``DIR/<key>.mp4``)."""

    generates = False
    suffixes = (".mp4", ".gif", ".npy", ".avi", ".mov")

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"videos: folder {self.folder} does not exist")
        self.spec = f"videos:{self.folder}"

    def path_for(self, key: str, seed: int) -> Path | None:
        for suffix in self.suffixes:
            for p in (self.folder / key / f"seed{seed}{suffix}", self.folder / f"{key}{suffix}"):
                if p.is_file():
                    return p
        return None

    def generate(self, item: dict[str, Any], seed: int) -> np.ndarray:
        from ardrag.video import VideoReadError, read_video

        path = self.path_for(item["key"], seed)
        if path is None:
            raise MissingVideo(f"videos: no {self.folder}/{item['key']}/seed{seed}.mp4 (or .gif/.npy)")
        try:
            video = np.load(path, allow_pickle=False) if path.suffix == ".npy" else read_video(path)[0]
        except (VideoReadError, ValueError, OSError) as e:
            raise MissingVideo(f"videos: cannot read {path}: {e}") from e
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise MissingVideo(f"videos: {path} is not uint8 (T, H, W, 3) but {video.dtype} {video.shape}")
        return video

    def identity(self) -> dict[str, Any]:
        return {"spec": self.spec, "fingerprint": folder_fingerprint(self.folder)}


def folder_fingerprint(folder: str | Path) -> str:
    """Hash of the relative path and the bytes of every file under ``folder`` (or of one file).

    Keyed by content, not file times: re-exporting the same weights or copying a folder keeps the cached
    results; changing any byte invalidates them. Hidden files (``.name``: editor and temp files) are skipped.
    """
    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        rel = p.name if p == folder else p.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        h.update(f"{rel}\0".encode())
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\n")
    return h.hexdigest()[:16]


class PipelineMethod(Method):
    """An exported ardrag pipeline folder (``ARDragPipeline.from_pretrained``), AR or bidirectional.

    ``options`` whose name is a field of the pipeline's config (e.g. ``num_steps``, ``timesteps``,
    ``cache_frames``) override it -- e.g. the teacher with N steps is ``{timesteps: null, num_steps: N}``;
    any other option is passed to every pipeline call. The image and tracks are given in the item's pixels;
    the pipeline resizes to its own resolution. Tracks longer than ``pipe.num_frames`` (when the pipeline
    has that attribute) are trimmed.
    """

    def __init__(self, folder: str | Path, options: dict[str, Any] | None = None) -> None:
        import dataclasses

        from ardrag import ARDragPipeline  # lazy: pipeline code is only needed for this method

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"pipeline: folder {self.folder} does not exist")
        self.options = dict(options or {})
        self.pipe = ARDragPipeline.from_pretrained(str(self.folder))
        cfg = getattr(self.pipe, "config", None)
        fields = {f.name for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else set()
        overrides = {k: v for k, v in self.options.items() if k in fields}
        self.call_options = {k: v for k, v in self.options.items() if k not in fields}
        if overrides:
            self.pipe.config = dataclasses.replace(cfg, **overrides)
        self.spec = f"pipeline:{self.folder}"

    def _kwargs(self, fn: Any, item: dict[str, Any], seed: int) -> dict[str, Any]:
        kw = {"prompt": item.get("prompt", ""), "seed": seed, **self.call_options}
        try:
            if "negative_prompt" in inspect.signature(fn).parameters and item.get("negative_prompt"):
                kw["negative_prompt"] = item["negative_prompt"]
        except (TypeError, ValueError):
            pass
        return kw

    def _conditions(self, item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = min(int(item["num_frames"]), int(getattr(self.pipe, "num_frames", None) or 10**9))
        return (
            np.asarray(item["image"], np.uint8),
            np.asarray(item["tracks"])[:t],
            np.asarray(item["visible"])[:t],
        )

    def generate(self, item: dict[str, Any], seed: int) -> np.ndarray:
        image, tracks, visible = self._conditions(item)
        return np.asarray(self.pipe(image, tracks, visible, **self._kwargs(self.pipe.__call__, item, seed)))

    def stream(self, item: dict[str, Any], seed: int) -> Iterator[np.ndarray]:
        image, tracks, visible = self._conditions(item)
        yield from self.pipe.stream(image, tracks, visible, **self._kwargs(self.pipe.stream, item, seed))

    def identity(self) -> dict[str, Any]:
        return {"spec": self.spec, "options": self.options, "fingerprint": folder_fingerprint(self.folder)}


def build_method(spec: str, options: dict[str, Any] | None = None) -> Method:
    """Method from a spec string (see the module docstring); ``options`` go to the method's constructor
    (``warp``: ``radius``, ``sigma``) or, for ``pipeline:``, to every pipeline call."""
    options = dict(options or {})
    if spec == "static":
        return StaticMethod()
    if spec == "warp":
        return WarpMethod(**options)
    if spec == "groundtruth":
        return GroundTruthMethod()
    if spec.startswith("videos:"):
        return VideoFolderMethod(spec[len("videos:") :])
    if spec.startswith("pipeline:"):
        return PipelineMethod(spec[len("pipeline:") :], options)
    raise ValueError(
        f"unknown method spec {spec!r}: use static, warp, groundtruth, videos:DIR or pipeline:FOLDER"
    )


def method_key(method: Method, extra: dict[str, Any] | None = None) -> str:
    """Short stable hash of a method's identity (+ e.g. the metric config): the cache folder name."""
    blob = json.dumps({"method": method.identity(), "extra": extra or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
