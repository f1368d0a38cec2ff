"""Text encoders: UMT5 from a local folder at full scale, a fixed hashed-word embedding at toy scale.

Both map a list of prompts to (B, L, D) embeddings with zero rows past each prompt's length (Wan's convention,
so an empty prompt is all zeros: the null embedding used for the unconditional branch).
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn


class TextEncoder(nn.Module):
    dim: int
    max_length: int

    def encode(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


class HashTextEncoder(TextEncoder):
    """Toy-scale text: each lower-cased word maps through crc32 to a fixed random vector (no weights to train or
    ship; the backbone's learned text projection does the rest). Deterministic across runs and machines."""

    def __init__(self, dim: int = 64, max_length: int = 16, vocab_size: int = 4096, seed: int = 0) -> None:
        super().__init__()
        self.dim, self.max_length, self.vocab_size, self.seed = dim, max_length, vocab_size, seed
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn(vocab_size, dim, generator=g) / dim**0.5, persistent=False)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.max_length, self.dim, device=self.table.device)
        for i, prompt in enumerate(prompts):
            words = re.findall(r"[a-z0-9]+", prompt.lower())[: self.max_length]
            if words:
                ids = torch.tensor([zlib.crc32(w.encode()) % self.vocab_size for w in words])
                out[i, : len(words)] = self.table[ids.to(self.table.device)]
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "type": "hash",
            "dim": self.dim,
            "max_length": self.max_length,
            "vocab_size": self.vocab_size,
            "seed": self.seed,
        }


class UMT5TextEncoder(TextEncoder):
    """Wan2.1's UMT5-XXL encoder from a local folder (tokenizer + `UMT5EncoderModel`), 512 tokens, dim 4096."""

    def __init__(
        self, path: str | Path, max_length: int = 512, torch_dtype: torch.dtype = torch.bfloat16
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer, UMT5EncoderModel

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"no UMT5 text encoder at {path}: give a local folder with config.json, weights and the tokenizer "
                "(the 'text_encoder/' + 'tokenizer/' of Wan-AI/Wan2.1-T2V-1.3B-Diffusers, tokenizer files copied in)"
            )
        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = UMT5EncoderModel.from_pretrained(str(path), torch_dtype=torch_dtype).eval()
        self.dim = self.model.config.d_model
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        dev = next(self.model.parameters()).device
        ids, mask = tok.input_ids.to(dev), tok.attention_mask.to(dev)
        hidden = self.model(ids, mask).last_hidden_state.float()
        return hidden * mask[..., None].to(hidden.dtype)  # zero past each prompt's length

    def describe(self) -> dict[str, Any]:
        return {"type": "umt5", "path": self.path, "max_length": self.max_length}


def build_text_encoder(spec: dict[str, Any], base_dir: str | Path | None = None) -> TextEncoder:
    kind = spec.get("type")
    if kind == "hash":
        return HashTextEncoder(
            int(spec.get("dim", 64)),
            int(spec.get("max_length", 16)),
            int(spec.get("vocab_size", 4096)),
            int(spec.get("seed", 0)),
        )
    if kind == "umt5":
        p = Path(spec.get("path", ""))
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return UMT5TextEncoder(p, int(spec.get("max_length", 512)))
    raise ValueError(f"unknown text encoder type {kind!r}: use 'hash' or 'umt5'")
