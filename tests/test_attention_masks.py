"""Masked attention without a token-level mask: FlexAttention block masks and the 'sdpa' backend's per-run SDPA
calls (frame plans), both built from frame masks, equal to SDPA with the dense mask, cached per layout, small at full
scale, and the backend choice is saved with the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

import ardrag.models.causal_wan as causal_wan
from ardrag.models import CausalConfig, CausalWanTransformer, preset_config, teacher_forcing_frame_mask
from ardrag.models.attention import (
    causal_frame_mask,
    expand_frame_mask,
    frame_attention,
    frame_block_mask,
    frame_plan,
)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("tpf,block,has_full", [(3, 4, True), (5, 4, True), (4, 8, False)])
def test_block_mask_attention_equals_dense_mask(tpf, block, has_full):
    """Tiles smaller than the sequence, not aligned to frames, with a ragged last tile: empty, full and partial
    tiles all occur, and the attention output equals SDPA with the dense token mask."""
    mask = teacher_forcing_frame_mask(5, CausalConfig(chunk_size=1, cache_frames=2, sink_frames=1))
    n = mask.shape[0] * tpf
    bm = frame_block_mask(mask, tpf, block_size=block)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=expand_frame_mask(mask, tpf))
    flex = flex_attention(q, k, v, block_mask=bm)
    # same softmax over the same keys, different kernels: float32 rounding ~1e-7; a wrong tile leaks O(1)
    torch.testing.assert_close(flex, dense, rtol=0, atol=1e-5)
    tiles = bm.kv_num_blocks.sum().item() + bm.full_kv_num_blocks.sum().item()
    n_tiles = (-(-n // block)) ** 2
    assert bm.kv_num_blocks.sum() > 0 and tiles < n_tiles  # masked tiles run, empty tiles are skipped
    assert (bm.full_kv_num_blocks.sum() > 0) == has_full  # 2-frame tiles of this layout are never all visible


def test_full_scale_teacher_forcing_block_mask_is_small():
    """21 latent frames of 480x832 (1560 tokens each) in the [clean | noisy] layout: 65,520 tokens, whose dense
    boolean mask would take 4.3 GB; the block mask holds a few (512 x 512) int32 tables."""
    mask = teacher_forcing_frame_mask(21, CausalConfig(chunk_size=3, cache_frames=7, sink_frames=1))
    bm = frame_block_mask(mask, 1560)
    tables = [bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices]
    assert sum(t.numel() * t.element_size() for t in tables) < 4 * 1024 * 1024
    assert bm.shape[-2:] == (42 * 1560, 42 * 1560)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_backend_is_saved_cached_and_never_builds_a_token_mask(tmp_path, monkeypatch):
    model = CausalWanTransformer(**preset_config("tiny", attention_backend="flex")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    clean, noisy, ctx = torch.randn(1, 12, 5, 4, 4), torch.randn(1, 12, 5, 4, 4), torch.randn(1, 3, 16)
    t, causal = torch.rand(1, 5) * 1000, CausalConfig(chunk_size=1, cache_frames=2, sink_frames=1)

    def no_dense(*args, **kwargs):
        raise AssertionError("the flex path built a dense token mask")

    monkeypatch.setattr(causal_wan, "expand_frame_mask", no_dense)
    with torch.no_grad():
        flex = model.forward_teacher_forcing(clean, noisy, t, ctx, causal)
        again = model.forward_teacher_forcing(clean, noisy, t, ctx, causal)
    assert len(model._block_masks) == 1  # the second forward reused the first one's block mask
    torch.testing.assert_close(again, flex, rtol=0, atol=0)  # same inputs, same mask object, same kernels
    monkeypatch.undo()
    model.save_pretrained(tmp_path / "m")
    loaded = CausalWanTransformer.from_pretrained(tmp_path / "m")
    assert loaded.attention_backend == "flex" and loaded.config.attention_backend == "flex"
    loaded.attention_backend = "sdpa"
    with torch.no_grad():
        dense = loaded.eval().forward_teacher_forcing(clean, noisy, t, ctx, causal)
    torch.testing.assert_close(flex, dense, rtol=0, atol=1e-4)  # flex == sdpa (float32 kernel rounding)
    with pytest.raises(ValueError, match="attention_backend"):
        model.attention_backend = "xformers"


@pytest.mark.parametrize(
    "layout,frames,cfg",
    [
        ("teacher_forcing", 5, CausalConfig(chunk_size=1, cache_frames=2, sink_frames=1)),
        ("teacher_forcing", 9, CausalConfig(chunk_size=1, cache_frames=7)),
        ("teacher_forcing", 7, CausalConfig(chunk_size=3, cache_frames=4, sink_frames=1)),
        ("causal", 7, CausalConfig(chunk_size=2, cache_frames=3)),
    ],
)
def test_frame_attention_equals_the_dense_mask_with_gradients(layout, frames, cfg):
    """The 'sdpa' backend's per-run SDPA calls give the dense-mask attention and its gradients (float32 rounding;
    a key frame shown to the wrong query run changes outputs by O(1)); query frames with the same visible keys share
    one call (a chunk of the causal layout)."""
    mask = (teacher_forcing_frame_mask if layout == "teacher_forcing" else causal_frame_mask)(frames, cfg)
    tpf = 3
    plan = frame_plan(mask, tpf)
    rows = mask.tolist()
    assert len(plan.groups) == 1 + sum(rows[i] != rows[i - 1] for i in range(1, len(rows)))
    for q0, q1, spans in plan.groups:  # the spans list exactly the visible key frames of every row of the run
        seen = torch.zeros(mask.shape[1], dtype=torch.bool)
        for a, b in spans:
            seen[a:b] = True
        assert all(torch.equal(mask[i], seen) for i in range(q0, q1))
    g = torch.Generator().manual_seed(0)
    n = mask.shape[0] * tpf
    qkv = [torch.randn(2, 2, n, 8, generator=g, requires_grad=True) for _ in range(3)]
    w = torch.randn(2, 2, n, 8, generator=g)
    dense = F.scaled_dot_product_attention(*qkv, attn_mask=expand_frame_mask(mask, tpf))
    grads_dense = torch.autograd.grad((dense * w).sum(), qkv)
    ours = frame_attention(*qkv, plan)
    grads_ours = torch.autograd.grad((ours * w).sum(), qkv)
    torch.testing.assert_close(ours, dense, rtol=0, atol=1e-5)
    for a, b in zip(grads_ours, grads_dense):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_frame_plan_refuses_a_query_frame_that_sees_nothing():
    mask = torch.eye(3, dtype=torch.bool)
    mask[1, 1] = False
    with pytest.raises(ValueError, match="query frame 1 sees no key frame"):
        frame_plan(mask, 4)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sdpa_backend_equals_the_dense_backend_without_a_token_mask(monkeypatch):
    """The default backend ('sdpa', as every committed export records) runs the teacher-forcing forward and its
    backward like the dense-mask reference ('dense'), never building a token mask, with one plan per layout."""
    model = CausalWanTransformer(**preset_config("tiny"))
    assert model.attention_backend == "sdpa"
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    g = torch.Generator().manual_seed(1)
    clean, noisy = torch.randn(2, 12, 6, 4, 4, generator=g), torch.randn(2, 12, 6, 4, 4, generator=g)
    ctx, t = torch.randn(2, 3, 16, generator=g), torch.rand(2, 6, generator=g) * 1000
    causal = CausalConfig(chunk_size=2, cache_frames=3, sink_frames=1)

    def run():
        model.zero_grad()
        out = model.forward_teacher_forcing(clean, noisy, t, ctx, causal)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    def no_dense(*args, **kwargs):
        raise AssertionError("the sdpa path built a dense token mask")

    monkeypatch.setattr(causal_wan, "expand_frame_mask", no_dense)
    out, grads = run()
    run()
    assert len(model._block_masks) == 1  # the second forward reused the first one's plan
    monkeypatch.undo()
    model.attention_backend = "dense"
    out_dense, grads_dense = run()
    torch.testing.assert_close(out, out_dense, rtol=0, atol=1e-5)
    assert len(grads) == len(grads_dense) > 0
    assert max((a - b).abs().max().item() for a, b in zip(grads, grads_dense)) < 1e-5
