"""The AR-Drag backbone: diffusers' Wan transformer with per-frame timesteps, causal masks and a KV cache.

`CausalWanTransformer` subclasses diffusers' `WanTransformer3DModel`, so it has exactly its modules and parameter
names: `CausalWanTransformer.from_pretrained(wan_folder)` loads a real Wan2.1 transformer. It adds
  - `cond_embedding`: a zero-initialised patch embedding for the extra condition channels (trajectory latents,
    reference-image latent and mask). Its output is added to `patch_embedding`'s, which equals concatenating the
    channels into one patch embedding whose new input weights are zero: a loaded base model is unchanged;
  - per-frame timesteps (B, F) with per-frame adaLN modulation;
  - three attention layouts sharing one token path: bidirectional (teacher), frame-block-causal with a rolling
    window (student training), teacher forcing [clean | noisy]; and a cached forward over a `KVCache` for
    frame-wise inference, with RoPE at absolute frame positions.
Shapes: latents (B, C, F, H, W); timesteps in [0, 1000] as floats; text context (B, L, text_dim).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel, WanTransformerBlock
from torch.nn.attention.flex_attention import BlockMask
from torch.utils.checkpoint import checkpoint

from ardrag.models.attention import (
    CausalConfig,
    FramePlan,
    KVCache,
    expand_frame_mask,
    frame_attention,
    frame_block_mask,
    frame_plan,
    frame_visible,
    teacher_forcing_frame_mask,
)


@dataclass
class _CacheStep:
    """What a cached forward does with the cache: read the window for `chunk_start`, optionally append."""

    cache: KVCache
    chunk_start: int
    write: bool


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair rotary embedding (Wan's convention). x: (B, L, H, D); cos, sin: (1, L, 1, D)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    return out.type_as(x)


_FLEX = {}


def _flex_attention():
    """flex_attention, compiled on CUDA (fused kernel); eager elsewhere (a reference path, for tests)."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX["fn"] = torch.compile(flex_attention) if torch.cuda.is_available() else flex_attention
    return _FLEX["fn"]


class CausalWanBlock(WanTransformerBlock):
    """diffusers' Wan block with per-frame adaLN modulation, masked or cached self-attention and RoPE at absolute
    frame positions. Same submodules and parameter names as `WanTransformerBlock` (real Wan2.1 weights load), and
    every layout runs through this module's own `forward`, so per-block wrappers (FSDP2 `fully_shard`, activation
    checkpointing, `torch.compile`) see each block as one unit."""

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        tproj: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | BlockMask | None = None,
        cache_step: _CacheStep | None = None,
        layer: int = 0,
        tokens_per_frame: int | None = None,
    ) -> torch.Tensor:
        """hidden_states: (B, F*tpf, D) frame-major tokens; encoder_hidden_states: (B, L, D) context;
        tproj: (B, F, 6, D) per-frame modulation; cos, sin: (1, F*tpf, 1, head_dim); attn_mask: dense boolean
        (tokens, tokens) for SDPA or a FlexAttention BlockMask; cache_step: read/append `layer`'s KV cache."""
        x = hidden_states
        b, n, d = x.shape
        f = tproj.shape[1]
        tpf = tokens_per_frame or n // f
        mod = self.scale_shift_table[None].float() + tproj.float()  # (B, F, 6, D)
        shift, scale, gate, c_shift, c_scale, c_gate = (m[:, :, None] for m in mod.unbind(2))  # (B, F, 1, D)

        def frames(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, f, tpf, d)

        # 1. Self-attention (masked, or over the cached window)
        h = (self.norm1(frames(x).float()) * (1 + scale) + shift).type_as(x).view(b, n, d)
        a = self._self_attention(h, cos, sin, attn_mask, cache_step, layer)
        x = (frames(x).float() + frames(a) * gate).type_as(x).view(b, n, d)
        # 2. Cross-attention to the text (and image) context
        h = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(h, encoder_hidden_states, None, None)
        # 3. Feed-forward
        h = (self.norm3(frames(x).float()) * (1 + c_scale) + c_shift).type_as(x).view(b, n, d)
        ff = self.ffn(h)
        return (frames(x).float() + frames(ff).float() * c_gate).type_as(x).view(b, n, d)

    def _self_attention(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | BlockMask | None,
        cache_step: _CacheStep | None,
        layer: int,
    ) -> torch.Tensor:
        attn = self.attn1
        q = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(x)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(x).unflatten(2, (attn.heads, -1))
        q = _apply_rotary(q, cos, sin).transpose(1, 2)  # (B, H, L, Dh)
        # contiguous keys/values: torch.cat of transposed views is ~1000x slower on CPU, and the cache concatenates
        k = _apply_rotary(k, cos, sin).transpose(1, 2).contiguous()
        v = v.transpose(1, 2).contiguous()
        if cache_step is not None:
            past = cache_step.cache.gather(layer, cache_step.chunk_start)
            if cache_step.write:
                cache_step.cache.append(layer, k.detach(), v.detach())
            if past is not None:
                k = torch.cat([past[0].to(k.dtype), k], dim=2)
                v = torch.cat([past[1].to(v.dtype), v], dim=2)
        if isinstance(attn_mask, BlockMask):
            out = _flex_attention()(q, k, v, block_mask=attn_mask)
        elif isinstance(attn_mask, FramePlan):
            out = frame_attention(q, k, v, attn_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).flatten(2, 3).type_as(x)
        return attn.to_out[1](attn.to_out[0](out))


