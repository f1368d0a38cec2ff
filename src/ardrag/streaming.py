# Over 500 lines: both engines share the per-stream constants and the ring-buffer cache built here.
"""Inference engines: the frame-wise rollout and the bidirectional sampler with per-stream constants precomputed,
a preallocated ring-buffer KV cache and optionally a `torch.compile`d forward.

They compute what `sampling.iter_rollout` (cached mode, `cache_update='full_denoise'`, no SDE or gradient steps) and
`sampling.sample_bidirectional` compute, to float32 rounding (tests/test_streaming.py), with less work per frame:
  - constant per stream: the text context's cross-attention keys/values of every layer, the timestep embeddings and
    adaLN modulations of the schedule's few timesteps, RoPE tables; constant per chunk: the condition embedding;
  - the KV cache is one preallocated buffer per layer: `cache_frames` ring slots plus a tail for the chunk being
    run. A chunk's keys/values go into the tail, attention runs over the whole buffer under an additive mask (no
    concatenation, one shape for every frame of a stream), and a written chunk is copied into the ring slots of
    the frames it evicts. Slot order does not matter to attention (RoPE is applied before caching);
  - a chunk's cache write (its clean latents at `context_timestep`) runs in the same forward as the first
    denoising step of the next chunk: 2c query frames instead of two sequential forwards of c frames. The write
    rows see what the write forward saw; the next chunk's rows see the written frames and not the ones they evict;
  - the transformer forward (patch embedding, all blocks, output head) runs as one module whose weights are
    buffers and whose per-layer inputs (modulations, cache buffers, context keys/values) come stacked along a
    layer dimension. `torch.compile` builds one graph per input shape for all layers together (no per-layer
    recompiles), with inductor's `freezing` (weights as constants: the CPU linears run on pre-packed weights) and
    its C++ wrapper. Shapes per stream: c query frames over their own keys (the first chunk: the empty ring is not
    attended), c over the buffer (the later steps) and 2c (write + first step); a partial last chunk is padded to
    c frames with masked keys;
  - kept per model for the next stream: the ring buffers of a finished stream (the next first frame neither
    allocates nor zero-fills its cache) and the context keys/values of the last few prompts.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ardrag.models.causal_wan import CausalWanTransformer, _apply_rotary
from ardrag.sampling import (
    NUM_TRAIN_TIMESTEPS,
    Conditions,
    FlowSchedule,
    RolloutConfig,
    context_frames,
    ode_step,
)

_NEG = float("-inf")


@dataclass(frozen=True)
class _BlockWeights:
    """One block's tensors in the order `_block` takes them (self-attention q, k, v fused into one matrix)."""

    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    norm_q: torch.Tensor
    norm_k: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    norm2_w: torch.Tensor | None
    norm2_b: torch.Tensor | None
    cq_w: torch.Tensor
    cq_b: torch.Tensor
    cnorm_q: torch.Tensor
    cout_w: torch.Tensor
    cout_b: torch.Tensor
    ff1_w: torch.Tensor
    ff1_b: torch.Tensor
    ff2_w: torch.Tensor
    ff2_b: torch.Tensor


def _block_weights(block: torch.nn.Module) -> _BlockWeights:
    a1, a2 = block.attn1, block.attn2
    norm2 = block.norm2 if isinstance(block.norm2, torch.nn.LayerNorm) else None
    return _BlockWeights(
        torch.cat([a1.to_q.weight, a1.to_k.weight, a1.to_v.weight]).detach(),
        torch.cat([a1.to_q.bias, a1.to_k.bias, a1.to_v.bias]).detach(),
        a1.norm_q.weight.detach(),
        a1.norm_k.weight.detach(),
        a1.to_out[0].weight.detach(),
        a1.to_out[0].bias.detach(),
        None if norm2 is None or norm2.weight is None else norm2.weight.detach(),
        None if norm2 is None or norm2.bias is None else norm2.bias.detach(),
        a2.to_q.weight.detach(),
        a2.to_q.bias.detach(),
        a2.norm_q.weight.detach(),
        a2.to_out[0].weight.detach(),
        a2.to_out[0].bias.detach(),
        block.ffn.net[0].proj.weight.detach(),
        block.ffn.net[0].proj.bias.detach(),
        block.ffn.net[2].weight.detach(),
        block.ffn.net[2].bias.detach(),
    )


