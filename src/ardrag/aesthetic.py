"""Aesthetic score, used by the RL reward (``ardrag.training.rewards``) and the benchmark
(``benchmark.metrics.aesthetic``): the LAION aesthetic predictor (a linear or MLP head on L2-normalised CLIP ViT-L/14 image
embeddings), available only when the user gives local weights.

Nothing is downloaded: ``clip`` is a local folder loadable by transformers' ``CLIPVisionModelWithProjection``
(e.g. a saved ``openai/clip-vit-large-patch14``), ``head`` a local weights file of the predictor
(``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or ``.safetensors``), e.g. LAION's
``sac+logos+ava1-l14-linearMSE.pth``. Without them the metric is *absent* (NA in tables, with a note),
never 0. The score is LAION's 1-10 scale, averaged over the sampled frames of a video.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

# OpenAI CLIP preprocessing constants (the same as CLIPImageProcessor's defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class AestheticHead(nn.Module):
    """A chain of Linear layers read from a predictor state dict (LAION's MLP has no activations in between;
    its Dropouts are identity at eval time, so the chain of Linears is the exact eval-mode function)."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__()
        weights = [k for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 2]
        if not weights:
            raise ValueError("aesthetic head: no 2-D '*weight' tensors in the weights file")

        def order(key: str) -> tuple[int, ...]:
            return tuple(int(x) for x in re.findall(r"\d+", key))

        layers = []
        for key in sorted(weights, key=order):
            w = state_dict[key]
            lin = nn.Linear(w.shape[1], w.shape[0], bias=key[: -len("weight")] + "bias" in state_dict)
            with torch.no_grad():
                lin.weight.copy_(w)
                if lin.bias is not None:
                    lin.bias.copy_(state_dict[key[: -len("weight")] + "bias"])
            layers.append(lin)
        for a, b in zip(layers[:-1], layers[1:]):
            if a.out_features != b.in_features:
                raise ValueError(f"aesthetic head: layer shapes do not chain ({a} -> {b})")
        if layers[-1].out_features != 1:
            raise ValueError(f"aesthetic head must end in one output, got {layers[-1].out_features}")
        self.layers = nn.Sequential(*layers)
        self.in_features = layers[0].in_features

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D) CLIP image embeddings (any norm) -> (B,) scores; embeddings are L2-normalised first."""
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.layers(emb).squeeze(-1)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"aesthetic head {path}: expected a state dict, got {type(sd).__name__}")
    return sd


class AestheticScorer:
    """CLIP vision tower + LAION head. ``scorer(frames uint8 (N, H, W, 3)) -> float32 (N,)`` scores (1-10)."""

    def __init__(self, clip: str | Path, head: str | Path, device: str = "cpu", batch_size: int = 16) -> None:
        from transformers import CLIPVisionModelWithProjection

        clip, head = Path(clip), Path(head)
        if not clip.is_dir():
            raise FileNotFoundError(f"aesthetic: CLIP folder {clip} does not exist (give a local folder)")
        if not head.is_file():
            raise FileNotFoundError(f"aesthetic: predictor weights {head} do not exist")
        self.model = CLIPVisionModelWithProjection.from_pretrained(str(clip), local_files_only=True)
        self.model.eval().to(device)
        self.head = AestheticHead(_load_state_dict(head)).eval().to(device)
        proj = self.model.config.projection_dim
        if self.head.in_features != proj:
            raise ValueError(
                f"aesthetic head expects {self.head.in_features}-d embeddings, CLIP gives {proj}"
            )
        self.image_size = int(self.model.config.image_size)
        self.device, self.batch_size = device, batch_size
        self.source = {"clip": str(clip), "head": str(head)}

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, S, S): shortest side to S (bicubic), centre crop, CLIP norm."""
        s = self.image_size
        out = []
        for f in frames:
            h, w = f.shape[:2]
            k = s / min(h, w)
            nh, nw = max(s, round(h * k)), max(s, round(w * k))
            r = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_CUBIC)
            top, left = (nh - s) // 2, (nw - s) // 2
            out.append(r[top : top + s, left : left + s])
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def embed(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> (N, D) CLIP image embeddings (projected, not normalised)."""
        embs = []
        for i in range(0, len(frames), self.batch_size):
            x = self.preprocess(frames[i : i + self.batch_size]).to(self.device)
            embs.append(self.model(pixel_values=x).image_embeds.float().cpu())
        return torch.cat(embs)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.head(self.embed(frames).to(self.device)).float().cpu().numpy()


def load_aesthetic(config: dict[str, Any] | None) -> AestheticScorer | None:
    """Scorer from ``{"clip": DIR, "head": FILE}``; None (metric absent) when either is not given."""
    config = config or {}
    if not config.get("clip") or not config.get("head"):
        return None
    return AestheticScorer(config["clip"], config["head"], device=config.get("device", "cpu"))


def aesthetic_score(
    video: np.ndarray, scorer: AestheticScorer | None, frame_stride: int = 1
) -> dict[str, Any]:
    """Mean LAION aesthetic score of every ``frame_stride``-th frame of uint8 (T, H, W, 3) ``video``.

    With no scorer the value is None (absent), never 0.
    """
    video = np.asarray(video)
    out: dict[str, Any] = {"frames": int(video.shape[0]), "resolution": list(video.shape[1:3])}
    if scorer is None:
        return {**out, "value": None, "note": "aesthetic: no local CLIP + LAION head given; column absent"}
    sampled = video[::frame_stride]
    return {**out, "value": float(scorer(sampled).mean()), "n_scored": int(len(sampled))}