ATTENTION_BACKENDS = ("sdpa", "dense", "flex")
"""How masked self-attention runs. 'sdpa': one unmasked scaled_dot_product_attention per run of query frames over the
key frames they see (`attention.frame_attention`; no token mask, masked-out scores never computed). 'dense': one
call with a dense boolean (tokens x tokens) mask, the reference (4.3 GB of mask at 21 latent frames of 480x832 in
the teacher-forcing layout). 'flex': a FlexAttention BlockMask built from the frame
mask at block granularity (memory O(blocks^2)), compiled on CUDA: for full-scale masked training there. All three
are equal to float32 rounding (tests/test_attention_masks.py)."""

MAX_CACHED_BLOCK_MASKS = 8
"""Block masks / frame plans kept per model (keyed by backend, shape and frame mask): a run uses one or two layouts."""

PREDICTION_TYPES = ("velocity", "sample")
"""What `proj_out` predicts. 'velocity' (Wan2.1's own): v = eps - x0. 'sample': the clean latent x0, returned as the
velocity v = (x_s - x0_hat) / max(s, sample_sigma_min), so every caller still receives a velocity. For pixel-space
toys whose patch (192 values) is as wide as the model, x0 lies on a low-dimensional manifold while eps and v do not:
the network then learns x0 far better (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise").
With `sample_base = (a, b)` the x0 estimate is `cond[:, a:b]` (the reference latent, when the conditioner repeats it in
every frame) plus the network's output: a token need not carry the reference patch through the residual stream to
reproduce a static background, only what changes."""


