"""Codecs between pixel videos and latents, behind one interface.

Videos are float (B, 3, T, H, W) in [-1, 1]; latents are (B, C, F, h, w). `PixelCodec` (space-to-depth, an exact
inverse) and `PcaCodec` (space-to-depth, then the top principal components of the patches: a linear stand-in for a
VAE's compression) serve the toy scale; `WanVAECodec` wraps diffusers' `AutoencoderKLWan` (4x temporal, 8x spatial, 16
channels, normalised with the config's latents_mean/std) loaded from a local folder. Both decode frame by frame
for streaming: `decoder = codec.stream_decoder(); decoder(latent_chunk)` returns the new pixel frames.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

StreamDecoder = Callable[[torch.Tensor], torch.Tensor]


class Codec(nn.Module):
    """Interface: encode/decode videos, frame-count mapping, streaming decode, an exportable description."""

    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    def num_latent_frames(self, num_frames: int) -> int:
        raise NotImplementedError

    def num_frames(self, num_latent_frames: int) -> int:
        raise NotImplementedError

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stream_decoder(self) -> StreamDecoder:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able description written into exported pipeline folders (see `build_codec`)."""
        raise NotImplementedError

    def check_size(self, height: int, width: int, patch: int = 2) -> None:
        m = self.spatial_factor * patch
        if height % m or width % m:
            raise ValueError(
                f"height and width must be multiples of {m} for this codec, got {height}x{width}"
            )


class PixelCodec(Codec):
    """Space-to-depth: each latent pixel holds a factor x factor RGB patch. Exact inverse; 1 latent per frame."""

    def __init__(self, factor: int = 4) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = factor
        self.latent_channels = 3 * factor * factor
        self.spatial_factor = factor
        self.temporal_factor = 1

    def num_latent_frames(self, num_frames: int) -> int:
        return num_frames

    def num_frames(self, num_latent_frames: int) -> int:
        return num_latent_frames

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        x = video.transpose(1, 2).reshape(b * t, c, h, w)
        z = F.pixel_unshuffle(x, self.factor)
        return z.reshape(b, t, *z.shape[1:]).transpose(1, 2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        z = latents.transpose(1, 2).reshape(b * f, c, h, w)
        x = F.pixel_shuffle(z, self.factor)
        return x.reshape(b, f, *x.shape[1:]).transpose(1, 2)

    def stream_decoder(self) -> StreamDecoder:
        return self.decode

    def describe(self) -> dict[str, Any]:
        return {"type": "pixel", "factor": self.factor}


class PcaCodec(PixelCodec):
    """Space-to-depth, then an orthonormal projection of each factor x factor RGB patch (3 f^2 values) onto its top
    `channels` principal components (fit on toy frames by `fit_pca_codec`). Decoding is the projection back.

    Why the toy scale uses it: a pixel codec hands every 2 x 2 latent patch token 4 x 48 = 192 raw values, about as
    many as the toy transformer is wide (256), while Wan's VAE gives a 1536-wide token 64 values; a token that must
    carry the noisy patch, the reference patch and the trajectory patch at once then cannot (README "Method notes").
    With 12 components a token gets 48 values per stream, and frames decode at about 32 dB PSNR.
    The basis is orthonormal, so latent noise is white pixel noise restricted to the kept subspace, as with
    `PixelCodec`; latents are not whitened.
    """

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, factor: int = 4) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        basis = torch.as_tensor(basis, dtype=torch.float32)  # (channels, 3 f^2), rows orthonormal
        d = 3 * factor * factor
        if factor < 1 or mean.numel() != d or basis.ndim != 2 or basis.shape[1] != d or not basis.shape[0]:
            raise ValueError(
                f"a pca codec with factor {factor} needs a mean of {d} values and a (channels, {d}) basis, "
                f"got {mean.numel()} and {tuple(basis.shape)}"
            )
        gram = basis @ basis.T
        if not torch.allclose(gram, torch.eye(len(basis)), atol=1e-4):
            raise ValueError("pca codec basis rows must be orthonormal")
        super().__init__(factor)  # space-to-depth and the frame mapping
        self.latent_channels = basis.shape[0]
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        x = super().encode(video.float()) - self.mean.float().view(1, -1, 1, 1, 1)
        return torch.einsum("bcfhw,kc->bkfhw", x, self.basis.float())

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("bkfhw,kc->bcfhw", latents.float(), self.basis.float())
        return super().decode(x + self.mean.float().view(1, -1, 1, 1, 1))

    def describe(self) -> dict[str, Any]:
        return {
            "type": "pca",
            "factor": self.factor,
            "mean": [round(float(v), 6) for v in self.mean],
            "basis": [[round(float(v), 6) for v in row] for row in self.basis],
        }


