"""Frame-level attention masks and the rolling per-layer KV cache of frame-wise autoregressive generation.

Everything here works at the granularity of latent frames: a frame is `tokens_per_frame` consecutive tokens.
The masked full-sequence forward and the cached forward use the same rule (`frame_visible`), which is what makes
cached generation equal to the masked forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.attention.flex_attention import BlockMask


@dataclass
class CausalConfig:
    """How frames see each other in causal (student) mode."""

    chunk_size: int = 1
    """Latent frames generated together; frames inside a chunk attend to each other (1: frame-wise, AR-Drag)."""
    cache_frames: int = 7
    """Past latent frames a frame may attend to (the KV cache window, sinks included)."""
    sink_frames: int = 0
    """The first `sink_frames` frames stay in the window forever (attention sink); must be < cache_frames."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.cache_frames < 1:
            raise ValueError(f"cache_frames must be >= 1, got {self.cache_frames}")
        if not 0 <= self.sink_frames < self.cache_frames:
            raise ValueError(f"sink_frames must be in [0, cache_frames), got {self.sink_frames}")


def frame_visible(q_pos: torch.Tensor, k_pos: torch.Tensor, cfg: CausalConfig | None) -> torch.Tensor:
    """Boolean (Fq, Fk): may a query frame at absolute position q_pos see a key frame at k_pos.

    `cfg=None` is bidirectional attention. Causal: same chunk, or a past frame inside the window (with sinks).
    """
    if cfg is None:
        return torch.ones(len(q_pos), len(k_pos), dtype=torch.bool, device=q_pos.device)
    q_chunk = torch.div(q_pos, cfg.chunk_size, rounding_mode="floor")[:, None]
    k_chunk = torch.div(k_pos, cfg.chunk_size, rounding_mode="floor")[None, :]
    q_start = q_chunk * cfg.chunk_size
    k = k_pos[None, :]
    past = k < q_start
    in_window = (k >= q_start - (cfg.cache_frames - cfg.sink_frames)) | (k < cfg.sink_frames)
    return (q_chunk == k_chunk) | (past & in_window)


def causal_frame_mask(num_frames: int, cfg: CausalConfig, device: torch.device | None = None) -> torch.Tensor:
    """(F, F) block-causal frame mask for the plain training layout (all frames noisy or all clean)."""
    pos = torch.arange(num_frames, device=device)
    return frame_visible(pos, pos, cfg)


def teacher_forcing_frame_mask(
    num_frames: int, cfg: CausalConfig, device: torch.device | None = None
) -> torch.Tensor:
    """(2F, 2F) frame mask for the teacher-forcing layout [clean frames | noisy frames].

    Clean frame j sees clean frames by the causal rule (exactly what filled the KV cache at inference); noisy frame
    i sees its own chunk among the noisy frames and the clean past frames of the window (what the cache holds
    while frame i is denoised). Positions (for RoPE) of clean and noisy frame i are both i.
    """
    pos = torch.arange(num_frames, device=device)
    vis = frame_visible(pos, pos, cfg)
    chunk = torch.div(pos, cfg.chunk_size, rounding_mode="floor")
    same_chunk = chunk[:, None] == chunk[None, :]
    mask = torch.zeros(2 * num_frames, 2 * num_frames, dtype=torch.bool, device=device)
    mask[:num_frames, :num_frames] = vis  # clean -> clean
    mask[num_frames:, :num_frames] = vis & ~same_chunk  # noisy -> clean past (window)
    mask[num_frames:, num_frames:] = same_chunk  # noisy -> own chunk
    return mask