class CausalWanTransformer(WanTransformer3DModel):
    """Wan2.1 DiT with frame-wise causal attention, a rolling KV cache and zero-initialised condition channels."""

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        cond_in_channels: int = 0,
        prediction_type: str = "velocity",
        sample_sigma_min: float = 0.05,
        sample_base: tuple[int, int] | None = None,
        attention_backend: str = "sdpa",
    ) -> None:
        super().__init__(
            patch_size=patch_size,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if sample_base is not None and (
            prediction_type != "sample" or not 0 <= sample_base[0] < sample_base[1]
        ):
            raise ValueError(
                f"sample_base {sample_base} needs prediction_type 'sample' and a channel range [a, b)"
            )
        if attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {attention_backend!r}"
            )
        self.cond_embedding = self._make_cond_embedding(cond_in_channels) if cond_in_channels > 0 else None
        # Same modules and parameters, new forward: re-classing (not rebuilding) keeps the initial weights and the
        # random stream of the base constructor, so a seed gives the same model as before.
        for block in self.blocks:
            block.__class__ = CausalWanBlock
        # flex block masks and sdpa frame plans, per (backend, shape, frame mask)
        self._block_masks: OrderedDict[tuple, BlockMask | FramePlan] = OrderedDict()

    # ------------------------------------------------------------------ construction helpers
    def _make_cond_embedding(self, channels: int) -> nn.Conv3d:
        inner = self.config.num_attention_heads * self.config.attention_head_dim
        p = tuple(self.config.patch_size)
        conv = nn.Conv3d(channels, inner, kernel_size=p, stride=p, bias=False)
        nn.init.zeros_(conv.weight)  # a loaded base model must behave exactly as before at step 0
        w = self.patch_embedding.weight
        return conv.to(device=w.device, dtype=w.dtype)

    def add_condition_channels(self, channels: int) -> None:
        """Give a loaded base model `channels` extra zero-initialised input channels (recorded in the config)."""
        if self.cond_embedding is not None:
            raise ValueError(f"model already has {self.config.cond_in_channels} condition channels")
        self.cond_embedding = self._make_cond_embedding(channels)
        self.register_to_config(cond_in_channels=channels)

    @property
    def inner_dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim

    def tokens_per_frame(self, height: int, width: int) -> int:
        _, ph, pw = self.config.patch_size
        return (height // ph) * (width // pw)

    # ------------------------------------------------------------------ public forwards
    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        cond: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        causal: CausalConfig | None = None,
        positions: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full-sequence forward. Returns the predicted velocity (B, C_out, F, H, W).

        hidden_states: (B, C, F, H, W) noisy latents; timestep: (B,) or (B, F) in [0, 1000];
        cond: (B, cond_in_channels, F, H, W) or None; causal: None = bidirectional (teacher), else the frame-block
        causal mask with its window and sinks (student training, and the reference the KV cache must equal);
        positions: (F,) absolute frame indices for RoPE (default 0..F-1); frame_mask: an explicit (F, F) frame mask
        overriding `causal`.
        """
        num_frames = hidden_states.shape[2]
        if positions is None:
            positions = torch.arange(num_frames, device=hidden_states.device)
        if frame_mask is None and causal is not None:
            frame_mask = frame_visible(positions, positions, causal)
        return self._forward(
            hidden_states,
            timestep,
            encoder_hidden_states,
            cond,
            encoder_hidden_states_image,
            positions,
            frame_mask,
        )

    def forward_teacher_forcing(
        self,
        clean: torch.Tensor,
        noisy: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        causal: CausalConfig,
        cond: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        clean_timestep: torch.Tensor | float = 0.0,
    ) -> torch.Tensor:
        """Teacher-forcing layout [clean | noisy]: every noisy frame sees clean past frames in its window.

        clean, noisy: (B, C, F, H, W); timestep: (B, F) for the noisy frames; clean_timestep: the (context noise)
        level of the clean frames; cond: (B, Cc, F, H, W), shared by the clean and noisy copy of a frame.
        Returns the velocity for the noisy frames (B, C_out, F, H, W).
        """
        b, _, f = noisy.shape[:3]
        timestep = self._frame_timesteps(timestep, b, f, noisy.device)
        t_clean = torch.as_tensor(clean_timestep, dtype=timestep.dtype, device=noisy.device).expand(b, f)
        x = torch.cat([clean, noisy], dim=2)
        t = torch.cat([t_clean, timestep], dim=1)
        c = None if cond is None else torch.cat([cond, cond], dim=2)
        pos = torch.arange(f, device=noisy.device).repeat(2)
        mask = teacher_forcing_frame_mask(f, causal, device=noisy.device)
        out = self._forward(x, t, encoder_hidden_states, c, encoder_hidden_states_image, pos, mask)
        return out[:, :, f:]

    def new_cache(self, causal: CausalConfig, height: int, width: int) -> KVCache:
        """An empty rolling KV cache for latents of spatial size (height, width)."""
        return KVCache.empty(len(self.blocks), causal, self.tokens_per_frame(height, width))

    def forward_cached(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        cache: KVCache,
        start_frame: int,
        cond: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        write: bool = False,
    ) -> torch.Tensor:
        """Forward of one chunk of frames [start_frame, start_frame + c) attending to the cached window.

        With `write=True` the chunk's keys/values are appended to the cache (call it once per chunk with the clean
        frames) and frames that left the window are evicted. Returns the velocity (B, C_out, c, H, W).
        """
        c = hidden_states.shape[2]
        if start_frame != cache.next_frame:
            raise ValueError(
                f"cache holds frames up to {cache.next_frame - 1}; cannot run frame {start_frame}"
            )
        if start_frame % cache.cfg.chunk_size != 0 or c > cache.cfg.chunk_size:
            raise ValueError(
                f"chunk [{start_frame}, {start_frame + c}) does not fit chunk_size {cache.cfg.chunk_size}"
            )
        pos = torch.arange(start_frame, start_frame + c, device=hidden_states.device)
        step = _CacheStep(cache, start_frame, write)
        out = self._forward(
            hidden_states, timestep, encoder_hidden_states, cond, encoder_hidden_states_image, pos, None, step
        )
        if write:
            cache.commit(pos.tolist())
        return out

    # ------------------------------------------------------------------ shared token path
    @staticmethod
    def _frame_timesteps(timestep: torch.Tensor, b: int, f: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(b)
        if t.ndim == 1:
            t = t[:, None].expand(b, f)
        if t.shape != (b, f):
            raise ValueError(f"timestep must be (B,) or (B, F) = ({b}, {f}), got {tuple(t.shape)}")
        return t

    def _rope(self, positions: torch.Tensor, pph: int, ppw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (1, F*pph*ppw, 1, head_dim) at absolute frame positions (Wan's 3-axis RoPE)."""
        rope = self.rope
        if int(positions.max()) >= rope.max_seq_len:
            raise ValueError(
                f"frame index {int(positions.max())} exceeds rope_max_seq_len={rope.max_seq_len}; "
                "raise it in the model config"
            )
        sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
        out = []
        for table in (rope.freqs_cos, rope.freqs_sin):
            ft, fh, fw = table.split(sizes, dim=1)
            nf = len(positions)
            ft = ft[positions.to(ft.device)].view(nf, 1, 1, -1).expand(nf, pph, ppw, -1)
            fh = fh[:pph].view(1, pph, 1, -1).expand(nf, pph, ppw, -1)
            fw = fw[:ppw].view(1, 1, ppw, -1).expand(nf, pph, ppw, -1)
            out.append(torch.cat([ft, fh, fw], dim=-1).reshape(1, nf * pph * ppw, 1, -1))
        return out[0], out[1]

    def _forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        cond: torch.Tensor | None,
        image_context: torch.Tensor | None,
        positions: torch.Tensor,
        frame_mask: torch.Tensor | None,
        cache_step: _CacheStep | None = None,
    ) -> torch.Tensor:
        b, _, f, h, w = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        if p_t != 1:
            raise ValueError("frame-wise generation needs a temporal patch size of 1")
        pph, ppw = h // p_h, w // p_w
        tpf = pph * ppw

        # 1. Patch embedding (+ zero-initialised condition channels) and RoPE at absolute frame positions
        in_dtype, dtype = hidden_states.dtype, self.patch_embedding.weight.dtype  # fp32 latents, bf16 weights
        x = self.patch_embedding(hidden_states.to(dtype))
        if cond is not None:
            if self.cond_embedding is None:
                raise ValueError("got condition channels but the model has cond_in_channels=0")
            x = x + self.cond_embedding(cond.to(x.dtype))
        elif self.cond_embedding is not None:
            raise ValueError(f"model expects {self.config.cond_in_channels} condition channels, got none")
        x = x.flatten(2).transpose(1, 2).contiguous()  # (B, F*tpf, D), frame-major tokens
        cos, sin = self._rope(positions, pph, ppw)

        # 2. Per-frame time embedding and text (and image) context
        t = self._frame_timesteps(timestep, b, f, x.device)
        if image_context is not None:
            image_context = image_context.to(dtype)
        temb, tproj, context, image_context = self.condition_embedder(
            t.flatten(), context.to(dtype), image_context, timestep_seq_len=f
        )
        tproj = tproj.unflatten(2, (6, -1))  # (B, F, 6, D)
        if image_context is not None:
            context = torch.cat([image_context, context], dim=1)

        token_mask = None
        if frame_mask is not None and not bool(frame_mask.all()):
            token_mask = self._token_mask(frame_mask.to(x.device), tpf)

        # 3. Transformer blocks, each called as a module (its own forward) so per-block wrappers apply
        for li, block in enumerate(self.blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing and cache_step is None:
                x = checkpoint(
                    block, x, context, tproj, cos, sin, token_mask, None, li, tpf, use_reentrant=False
                )
            else:
                x = block(x, context, tproj, cos, sin, token_mask, cache_step, li, tpf)

        # 4. Output norm (per-frame modulation), projection and unpatchify
        mod = self.scale_shift_table[None].float() + temb[:, :, None].float()  # (B, F, 2, D)
        shift, scale = mod[:, :, 0:1], mod[:, :, 1:2]
        xf = x.view(b, f, tpf, -1)
        x = (self.norm_out(xf.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x)  # (B, F, tpf, C_out * p_h * p_w)
        x = x.reshape(b, f, pph, ppw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        x = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if self.config.get("prediction_type", "velocity") == "sample":  # x0 -> velocity, in float32
            base = self.config.get("sample_base")
            if base is not None:  # x0 = a condition latent (the reference image) + the predicted difference
                if cond is None or cond.shape[1] < base[1] or base[1] - base[0] != x.shape[1]:
                    raise ValueError(f"sample_base {base} needs condition channels [{base[0]}, {base[1]})")
                x = x.float() + cond[:, base[0] : base[1]].float()
            s = self.velocity_sigma(t)[:, None, :, None, None]  # (B, 1, F, 1, 1)
            x = (hidden_states.float() - x.float()) / s
        return x.to(in_dtype)

    def velocity_sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """The noise level s dividing (x_s - x0_hat) for 'sample' models: t / 1000, at least sample_sigma_min."""
        return (timestep.float() / 1000.0).clamp_min(self.config.get("sample_sigma_min", 0.05))

    @property
    def attention_backend(self) -> str:
        return self.config.get("attention_backend", "sdpa")

    @attention_backend.setter
    def attention_backend(self, backend: str) -> None:
        """Switch the masked-attention backend; recorded in the config so save_pretrained/exports keep it."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
        self.register_to_config(attention_backend=backend)

    def _token_mask(self, frame_mask: torch.Tensor, tpf: int) -> torch.Tensor | BlockMask | FramePlan:
        """The attention mask of a (F, F) frame mask: a cached FramePlan (sdpa), a dense token mask (dense) or a
        cached BlockMask (flex)."""
        backend = self.attention_backend
        if backend == "dense":
            return expand_frame_mask(frame_mask, tpf)
        key = (
            backend,
            tpf,
            tuple(frame_mask.shape),
            str(frame_mask.device),
            frame_mask.cpu().numpy().tobytes(),
        )
        if key not in self._block_masks:
            build = frame_plan if backend == "sdpa" else frame_block_mask
            self._block_masks[key] = build(frame_mask, tpf)
            while len(self._block_masks) > MAX_CACHED_BLOCK_MASKS:
                self._block_masks.popitem(last=False)
        self._block_masks.move_to_end(key)
        return self._block_masks[key]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
