"""The causal Wan backbone: base-model equivalence, cache == masked forward, checkpoints, the 1.3B preset."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from ardrag.models import CausalConfig, CausalWanTransformer, count_parameters, preset_config
from ardrag.models.attention import teacher_forcing_frame_mask

TINY = preset_config("tiny")  # 12 latent channels, text_dim 16


def _randomised(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    # zero-initialised layers (diffusers inits some to zero) would hide attention bugs: randomise everything
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def test_zero_initialised_condition_channels_reproduce_base_model():
    base = _randomised(WanTransformer3DModel(**TINY))
    model = CausalWanTransformer(**TINY, cond_in_channels=7).eval()
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert result.missing_keys == ["cond_embedding.weight"] and not result.unexpected_keys
    x, ctx = torch.randn(2, 12, 3, 8, 8), torch.randn(2, 5, 16)
    t = torch.tensor([900.0, 250.0])
    with torch.no_grad():
        ref = base(x, t, ctx).sample
        out = model(x, t, ctx, cond=torch.randn(2, 7, 3, 8, 8))
    # Bidirectional mode is the base model. Our forward and diffusers' are different code (different op order,
    # so kernels may round differently by CPU): float32 rounding gives ~1.5e-6 on outputs of magnitude ~5; a wrong
    # weight, channel or timestep embedding would differ by > 1e-2.
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_added_condition_channels_start_at_zero_and_learn():
    model = _randomised(CausalWanTransformer(**TINY))
    x, ctx, t = torch.randn(1, 12, 2, 4, 4), torch.randn(1, 3, 16), torch.tensor([500.0])
    with torch.no_grad():
        before = model(x, t, ctx)
    model.add_condition_channels(5)
    assert model.config.cond_in_channels == 5
    cond = torch.randn(1, 5, 2, 4, 4)
    out = model(x, t, ctx, cond=cond)
    # zero-initialised channels add exact zeros in IEEE arithmetic; the tolerance only guards against a kernel that
    # reassociates the patch-embedding sum differently once the new layer exists (a non-zero init gives > 1e-2)
    torch.testing.assert_close(out.detach(), before, rtol=0, atol=1e-6)
    out.square().mean().backward()
    assert model.cond_embedding.weight.grad.abs().sum() > 0  # the new channels receive gradient


@pytest.mark.parametrize(
    "chunk,window,sinks,frames", [(1, 3, 0, 8), (1, 3, 1, 8), (2, 4, 0, 8), (3, 6, 1, 9), (1, 7, 0, 5)]
)
def test_kv_cache_equals_masked_teacher_forcing_forward(chunk, window, sinks, frames):
    """Frame-wise cached generation == the [clean | noisy] masked forward with the same window and sinks."""
    model = _randomised(CausalWanTransformer(**TINY, cond_in_channels=3))
    causal = CausalConfig(chunk_size=chunk, cache_frames=window, sink_frames=sinks)
    clean, noisy = torch.randn(2, 12, frames, 4, 4), torch.randn(2, 12, frames, 4, 4)
    cond, ctx = torch.randn(2, 3, frames, 4, 4), torch.randn(2, 5, 16)
    t = torch.rand(2, frames) * 1000
    with torch.no_grad():
        ref = model.forward_teacher_forcing(clean, noisy, t, ctx, causal, cond=cond)
        cache = model.new_cache(causal, 4, 4)
        outs = []
        for s in range(0, frames, chunk):
            sl = slice(s, s + chunk)
            outs.append(model.forward_cached(noisy[:, :, sl], t[:, sl], ctx, cache, s, cond=cond[:, :, sl]))
            zero = torch.zeros(2, noisy[:, :, sl].shape[2])
            model.forward_cached(clean[:, :, sl], zero, ctx, cache, s, cond=cond[:, :, sl], write=True)
            assert cache.num_cached_frames() <= window + chunk - 1
    diff = (torch.cat(outs, dim=2) - ref).abs().max().item()
    assert diff <= 1e-4
    # the window really bites: without eviction the last frame's output would differ
    assert frames <= window or cache.frames[0] > 0 or sinks > 0


def test_window_changes_the_output_past_the_window():
    model = _randomised(CausalWanTransformer(**TINY))
    clean, noisy, ctx = torch.randn(1, 12, 6, 4, 4), torch.randn(1, 12, 6, 4, 4), torch.randn(1, 3, 16)
    t = torch.full((1, 6), 600.0)
    with torch.no_grad():
        short = model.forward_teacher_forcing(clean, noisy, t, ctx, CausalConfig(cache_frames=2))
        long = model.forward_teacher_forcing(clean, noisy, t, ctx, CausalConfig(cache_frames=7))
    assert torch.allclose(
        short[:, :, :3], long[:, :, :3], atol=1e-5
    )  # frames 0-2 see <= 2 past frames anyway
    assert (short[:, :, 3:] - long[:, :, 3:]).abs().max() > 1e-3


def test_causal_mask_forward_ignores_the_future():
    model = _randomised(CausalWanTransformer(**TINY))
    x, ctx, t = torch.randn(1, 12, 5, 4, 4), torch.randn(1, 3, 16), torch.rand(1, 5) * 1000
    causal = CausalConfig(chunk_size=1, cache_frames=7)
    with torch.no_grad():
        a = model(x, t, ctx, causal=causal)
        x2 = x.clone()
        x2[:, :, 3:] += 1.0
        b = model(x2, t, ctx, causal=causal)
    # past frames do not see the change: equal up to float32 rounding (a leak through the mask gives > 1e-3)
    assert (a[:, :, :3] - b[:, :, :3]).abs().max() <= 1e-6
    assert (a[:, :, 3:] - b[:, :, 3:]).abs().max() > 1e-3


def test_teacher_forcing_mask_layout():
    m = teacher_forcing_frame_mask(4, CausalConfig(chunk_size=2, cache_frames=2))
    # noisy frame 3 (row 7) sees clean 0, 1 (past chunk, window 2) and noisy 2, 3 (own chunk), nothing else
    assert m[7].nonzero().flatten().tolist() == [0, 1, 6, 7]
    # clean frame 1 (row 1) sees clean 0, 1 only
    assert m[1].nonzero().flatten().tolist() == [0, 1]


def test_save_pretrained_round_trip_is_bitwise(tmp_path):
    model = _randomised(CausalWanTransformer(**TINY, cond_in_channels=4))
    model.save_pretrained(tmp_path / "m")
    loaded = CausalWanTransformer.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.cond_in_channels == 4
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    x, ctx, t = torch.randn(1, 12, 2, 4, 4), torch.randn(1, 3, 16), torch.tensor([300.0])
    cond = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx, cond=cond), loaded(x, t, ctx, cond=cond))


def test_loads_a_diffusers_wan_folder_and_matches_it(tmp_path):
    base = _randomised(WanTransformer3DModel(**TINY))
    base.save_pretrained(tmp_path / "wan")  # what a diffusers-format Wan2.1 transformer folder looks like
    model = CausalWanTransformer.from_pretrained(tmp_path / "wan").eval()
    x, ctx, t = torch.randn(1, 12, 2, 4, 4), torch.randn(1, 3, 16), torch.tensor([700.0])
    with torch.no_grad():
        diff = (model(x, t, ctx) - base(x, t, ctx).sample).abs().max().item()
    assert diff <= 1e-5  # same weights; from_pretrained's loading path reorders a few float ops


def test_wan21_13b_preset_has_the_real_parameter_count():
    cfg = preset_config("wan2.1-1.3b")
    with torch.device("meta"):
        ours = CausalWanTransformer(**cfg)
        ref = WanTransformer3DModel(**cfg)
    # 1,418,996,800 parameters: Wan2.1-T2V-1.3B's transformer (dim 1536, 30 layers, ffn 8960)
    assert count_parameters(ours) == count_parameters(ref) == 1_418_996_800
    assert ours.inner_dim == 1536 and len(ours.blocks) == 30


def test_per_frame_timesteps_change_only_their_frame_under_causal_mask():
    model = _randomised(CausalWanTransformer(**TINY))
    x, ctx = torch.randn(1, 12, 4, 4, 4), torch.randn(1, 3, 16)
    causal = CausalConfig(cache_frames=7)
    t1 = torch.tensor([[800.0, 600.0, 400.0, 200.0]])
    t2 = t1.clone()
    t2[0, 2] = 100.0
    with torch.no_grad():
        a, b = model(x, t1, ctx, causal=causal), model(x, t2, ctx, causal=causal)
    assert (a[:, :, :2] - b[:, :, :2]).abs().max() <= 1e-6  # rounding only; a leak gives > 1e-3
    assert (a[:, :, 2] - b[:, :, 2]).abs().max() > 1e-3


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _randomised(CausalWanTransformer(**TINY)).train()
    x, ctx, t = torch.randn(1, 12, 3, 4, 4), torch.randn(1, 3, 16), torch.rand(1, 3) * 1000
    causal = CausalConfig()
    model(x, t, ctx, causal=causal).square().mean().backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x, t, ctx, causal=causal).square().mean().backward()
    g2 = [p.grad for p in model.parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2)) < 1e-5


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_attention_backend_equals_dense_mask():
    model = _randomised(CausalWanTransformer(**TINY))
    clean, noisy, ctx = torch.randn(1, 12, 5, 4, 4), torch.randn(1, 12, 5, 4, 4), torch.randn(1, 3, 16)
    t, causal = torch.rand(1, 5) * 1000, CausalConfig(chunk_size=1, cache_frames=2, sink_frames=1)
    with torch.no_grad():
        dense = model.forward_teacher_forcing(clean, noisy, t, ctx, causal)
        model.attention_backend = "flex"
        flex = model.forward_teacher_forcing(clean, noisy, t, ctx, causal)
    assert (dense - flex).abs().max().item() <= 1e-4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bf16_weights_take_fp32_latents_and_return_fp32():
    model = _randomised(CausalWanTransformer(**TINY, cond_in_channels=3), std=0.1)
    x, ctx, t, cond = (
        torch.randn(1, 12, 3, 4, 4),
        torch.randn(1, 5, 16),
        torch.rand(1, 3) * 1000,
        torch.randn(1, 3, 3, 4, 4),
    )
    causal = CausalConfig()
    with torch.no_grad():
        ref = model(x, t, ctx, cond=cond, causal=causal)
        out = model.to(torch.bfloat16)(x, t, ctx, cond=cond, causal=causal)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.03 * ref.abs().max()  # bf16 rounding only


def test_sample_prediction_returns_the_velocity_of_its_x0_estimate():
    """prediction_type='sample': proj_out predicts x0 and forward returns v = (x_s - x0_hat) / max(s, s_min), so every
    caller (samplers, DMD, GRPO) keeps using velocities; the flow-matching target agrees with that conversion."""
    from ardrag.sampling import velocity_target

    vel = _randomised(CausalWanTransformer(**TINY))
    smp = CausalWanTransformer(**TINY, prediction_type="sample")
    smp.load_state_dict(vel.state_dict())
    smp.eval()
    x, ctx = torch.randn(2, 12, 3, 8, 8), torch.randn(2, 5, 16)
    t = torch.tensor([[900.0, 500.0, 20.0], [100.0, 1000.0, 0.0]])  # per frame, two below s_min = 0.05
    with torch.no_grad():
        x0_hat = vel(x, t, ctx)  # same weights: the velocity model's raw output is the sample model's x0
        v = smp(x, t, ctx)
    s = (t / 1000).clamp_min(0.05)[:, None, :, None, None]
    # one division in float32 of values ~1..20: rounding ~1e-6 relative
    torch.testing.assert_close(v, (x - x0_hat) / s, rtol=1e-5, atol=1e-5)
    x0, eps = torch.randn_like(x), torch.randn_like(x)
    sig = torch.tensor([0.3, 0.8]).view(2, 1, 1, 1, 1)
    xs = (1 - sig) * x0 + sig * eps
    # at s >= s_min the target is eps - x0 for both parameterisations (same math, different op order)
    torch.testing.assert_close(velocity_target(smp, xs, x0, eps, sig), eps - x0, rtol=1e-5, atol=1e-5)
    assert torch.equal(velocity_target(vel, xs, x0, eps, sig), eps - x0)
    with pytest.raises(ValueError, match="prediction_type"):
        CausalWanTransformer(**TINY, prediction_type="epsilon")


def test_sample_base_adds_a_condition_latent_to_the_x0_estimate():
    """sample_base=(a, b): x0_hat = network output + cond[:, a:b] (the reference latent repeated in every frame)."""
    vel = _randomised(CausalWanTransformer(**TINY, cond_in_channels=25))
    based = CausalWanTransformer(**TINY, cond_in_channels=25, prediction_type="sample", sample_base=(12, 24))
    based.load_state_dict(vel.state_dict())
    based.eval()
    x, ctx, cond = torch.randn(1, 12, 2, 4, 4), torch.randn(1, 3, 16), torch.randn(1, 25, 2, 4, 4)
    t = torch.tensor([[600.0, 300.0]])
    with torch.no_grad():
        out = vel(x, t, ctx, cond=cond)  # the same weights' raw output
        v = based(x, t, ctx, cond=cond)
    s = (t / 1000)[:, None, :, None, None]
    torch.testing.assert_close(v, (x - (out + cond[:, 12:24])) / s, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sample_base"):
        CausalWanTransformer(**TINY, sample_base=(12, 24))  # needs prediction_type 'sample'