def _block(
    w: _BlockWeights,
    x: torch.Tensor,
    mod: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kbuf: torch.Tensor | None,
    vbuf: torch.Tensor | None,
    mask: torch.Tensor | None,
    ctx_k: torch.Tensor,
    ctx_v: torch.Tensor,
    heads: int,
    eps: float,
    cross_norm: bool,
) -> torch.Tensor:
    """`CausalWanBlock.forward` as a function of the block's tensors. x (B, n, D) frame-major tokens; mod (1 or B,
    f, 6, D) float32 = scale_shift_table + timestep projection; kbuf, vbuf (B, H, S + n, Dh): the cache buffer whose
    last n slots receive this call's rotated keys/values before attention over all S + n under `mask` (additive,
    broadcastable to (B, H, n, S + n)); None: attention over this call's own tokens only (bidirectional).
    ctx_k, ctx_v (B, H, L, Dh): the cross-attention keys/values of the context (constant per stream)."""
    b, n, d = x.shape
    f = mod.shape[1]
    tpf = n // f
    shift, scale, gate, c_shift, c_scale, c_gate = mod.unsqueeze(3).unbind(2)  # (., f, 1, D)
    xf = x.view(b, f, tpf, d)
    # 1. self-attention over the cache buffer (or the tokens themselves)
    h = (F.layer_norm(xf.float(), (d,), eps=eps) * (1 + scale) + shift).to(x.dtype).view(b, n, d)
    q, k, v = F.linear(h, w.qkv_w, w.qkv_b).split(d, dim=-1)
    q = F.rms_norm(q, (d,), w.norm_q, eps).unflatten(2, (heads, -1))
    k = F.rms_norm(k, (d,), w.norm_k, eps).unflatten(2, (heads, -1))
    q = _apply_rotary(q, cos, sin).transpose(1, 2)
    k = _apply_rotary(k, cos, sin).transpose(1, 2)
    v = v.unflatten(2, (heads, -1)).transpose(1, 2)
    if kbuf is not None:
        s = kbuf.shape[2] - n
        kbuf[:, :, s:] = k
        vbuf[:, :, s:] = v
        k, v = kbuf, vbuf
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    a = F.linear(a.transpose(1, 2).flatten(2, 3).to(x.dtype), w.out_w, w.out_b)
    x = (xf.float() + a.view(b, f, tpf, d) * gate).to(x.dtype).view(b, n, d)
    # 2. cross-attention to the context
    h = F.layer_norm(x.float(), (d,), w.norm2_w, w.norm2_b, eps).to(x.dtype) if cross_norm else x
    cq = (
        F.rms_norm(F.linear(h, w.cq_w, w.cq_b), (d,), w.cnorm_q, eps)
        .unflatten(2, (heads, -1))
        .transpose(1, 2)
    )
    ca = F.scaled_dot_product_attention(cq, ctx_k, ctx_v).transpose(1, 2).flatten(2, 3).to(x.dtype)
    x = x + F.linear(ca, w.cout_w, w.cout_b)
    # 3. feed-forward
    xf = x.view(b, f, tpf, d)
    h = (F.layer_norm(xf.float(), (d,), eps=eps) * (1 + c_scale) + c_shift).to(x.dtype).view(b, n, d)
    ff = F.linear(F.gelu(F.linear(h, w.ff1_w, w.ff1_b), approximate="tanh"), w.ff2_w, w.ff2_b)
    return (xf.float() + ff.view(b, f, tpf, d).float() * c_gate).to(x.dtype).view(b, n, d)