def fit_pca_codec(frames: torch.Tensor, factor: int = 4, channels: int = 12) -> PcaCodec:
    """Fit a `PcaCodec` on frames float (N, 3, H, W) in [-1, 1]: mean patch and the top `channels` eigenvectors of
    the patch covariance (float64), each signed so its largest-magnitude entry is positive (the same basis on every
    machine up to rounding). The basis is re-orthonormalised after rounding to 6 decimals, as `describe` stores it."""
    d = 3 * factor * factor
    if not 1 <= channels <= d:
        raise ValueError(f"channels must be in 1..{d} for factor {factor}, got {channels}")
    patches = F.pixel_unshuffle(frames.float(), factor).permute(0, 2, 3, 1).reshape(-1, d).double()
    mean = patches.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((patches - mean).T))
    basis = evecs.flip(1)[:, :channels].T  # (channels, d), largest variance first
    idx = basis.abs().argmax(1)
    basis = basis * torch.sign(basis[torch.arange(channels), idx])[:, None]
    basis = torch.linalg.qr(basis.round(decimals=6).T).Q.T  # orthonormal again after rounding
    basis = basis * torch.sign(basis[torch.arange(channels), idx])[:, None]
    return PcaCodec(mean.round(decimals=6).float(), basis.float(), factor)


class WanVAECodec(Codec):
    """Wan2.1 VAE (causal 3D conv, 1 + 4k frames <-> 1 + k latent frames) from a local diffusers folder."""

    def __init__(self, vae: nn.Module, path: str | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.path = path
        cfg = vae.config
        self.latent_channels = cfg.z_dim
        self.spatial_factor = 2 ** len(cfg.temperal_downsample)
        self.temporal_factor = 2 ** sum(cfg.temperal_downsample)
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_std", std, persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32) -> WanVAECodec:
        from diffusers import AutoencoderKLWan

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"no Wan VAE at {path}: give a local diffusers folder with config.json and weights "
                "(e.g. the 'vae/' folder of Wan-AI/Wan2.1-T2V-1.3B-Diffusers); nothing is downloaded at run time"
            )
        return cls(AutoencoderKLWan.from_pretrained(str(path), torch_dtype=torch_dtype), str(path))

    def num_latent_frames(self, num_frames: int) -> int:
        if (num_frames - 1) % self.temporal_factor:
            raise ValueError(f"the Wan VAE needs 1 + {self.temporal_factor}k frames, got {num_frames}")
        return (num_frames - 1) // self.temporal_factor + 1

    def num_frames(self, num_latent_frames: int) -> int:
        return (num_latent_frames - 1) * self.temporal_factor + 1

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z.float() - self.latents_mean) / self.latents_std

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self.latents_std + self.latents_mean

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(video.to(dtype)).latent_dist
        return self._normalise(posterior.mode())

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(self._denormalise(latents).to(dtype)).sample.float()

    def stream_decoder(self) -> StreamDecoder:
        """Decode latent frames as they arrive, keeping the causal decoder's feature cache between calls."""
        vae = self.vae
        feat_cache: list[Any] = [None] * vae._cached_conv_counts["decoder"]
        state = {"first": True}
        dtype = next(vae.parameters()).dtype

        def decode_chunk(latents: torch.Tensor) -> torch.Tensor:
            x = vae.post_quant_conv(self._denormalise(latents).to(dtype))
            outs = []
            for i in range(x.shape[2]):
                idx = [0]
                out = vae.decoder(
                    x[:, :, i : i + 1], feat_cache=feat_cache, feat_idx=idx, first_chunk=state["first"]
                )
                state["first"] = False
                outs.append(out)
            return torch.cat(outs, dim=2).clamp(-1, 1).float()

        return decode_chunk

    def describe(self) -> dict[str, Any]:
        return {"type": "wan_vae", "path": self.path}


def build_codec(spec: dict[str, Any], base_dir: str | Path | None = None) -> Codec:
    """Codec from its `describe()` dict; relative paths resolve against `base_dir` (the exported folder)."""
    kind = spec.get("type")
    if kind == "pixel":
        return PixelCodec(int(spec.get("factor", 4)))
    if kind == "pca":
        if "mean" not in spec or "basis" not in spec:
            raise ValueError("codec 'pca' needs its 'mean' and 'basis' (written by scripts/fit_toy_codec.py)")
        return PcaCodec(torch.tensor(spec["mean"]), torch.tensor(spec["basis"]), int(spec.get("factor", 4)))
    if kind == "wan_vae":
        path = spec.get("path")
        if not path:
            raise ValueError("codec 'wan_vae' needs a 'path' to a local diffusers AutoencoderKLWan folder")
        p = Path(path)
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return WanVAECodec.from_pretrained(p)
    raise ValueError(f"unknown codec type {kind!r}: use 'pixel', 'pca' or 'wan_vae'")
