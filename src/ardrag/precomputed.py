"""Precomputed codec latents and prompt embeddings in the shards (``ardrag-prepare --encode PIPELINE_CONFIG``).

Sample keys added to the shard schema (datamodules/shards.py) by ``--encode``:
    KEY.latents.npy        float32 (C, F, h, w): the codec's latents of the whole stored clip (KEY.mp4 decoded,
                           scaled to [-1, 1] as the datamodule does)
    KEY.text.npy           float32 (L', D): the prompt's embedding; the encoder's rows past L' are all zero and
                           not stored (padded back to ``text_length`` rows when batched)
    KEY.negative_text.npy  float32 (L', D): the negative prompt's, the same way
    KEY.json "encoded":    {"codec_probe": [...], "text_probe": [...], "text_length": L, "latent_shape": [C, F, h, w]}

The probes are the codec's latents of a fixed probe image and the text encoder's embedding of a fixed probe prompt
(64 numbers each): training compares them with its own encoders' (``check_encoders``) and refuses shards encoded
by other weights, whatever folder those were loaded from.

Used only where the batch's video is the whole stored clip at its stored size: the datamodule passes the arrays
through when its temporal crop starts at frame 0 and keeps every frame and it does not resize; otherwise the
training stage encodes the clip as usual (a causal video codec's latents of a crop are not a slice of the clip's).

Not stored: the trajectory latents. The datamodule draws 1..max_tracks of the stored tracks for every sample at
every step (and the teacher blanks the drags at random), so the heatmap video a step conditions on is not known
when the shards are written; the conditioner encodes it on the fly, with the reference latent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "PROBE_PROMPT",
    "encode_clip",
    "encoder_probes",
    "check_encoders",
    "trim_text",
    "pad_text",
    "precomputed_inputs",
]

PROBE_PROMPT = "a red square moves to the left"
PROBE_SIZE = 16
PROBE_TOLERANCE = 1e-3
"""Relative tolerance (of the probe's largest magnitude) for two encoders to count as the same weights."""


def _probe_image() -> torch.Tensor:
    """A fixed (1, 3, 1, 16, 16) image in [-1, 1]: smooth colour ramps (a one-frame video every codec encodes)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, PROBE_SIZE), torch.linspace(-1, 1, PROBE_SIZE), indexing="ij")
    img = torch.stack([torch.sin(3 * x), torch.cos(2 * y), x * y])
    return img[None, :, None].float()


@torch.no_grad()
def encoder_probes(codec: torch.nn.Module, text_encoder: torch.nn.Module) -> dict[str, list[float]]:
    """The first 64 numbers of the codec's latents of the probe image and of the probe prompt's embedding."""
    dev = next((p.device for p in codec.parameters()), torch.device("cpu"))
    z = codec.encode(_probe_image().to(dev)).float().flatten()[:64]
    e = text_encoder.encode([PROBE_PROMPT]).float().flatten()[:64]
    return {"codec_probe": z.cpu().tolist(), "text_probe": e.cpu().tolist()}


def _close(a: list[float], b: list[float]) -> bool:
    a_, b_ = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a_.shape != b_.shape:
        return False
    scale = max(float(np.abs(b_).max(initial=0.0)), 1e-6)
    return float(np.abs(a_ - b_).max(initial=0.0)) <= PROBE_TOLERANCE * scale


def check_encoders(encoded: dict[str, Any], codec: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
    """Raise ValueError unless the shard's probes match these encoders (checked once per encoder pair and probe:
    the probes that passed are remembered on the codec)."""
    checked = codec.__dict__.setdefault("_ardrag_probes_ok", set())
    key = (id(text_encoder), repr(encoded.get("codec_probe")) + repr(encoded.get("text_probe")))
    if key in checked:
        return
    mine = encoder_probes(codec, text_encoder)
    for name, what in (("codec_probe", "codec"), ("text_probe", "text encoder")):
        if not _close(encoded.get(name, []), mine[name]):
            raise ValueError(
                f"the shards' precomputed latents were made with another {what} than this model's (probe "
                f"mismatch): re-run ardrag-prepare --encode with this model's pipeline config, or prepare "
                f"without --encode"
            )
    checked.add(key)


@torch.no_grad()
def encode_clip(
    codec: torch.nn.Module,
    text_encoder: torch.nn.Module,
    video: np.ndarray,
    prompt: str,
    negative_prompt: str,
) -> dict[str, np.ndarray]:
    """uint8 (T, H, W, 3) clip and its prompts -> the arrays of the sample keys (see the module docstring)."""
    dev = next((p.device for p in codec.parameters()), torch.device("cpu"))
    x = torch.from_numpy(np.ascontiguousarray(video)).permute(3, 0, 1, 2)[None].float().div_(127.5).sub_(1.0)
    z = codec.encode(x.to(dev)).float()[0].cpu().numpy()
    ctx = text_encoder.encode([prompt, negative_prompt]).float().cpu().numpy()
    return {"latents.npy": z, "text.npy": trim_text(ctx[0]), "negative_text.npy": trim_text(ctx[1])}


def trim_text(emb: np.ndarray) -> np.ndarray:
    """(L, D) -> (L', D) without the trailing all-zero rows (the padding past the prompt's tokens)."""
    nz = np.flatnonzero(np.abs(emb).sum(axis=1) > 0)
    return np.ascontiguousarray(emb[: (int(nz[-1]) + 1) if nz.size else 0], dtype=np.float32)


def pad_text(embs: list[np.ndarray], length: int) -> torch.Tensor:
    """Trimmed (L', D) embeddings -> float32 (B, length, D), zero rows after each."""
    dim = max((e.shape[1] for e in embs if e.ndim == 2 and e.shape[0]), default=embs[0].shape[-1])
    out = torch.zeros(len(embs), length, dim)
    for i, e in enumerate(embs):
        if e.shape[0] > length:
            raise ValueError(f"a stored text embedding has {e.shape[0]} rows, more than text_length {length}")
        out[i, : e.shape[0]] = torch.from_numpy(e)
    return out


def precomputed_inputs(
    batch: dict[str, Any], codec: torch.nn.Module, text_encoder: torch.nn.Module, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The batch's stored (latents, text, negative_text) on `device` after checking they come from these
    encoders; None when the batch carries none (the stage then encodes the clip and prompts itself)."""
    if "latents" not in batch:
        return None
    for encoded in batch["encoded"]:
        check_encoders(encoded, codec, text_encoder)
    return (
        batch["latents"].to(device),
        batch["text"].to(device),
        batch["negative_text"].to(device),
    )