def _patches(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(B, C, f, h, w) -> (B, f * h/ph * w/pw, C * ph * pw) in the order of Conv3d's flattened weight."""
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f, h // ph, ph, w // pw, pw).permute(0, 2, 3, 5, 1, 4, 6)
    return x.reshape(b, f * (h // ph) * (w // pw), c * ph * pw)


class _Blocks(torch.nn.Module):
    """The transformer forward (patch embedding, every block, output head) as one module whose tensors are its
    buffers, so that `torch.compile` with inductor's `freezing` treats the weights as constants (linear weights
    pre-packed for the CPU GEMM) and builds one graph per input shape for every layer together (no per-layer
    graphs). Built from the fused `_BlockWeights` (shared storage). Per-layer inputs come stacked along a leading
    layer dimension, so a call has few tensor arguments (each one is a guard `torch.compile` checks per call)."""

    def __init__(
        self,
        model: CausalWanTransformer,
        weights: list[_BlockWeights],
        heads: int,
        eps: float,
        cross_norm: bool,
    ):
        super().__init__()
        self.heads, self.eps, self.cross_norm = heads, eps, cross_norm
        cfg = model.config
        _, self.ph, self.pw = cfg.patch_size
        self.out_eps = model.norm_out.eps
        self.prediction = cfg.get("prediction_type", "velocity")
        self.sample_base = cfg.get("sample_base")
        pe = model.patch_embedding
        self.register_buffer(
            "patch_w", pe.weight.detach().flatten(1).clone(), persistent=False
        )  # (D, C * ph * pw)
        self.register_buffer("patch_b", None if pe.bias is None else pe.bias.detach(), persistent=False)
        self.register_buffer("proj_w", model.proj_out.weight.detach(), persistent=False)
        self.register_buffer("proj_b", model.proj_out.bias.detach(), persistent=False)
        self.fields = list(_BlockWeights.__dataclass_fields__)
        self.present: list[list[bool]] = []
        for i, w in enumerate(weights):
            row = []
            for f in self.fields:
                t = getattr(w, f)
                row.append(t is not None)
                if t is not None:
                    self.register_buffer(f"l{i}_{f}", t, persistent=False)
            self.present.append(row)

    def layer(self, i: int) -> _BlockWeights:
        return _BlockWeights(
            *[getattr(self, f"l{i}_{f}") if ok else None for f, ok in zip(self.fields, self.present[i])]
        )

    def forward(
        self,
        x: torch.Tensor,
        cond_tok: torch.Tensor | None,
        cond: torch.Tensor | None,
        mods: torch.Tensor,
        out_mod: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kbuf: torch.Tensor | None,
        vbuf: torch.Tensor | None,
        mask: torch.Tensor | None,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        sigma: torch.Tensor | None,
        out_frames: int,
    ) -> torch.Tensor | None:
        """The model's output for the last `out_frames` of x (B, C, f, h, w) as a velocity (B2, C, out_frames, h,
        w), before guidance (B2 = 2B when the context is doubled for guidance); None when out_frames is 0 (a cache
        write). cond_tok (B2, n, D) or None; cond: the frames' condition channels (a 'sample' model's base); mods
        (L, 1 or B2, f, 6, D), out_mod (1, f, 2, D); kbuf, vbuf (L, B2, H, S + n, Dh) or None; ctx_k, ctx_v (L,
        B2, H, Lc, Dh): layer i gets index i of each (see `_block`); sigma (1, 1, out_frames, 1, 1): the 'sample'
        prediction's noise levels."""
        b, _, f, h, w = x.shape
        ph, pw = self.ph, self.pw
        pph, ppw = h // ph, w // pw
        tpf = pph * ppw
        x2 = torch.cat([x, x]) if ctx_k.shape[1] == 2 * b else x
        tok = F.linear(_patches(x2.to(self.patch_w.dtype), ph, pw), self.patch_w, self.patch_b)
        if cond_tok is not None:
            tok = tok + cond_tok
        for i in range(len(self.present)):
            tok = _block(
                self.layer(i),
                tok,
                mods[i],
                cos,
                sin,
                None if kbuf is None else kbuf[i],
                None if vbuf is None else vbuf[i],
                mask,
                ctx_k[i],
                ctx_v[i],
                self.heads,
                self.eps,
                self.cross_norm,
            )
        if out_frames == 0:  # a cache write: only the keys/values were wanted
            return None
        # output norm (per-frame modulation), projection, unpatchify: only the frames asked for
        bb = tok.shape[0]
        xf = tok.view(bb, f, tpf, -1)[:, f - out_frames :]
        om = out_mod[:, f - out_frames :]
        shift, scale = om[:, :, 0:1], om[:, :, 1:2]
        y = (F.layer_norm(xf.float(), (xf.shape[-1],), eps=self.out_eps) * (1 + scale) + shift).to(tok.dtype)
        y = F.linear(y, self.proj_w, self.proj_b)  # (B2, fo, tpf, C * ph * pw)
        y = y.reshape(bb, out_frames, pph, ppw, 1, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        y = y.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if self.prediction == "sample":
            base = self.sample_base
            if base is not None:
                c2 = torch.cat([cond, cond]) if bb == 2 * b else cond
                y = y.float() + c2[:, base[0] : base[1], f - out_frames :].float()
            y = (x2[:, :, f - out_frames :].float() - y.float()) / sigma
        return y.to(x.dtype)


def _signature(args: tuple) -> tuple:
    """Shapes, strides and dtypes of a call's tensor arguments (and its other arguments): which compiled graph it
    needs."""
    return tuple((tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a for a in args)


class _FrozenCompiled:
    """`torch.compile(blocks)` whose graphs are built with inductor's `freezing`: weights become constants and the
    CPU linears run on pre-packed weights. The config is patched only for calls with a new input signature (the
    calls that compile), so the rest run with no patching cost. Valid while the weights are unchanged:
    `_model_constants` rebuilds it when a parameter changes."""

    def __init__(self, blocks: _Blocks):
        self.fn = torch.compile(blocks, dynamic=False, fullgraph=True)
        self.seen: set[tuple] = set()

    def __call__(self, *args):
        sig = _signature(args)
        if sig in self.seen:
            return self.fn(*args)
        from torch._inductor import config as inductor_config

        with inductor_config.patch(freezing=True, cpp_wrapper=True):
            out = self.fn(*args)
        self.seen.add(sig)
        return out


def fast_path_supported(model: CausalWanTransformer) -> str | None:
    """Why the engines cannot run this model (None when they can)."""
    if model.config.patch_size[0] != 1:
        return "temporal patch size != 1"
    if model.blocks[0].attn2.add_k_proj is not None:
        return "image-context cross-attention (I2V) is not supported"
    if torch.is_grad_enabled():
        return "gradient enabled"
    return None


_CONSTANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_key(model: torch.nn.Module) -> tuple:
    """(data pointer, version, identity) of every parameter and buffer of a model, read through the (dict, name)
    slots found once per module tree (walking `named_parameters` costs ~1 ms, more than the rest of a stream's
    setup): a tensor replaced by a new object, moved, reloaded or changed in place changes the key."""
    mods: list[torch.nn.Module] = []
    todo = [model]
    while todo:  # the module tree (`model.modules()` without its per-call generator and memo set)
        m = todo.pop()
        mods.append(m)
        todo.extend(c for c in m._modules.values() if c is not None)
    ids = tuple(map(id, mods))
    slots = _SLOTS.get(model)
    if slots is None or slots[0] != ids:
        names = [(m._parameters, n) for m in mods for n in m._parameters]
        names += [(m._buffers, n) for m in mods for n in m._buffers]
        slots = _SLOTS[model] = (ids, names)
    return tuple((t.data_ptr(), t._version, id(t)) for t in (d[n] for d, n in slots[1]) if t is not None)


def _model_constants(model: CausalWanTransformer) -> dict:
    """What the engines derive from a model's weights alone (fused block weights; timestep modulations and RoPE
    tables, filled as used), kept per model and rebuilt when any parameter or buffer changed (object, storage or
    version counter): a stream's first frame does not pay for them again."""
    key = _weights_key(model)
    hit = _CONSTANTS.get(model)
    if hit is None or hit["key"] != key:
        hit = {
            "key": key,
            "weights": [_block_weights(b) for b in model.blocks],
            "blocks": None,
            "compiled": None,
            "rings": [],
            "contexts": [],
            "temb": {},
            "mods": {},
            "rope": {},
            "sigmas": {},
        }
        _CONSTANTS[model] = hit
    return hit


class _Model:
    """The parts of a `CausalWanTransformer` forward that do not depend on the cache layout, with the per-stream
    constants precomputed: conditions (context, guidance) -> cross-attention keys/values; timesteps -> modulation."""

    def __init__(
        self, model: CausalWanTransformer, conditions: Conditions, guidance_scale: float, compile: bool
    ):
        self.model = model
        self.guided = guidance_scale != 1.0
        self.guidance_scale = guidance_scale
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.eps = cfg.eps
        self.cross_norm = isinstance(model.blocks[0].norm2, torch.nn.LayerNorm)
        consts = _model_constants(model)
        self.weights = consts["weights"]
        if consts["blocks"] is None:
            consts["blocks"] = _Blocks(model, self.weights, self.heads, self.eps, self.cross_norm)
        self.blocks = consts["blocks"]
        if compile:
            if consts["compiled"] is None:
                consts["compiled"] = _FrozenCompiled(self.blocks)
            self.blocks = consts["compiled"]
        self.dtype = model.patch_embedding.weight.dtype
        self.device = model.patch_embedding.weight.device
        ce = model.cond_embedding
        self.cond_w = None if ce is None else ce.weight.detach().flatten(1)
        self.cond_b = None if ce is None or ce.bias is None else ce.bias.detach()
        self.prediction = cfg.get("prediction_type", "velocity")
        self.sample_base = cfg.get("sample_base")
        ctx = conditions.context
        if self.guided:
            if conditions.negative_context is None:
                raise ValueError("guidance_scale != 1 needs a negative_context (embed the negative prompt)")
            ctx = torch.cat([ctx, conditions.negative_context])
        if conditions.image_context is not None:
            raise ValueError("the inference engines do not take image context")
        self.ctx_k, self.ctx_v = self._context_kv(ctx, consts["contexts"])  # (L, B, H, Lc, Dh)
        self.ring_pool: list[RingCache] = consts["rings"]
        # filled on first use and kept with the model's weights (valid while they are unchanged)
        self._temb: dict[float, tuple[torch.Tensor, torch.Tensor]] = consts["temb"]
        self._mods: dict[tuple[float, ...], tuple[torch.Tensor, torch.Tensor]] = consts["mods"]
        self._rope: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = consts["rope"]
        self._sig: dict[tuple[float, ...], torch.Tensor] = consts["sigmas"]

    CONTEXTS = 4
    """Text contexts whose cross-attention keys/values are kept per model (most recent first)."""

    def _context_kv(self, ctx: torch.Tensor, kept: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values (L, B, H, Lc, Dh) of a text context: kept for the model's last
        `CONTEXTS` contexts (a stream with the same prompt does not recompute them before its first frame)."""
        for i, (c, k, v) in enumerate(kept):
            if (
                c.shape == ctx.shape
                and c.dtype == ctx.dtype
                and c.device == ctx.device
                and torch.equal(c, ctx)
            ):
                kept.insert(0, kept.pop(i))
                return k, v
        model = self.model
        _, _, text, _ = model.condition_embedder(torch.zeros(1, device=self.device), ctx.to(self.dtype), None)
        ks, vs = [], []
        for blk in model.blocks:
            a2 = blk.attn2
            ks.append(a2.norm_k(a2.to_k(text)).unflatten(2, (self.heads, -1)).transpose(1, 2))
            vs.append(a2.to_v(text).unflatten(2, (self.heads, -1)).transpose(1, 2))
        k, v = torch.stack(ks), torch.stack(vs)
        kept.insert(0, (ctx.clone(), k, v))
        del kept[self.CONTEXTS :]
        return k, v

    def take_ring(
        self, shape: tuple[int, ...], tpf: int, window: int, sinks: int, tail: int, device
    ) -> RingCache:
        """An empty ring-buffer cache of this layout: one a finished stream of this model returned to the pool
        (no allocation and no zero fill before the first frame), else a new one. The caller returns it to
        `ring_pool` when its stream ends."""
        key = RingCache.layout(shape, tpf, window, sinks, tail, device, self.dtype)
        for i, r in enumerate(self.ring_pool):
            if r.key == key:
                ring = self.ring_pool.pop(i)
                ring.reset()
                return ring
        return RingCache(shape, tpf, window, sinks, tail, device, self.dtype)

    # -------------------------------------------------------------- constants
    def _timestep(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """temb (D,), tproj (6, D) of one timestep."""
        if t not in self._temb:
            dev = self.device
            tt = torch.full((1,), float(t), device=dev, dtype=torch.float32)
            temb, tproj, _, _ = self.model.condition_embedder(
                tt, torch.zeros(1, 1, self.model.config.text_dim, device=dev, dtype=self.dtype), None
            )
            self._temb[t] = (temb[0], tproj[0].unflatten(0, (6, -1)))
        return self._temb[t]

    def modulation(self, ts: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Block modulation (L, 1, f, 6, D), layers stacked, and the output norm's (1, f, 2, D) for frames at
        timesteps ts."""
        if ts not in self._mods:
            embs = [self._timestep(t) for t in ts]
            tproj = torch.stack([e[1] for e in embs])[None].float()  # (1, f, 6, D)
            temb = torch.stack([e[0] for e in embs])[None].float()  # (1, f, D)
            mods = torch.stack(
                [b.scale_shift_table[None].float() + tproj for b in self.model.blocks]
            ).detach()
            out = (self.model.scale_shift_table[None].float() + temb[:, :, None]).detach()
            self._mods[ts] = (mods, out)
        return self._mods[ts]

    def sigmas(self, ts: tuple[float, ...]) -> torch.Tensor:
        """A 'sample' model's noise levels (1, 1, f, 1, 1) for frames at timesteps ts."""
        if ts not in self._sig:
            t = torch.tensor(ts, device=self.device, dtype=torch.float32)
            self._sig[ts] = self.model.velocity_sigma(t).view(1, 1, -1, 1, 1)
        return self._sig[ts]

    def rope(self, start: int, frames: int, pph: int, ppw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (1, frames * tpf, 1, head_dim) at absolute frames [start, start + frames) (a growing table)."""
        tpf = pph * ppw
        table = self._rope.get((pph, ppw))
        if table is None or table[0].shape[1] < (start + frames) * tpf:
            n = max(start + frames, min(max(64, 2 * (start + frames)), self.model.rope.max_seq_len))
            cos, sin = self.model._rope(torch.arange(n, device=self.device), pph, ppw)
            table = self._rope[(pph, ppw)] = (cos.contiguous(), sin.contiguous())
        cos, sin = table
        return cos[:, start * tpf : (start + frames) * tpf], sin[:, start * tpf : (start + frames) * tpf]

    # -------------------------------------------------------------- pieces of a forward
    def embed_cond(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """Condition tokens (B2, n, D) of a chunk's condition channels (guided: the batch doubled), or None."""
        if cond is None:
            if self.cond_w is not None:
                raise ValueError(
                    f"model expects {self.model.config.cond_in_channels} condition channels, got none"
                )
            return None
        if self.cond_w is None:
            raise ValueError("got condition channels but the model has cond_in_channels=0")
        _, ph, pw = self.model.config.patch_size
        tok = F.linear(_patches(cond.to(self.dtype), ph, pw), self.cond_w, self.cond_b)
        return torch.cat([tok, tok]) if self.guided else tok

    def forward(
        self,
        x: torch.Tensor,
        ts: tuple[float, ...],
        cond_tok: torch.Tensor | None,
        cond: torch.Tensor | None,
        start: int,
        buffers: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        out_frames: int,
    ) -> torch.Tensor | None:
        """Velocity (B, C, out_frames, h, w) of the last `out_frames` of x (B, C, f, h, w) at per-frame timesteps ts
        (guidance combined); cond: the channels of those frames (for 'sample' prediction with a base)."""
        f, h, w = x.shape[2:]
        _, ph, pw = self.model.config.patch_size
        cos, sin = self.rope(start, f, h // ph, w // pw)
        mods, out_mod = self.modulation(ts)
        sigma = None
        if self.prediction == "sample" and out_frames:
            sigma = self.sigmas(ts[f - out_frames :])
            base = self.sample_base
            if base is not None and (
                cond is None or cond.shape[1] < base[1] or base[1] - base[0] != x.shape[1]
            ):
                raise ValueError(f"sample_base {base} needs condition channels [{base[0]}, {base[1]})")
        kbuf, vbuf = (None, None) if buffers is None else buffers
        x = x.contiguous()  # a chunk's noise is a view of the stream's: one compiled graph for both layouts
        cond = None if cond is None else cond.contiguous()
        v = self.blocks(
            x,
            cond_tok,
            cond,
            mods,
            out_mod,
            cos,
            sin,
            kbuf,
            vbuf,
            mask,
            self.ctx_k,
            self.ctx_v,
            sigma,
            out_frames,
        )
        if v is None or not self.guided:
            return v
        v_c, v_u = v.chunk(2)
        return v_u + self.guidance_scale * (v_c - v_u)


class RingCache:
    """Preallocated per-layer KV buffers: `cache_frames` ring slots (sinks first, then a ring over the rest) and a
    tail of `tail_frames` slots for the frames of the running forward."""

    def __init__(
        self, shape: tuple[int, ...], tpf: int, window: int, sinks: int, tail_frames: int, device, dtype
    ) -> None:
        """shape: (layers, batch, heads, (window + tail_frames) * tpf, head_dim)."""
        self.tpf, self.window, self.sinks, self.tail = tpf, window, sinks, tail_frames
        self.key = self.layout(shape, tpf, window, sinks, tail_frames, device, dtype)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.slot_frame = [-1] * window  # absolute frame in each ring slot (-1 empty)

    @staticmethod
    def layout(
        shape: tuple[int, ...], tpf: int, window: int, sinks: int, tail_frames: int, device, dtype
    ) -> tuple:
        """What makes two caches interchangeable (the pool of `_Model.take_ring` matches on it)."""
        return (tuple(shape), tpf, window, sinks, tail_frames, torch.device(device), dtype)

    def slot(self, frame: int) -> int:
        s = self.sinks
        return frame if frame < s else s + (frame - s) % (self.window - s)

    def buffers(self, frames: int, ring: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (L, B, H, S, Dh) of the keys and values: the ring and a tail of `frames` frames right after it, or
        (ring=False) the tail alone."""
        a, n = (0 if ring else self.window * self.tpf), (self.window + frames) * self.tpf
        return self.k[:, :, :, a:n], self.v[:, :, :, a:n]

    def reset(self) -> None:
        """Every slot empty. Slots keep their old (finite) values: empty slots are masked out of attention."""
        self.slot_frame = [-1] * self.window

    def valid(self) -> torch.Tensor:
        return torch.tensor([f >= 0 for f in self.slot_frame])

    def write(self, frames: list[int]) -> None:
        """Copy the tail's first len(frames) frames (the chunk just run at the head of the tail) into their slots."""
        t, w = self.tpf, self.window
        for i, fr in enumerate(frames):
            s = self.slot(fr)
            src = slice((w + i) * t, (w + i + 1) * t)
            self.k[:, :, :, s * t : (s + 1) * t] = self.k[:, :, :, src]
            self.v[:, :, :, s * t : (s + 1) * t] = self.v[:, :, :, src]
            self.slot_frame[s] = fr


def _token_mask(frame_rows: list[torch.Tensor], tpf: int, device) -> torch.Tensor:
    """Additive float mask (1, 1, Q, K) from per-query-frame boolean rows over key frames (each (Kf,)); one row:
    (1, 1, 1, K), broadcast over the queries."""
    tok = torch.stack(frame_rows).repeat_interleave(tpf, 1)  # (Qf, K)
    if len(frame_rows) > 1:
        tok = tok.repeat_interleave(tpf, 0)
    return torch.zeros(tok.shape, dtype=torch.float32).masked_fill(~tok, _NEG)[None, None].to(device)


class StreamEngine:
    """The frame-wise AR rollout for inference (see the module docstring): `run` yields each chunk's clean latents."""

    def __init__(
        self,
        model: CausalWanTransformer,
        conditions: Conditions,
        cfg: RolloutConfig,
        compile: bool = False,
        fold_write: bool = True,
    ):
        why = fast_path_supported(model)
        if why is not None:
            raise ValueError(f"the stream engine cannot run this model: {why}")
        c, w, s = cfg.causal.chunk_size, cfg.causal.cache_frames, cfg.causal.sink_frames
        if c > w - s:
            raise ValueError(
                f"the stream engine needs chunk_size <= cache_frames - sink_frames, got {c} > {w - s}"
            )
        self.cfg = cfg
        self.fold_write = fold_write
        self.m = _Model(model, conditions, cfg.guidance_scale, compile)
        self.conditions = conditions

    def run(
        self,
        noise: torch.Tensor,
        cond_chunk: Callable[[int, int], torch.Tensor | None] | None = None,
        generator: torch.Generator | None = None,
        on_chunk_start: Callable[[int], None] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Clean latents (B, C, c, h, w) chunk by chunk from noise (B, C, F, h, w), like `iter_rollout`'s `clean`.
        cond_chunk(start, stop): the condition channels of those frames (default: `conditions.cond_slice`), asked
        after `on_chunk_start(start)`."""
        cfg, m = self.cfg, self.m
        cond_chunk = cond_chunk or self.conditions.cond_slice
        b, _, _, h, w = noise.shape
        c = cfg.causal.chunk_size
        _, ph, pw = m.model.config.patch_size
        tpf = (h // ph) * (w // pw)
        heads = m.heads
        head_dim = m.model.inner_dim // heads
        b2 = 2 * b if m.guided else b
        ring = m.take_ring(
            (len(m.weights), b2, heads, (cfg.causal.cache_frames + 2 * c) * tpf, head_dim),
            tpf,
            cfg.causal.cache_frames,
            cfg.causal.sink_frames,
            2 * c,
            noise.device,
        )
        try:
            yield from self._run(noise, ring, cond_chunk, generator, on_chunk_start)
        finally:
            m.ring_pool.append(ring)  # for the model's next stream: no allocation before its first frame

    def _run(
        self,
        noise: torch.Tensor,
        ring: RingCache,
        cond_chunk: Callable[[int, int], torch.Tensor | None],
        generator: torch.Generator | None,
        on_chunk_start: Callable[[int], None] | None,
    ) -> Iterator[torch.Tensor]:
        cfg, m = self.cfg, self.m
        b, ch, num_frames, h, w = noise.shape
        c = cfg.causal.chunk_size
        sig = cfg.schedule.sigmas().tolist()
        n_steps = len(sig) - 1
        ts = [s * NUM_TRAIN_TIMESTEPS for s in sig[:-1]]
        ctx_t = float(cfg.context_timestep)
        tpf = ring.tpf
        plain_bufs, fold_bufs = ring.buffers(c), ring.buffers(2 * c)
        # while the ring is empty (the first chunk) attention runs over the chunk's own tail slots alone
        first_bufs = ring.buffers(c, ring=False)
        win = cfg.causal.cache_frames
        pending = None  # (latents (B, C, c, h, w) to write, their cond tokens, cond, start)
        n_chunks = math.ceil(num_frames / c)
        for mi in range(n_chunks):
            start = mi * c
            stop = min(start + c, num_frames)
            real = stop - start
            if on_chunk_start is not None:
                on_chunk_start(start)
            cond = cond_chunk(start, stop)
            x = noise[:, :, start:stop]
            if real < c:  # pad a partial last chunk to the compiled shape; its padding keys are masked
                pad = c - real
                x = torch.cat([x, x.new_zeros(b, ch, pad, h, w)], dim=2)
                if cond is not None:
                    cond = torch.cat([cond, cond.new_zeros(*cond.shape[:2], pad, h, w)], dim=2)
            cond_tok = m.embed_cond(cond)
            if pending is not None and not self.fold_write:  # the write as its own forward of c frames
                px, ptok, pcond, pstart = pending
                mask = _token_mask(
                    [torch.cat([ring.valid(), torch.ones(c, dtype=torch.bool)])], tpf, x.device
                )
                m.forward(px, (ctx_t,) * c, ptok, pcond, pstart, plain_bufs, mask, 0)
                ring.write(list(range(pstart, pstart + c)))
                pending = None
            valid = ring.valid()
            tail_new = torch.tensor([i < real for i in range(c)])
            plain_mask = _token_mask([torch.cat([valid, tail_new])], tpf, x.device)
            bufs = plain_bufs
            if not bool(valid.any()) and pending is None:
                bufs, plain_mask = first_bufs, None if real == c else _token_mask([tail_new], tpf, x.device)
            for n in range(n_steps):
                if n == 0 and pending is not None:
                    px, ptok, pcond, pstart = pending
                    dest = torch.zeros(win, dtype=torch.bool)
                    for fr in range(pstart, pstart + c):
                        dest[ring.slot(fr)] = True
                    ones, zeros = torch.ones(c, dtype=torch.bool), torch.zeros(c, dtype=torch.bool)
                    rows = [torch.cat([valid, ones, zeros])] * c + [
                        torch.cat([valid & ~dest, ones, tail_new])
                    ] * c
                    mask = _token_mask(rows, tpf, x.device)
                    xin = torch.cat([px, x], dim=2)
                    tok = None if cond_tok is None else torch.cat([ptok, cond_tok], dim=1)
                    cin = None if cond is None else torch.cat([pcond, cond], dim=2)
                    v = m.forward(xin, (ctx_t,) * c + (ts[0],) * c, tok, cin, pstart, fold_bufs, mask, c)
                    ring.write(list(range(pstart, pstart + c)))
                    valid = ring.valid()
                    plain_mask = _token_mask([torch.cat([valid, tail_new])], tpf, x.device)
                    bufs, pending = plain_bufs, None
                else:
                    v = m.forward(x, (ts[n],) * c, cond_tok, cond, start, bufs, plain_mask, c)
                x = ode_step(x, v, sig[n], sig[n + 1])
            clean = x[:, :, :real]
            cached = context_frames(clean, ctx_t, generator)
            if stop < num_frames:
                pending = (cached, cond_tok, cond, start)
            yield clean


def sample_bidirectional_fast(
    model: CausalWanTransformer,
    conditions: Conditions,
    noise: torch.Tensor,
    schedule: FlowSchedule,
    guidance_scale: float = 1.0,
    compile: bool = False,
) -> torch.Tensor:
    """`sampling.sample_bidirectional` (N-step Euler over all frames at once) with the per-stream constants
    precomputed and optionally the compiled forward."""
    why = fast_path_supported(model)
    if why is not None:
        raise ValueError(f"the bidirectional engine cannot run this model: {why}")
    m = _Model(model, conditions, guidance_scale, compile)
    sig = schedule.sigmas().tolist()
    f = noise.shape[2]
    cond_tok = m.embed_cond(conditions.cond)
    x = noise
    for n in range(len(sig) - 1):
        v = m.forward(x, (sig[n] * NUM_TRAIN_TIMESTEPS,) * f, cond_tok, conditions.cond, 0, None, None, f)
        x = ode_step(x, v, sig[n], sig[n + 1])
    return x