def expand_frame_mask(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """(Fq, Fk) frame mask -> (Fq*T, Fk*T) token mask for scaled_dot_product_attention."""
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def frame_block_mask(frame_mask: torch.Tensor, tokens_per_frame: int, block_size: int = 128) -> BlockMask:
    """(Fq, Fk) frame mask -> FlexAttention BlockMask over (Fq*T, Fk*T) tokens, without any token-level mask.

    A (block_size x block_size) tile of the token grid spans a rectangle of frames; it is skipped when no frame
    pair in it is visible, run without a mask when all are ("full"), and masked by `mask_mod` otherwise. Rectangle
    counts come from a summed-area table of the frame mask, so memory is O(blocks^2), not O(tokens^2).
    """
    dev, t = frame_mask.device, tokens_per_frame
    fq, fk = frame_mask.shape

    def frame_span(n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:  # first and last frame of each tile
        start = torch.arange(0, n_tokens, block_size, device=dev)
        end = (start + block_size).clamp(max=n_tokens) - 1
        return start // t, end // t

    (q0, q1), (k0, k1) = frame_span(fq * t), frame_span(fk * t)
    table = torch.zeros(fq + 1, fk + 1, dtype=torch.int64, device=dev)
    table[1:, 1:] = frame_mask.long().cumsum(0).cumsum(1)
    visible = (
        table[q1 + 1][:, k1 + 1] - table[q0][:, k1 + 1] - table[q1 + 1][:, k0] + table[q0][:, k0]
    )  # (q tiles, kv tiles): visible frame pairs in each tile's rectangle
    area = (q1 - q0 + 1)[:, None] * (k1 - k0 + 1)[None, :]
    full = visible == area
    partial = (visible > 0) & ~full

    def listed(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # counts and kv-tile indices, first
        order = torch.argsort((~tiles).to(torch.int8), dim=-1, stable=True)
        return tiles.sum(-1).to(torch.int32)[None, None], order.to(torch.int32)[None, None]

    def mask_mod(b, h, q_idx, kv_idx):
        return frame_mask[q_idx // t, kv_idx // t]

    num, idx = listed(partial)
    full_num, full_idx = listed(full)
    return BlockMask.from_kv_blocks(
        num, idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(fq * t, fk * t)
    )


@dataclass(frozen=True)
class FramePlan:
    """Masked attention as plain SDPA calls: query frames grouped into runs with the same visible key frames.

    groups: (first query frame, end query frame, ((first key frame, end key frame), ...)) per run, ends exclusive;
    a run's keys are the listed spans of key frames, every one of them visible to every query frame of the run.
    """

    tokens_per_frame: int
    groups: tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]


def frame_plan(frame_mask: torch.Tensor, tokens_per_frame: int) -> FramePlan:
    """(Fq, Fk) frame mask -> the `FramePlan` that `frame_attention` runs (no token-level mask at all)."""
    rows = frame_mask.bool().cpu().tolist()
    groups = []
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and rows[j] == rows[i]:
            j += 1
        spans, start = [], None
        for c, seen in enumerate([*rows[i], False]):
            if seen and start is None:
                start = c
            elif not seen and start is not None:
                spans.append((start, c))
                start = None
        if not spans:
            raise ValueError(f"query frame {i} sees no key frame: its attention is undefined")
        groups.append((i, j, tuple(spans)))
        i = j
    return FramePlan(tokens_per_frame, tuple(groups))


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: FramePlan) -> torch.Tensor:
    """SDPA of q (B, H, Fq*T, D) over k, v (B, H, Fk*T, D) as the plan's frame mask allows: one unmasked call per
    run of query frames over only the keys they see. Equal to SDPA with the dense token mask (float32 rounding),
    without building it, and without computing the masked-out scores; one call per run costs Python overhead, so
    it pays where the mask hides much of a long sequence (results/training/attention_speed.md)."""
    t = plan.tokens_per_frame
    out = []
    for q0, q1, spans in plan.groups:
        if len(spans) == 1:
            ((a, b),) = spans
            kk, vv = k[:, :, a * t : b * t], v[:, :, a * t : b * t]
        else:
            kk = torch.cat([k[:, :, a * t : b * t] for a, b in spans], dim=2)
            vv = torch.cat([v[:, :, a * t : b * t] for a, b in spans], dim=2)
        out.append(torch.nn.functional.scaled_dot_product_attention(q[:, :, q0 * t : q1 * t], kk, vv))
    return out[0] if len(out) == 1 else torch.cat(out, dim=2)


@dataclass
class LayerKV:
    """Rotated keys and values of cached frames for one layer: (B, heads, frames*tokens, head_dim)."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass
class KVCache:
    """Per-layer rolling KV cache over latent frames.

    Holds the keys/values (RoPE already applied at their absolute positions) of clean frames written with
    `write=True` forwards. `frames` lists the absolute frame index of each cached frame; frames that can never be
    visible again (outside window and not sinks) are evicted on write.
    """

    cfg: CausalConfig
    tokens_per_frame: int
    layers: list[LayerKV | None] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, num_layers: int, cfg: CausalConfig, tokens_per_frame: int) -> KVCache:
        return cls(cfg=cfg, tokens_per_frame=tokens_per_frame, layers=[None] * num_layers, frames=[])

    @property
    def next_frame(self) -> int:
        return self.frames[-1] + 1 if self.frames else 0

    def visible_index(self, chunk_start: int) -> list[int]:
        """Positions inside the cache (not absolute) of the frames visible to a chunk starting at chunk_start.

        The same rule as the masked forward (`frame_visible`), so cached and masked generation agree.
        """
        if not self.frames:
            return []
        vis = frame_visible(torch.tensor([chunk_start]), torch.tensor(self.frames), self.cfg)[0]
        return vis.nonzero().flatten().tolist()

    def _select(self, kv: LayerKV, idx: list[int]) -> LayerKV:
        """Keys/values of the cached frames at cache positions `idx`."""
        t = self.tokens_per_frame
        tok = torch.cat([torch.arange(i * t, (i + 1) * t) for i in idx]).to(kv.k.device)
        return LayerKV(kv.k.index_select(2, tok), kv.v.index_select(2, tok))

    def gather(self, layer: int, chunk_start: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Cached (k, v) of `layer` visible to the chunk starting at `chunk_start`, or None when empty."""
        kv = self.layers[layer]
        if kv is None:
            return None
        idx = self.visible_index(chunk_start)
        if not idx:
            return None
        if len(idx) == len(self.frames):
            return kv.k, kv.v
        sel = self._select(kv, idx)
        return sel.k, sel.v

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append new frames' keys/values for one layer (bookkeeping of `frames` is done by `commit`)."""
        kv = self.layers[layer]
        self.layers[layer] = (
            LayerKV(k, v) if kv is None else LayerKV(torch.cat([kv.k, k], 2), torch.cat([kv.v, v], 2))
        )

    def commit(self, new_frames: list[int]) -> None:
        """Record the frames just appended to every layer, then evict frames no future chunk can see."""
        self.frames.extend(new_frames)
        # a future chunk may start later than the next frame only by generating further frames, which only moves
        # the window forward, so frames invisible to the next chunk are never visible again.
        keep = self.visible_index(self.frames[-1] + 1)
        if len(keep) == len(self.frames):
            return
        self.layers = [None if kv is None else self._select(kv, keep) for kv in self.layers]
        self.frames = [self.frames[i] for i in keep]

    def num_cached_frames(self) -> int:
        return len(self.frames)
