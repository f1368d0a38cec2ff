"""CUDA-only checks (skipped with a reason on CPU-only machines, listed in the pytest summary)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ardrag.models import CausalConfig, CausalWanTransformer, preset_config


@pytest.mark.gpu
def test_cuda_bf16_cached_forward_matches_cpu_fp32():
    torch.manual_seed(0)
    model = CausalWanTransformer(**preset_config("tiny", cond_in_channels=3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    causal = CausalConfig(cache_frames=3)
    clean, noisy = torch.randn(1, 12, 6, 4, 4), torch.randn(1, 12, 6, 4, 4)
    cond, ctx, t = torch.randn(1, 3, 6, 4, 4), torch.randn(1, 5, 16), torch.rand(1, 6) * 1000
    with torch.no_grad():
        ref = model.forward_teacher_forcing(clean, noisy, t, ctx, causal, cond=cond)
        gpu = model.to("cuda", torch.bfloat16)
        cache = gpu.new_cache(causal, 4, 4)
        outs = []
        for s in range(6):
            args = (ctx.cuda(), cache, s)
            outs.append(
                gpu.forward_cached(
                    noisy[:, :, s : s + 1].cuda(),
                    t[:, s : s + 1].cuda(),
                    *args,
                    cond=cond[:, :, s : s + 1].cuda(),
                )
                .float()
                .cpu()
            )
            gpu.forward_cached(
                clean[:, :, s : s + 1].cuda(),
                torch.zeros(1, 1, device="cuda"),
                *args,
                cond=cond[:, :, s : s + 1].cuda(),
                write=True,
            )
    err = (torch.cat(outs, 2) - ref).abs().max().item()
    assert err < 0.1 * ref.abs().max().item()  # bf16 has ~3 significant digits


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cuda_flex_attention_matches_dense_mask():
    model = CausalWanTransformer(**preset_config("tiny")).eval().cuda()
    clean, noisy = torch.randn(1, 12, 5, 8, 8, device="cuda"), torch.randn(1, 12, 5, 8, 8, device="cuda")
    ctx, t = torch.randn(1, 3, 16, device="cuda"), torch.rand(1, 5, device="cuda") * 1000
    causal = CausalConfig(cache_frames=2, sink_frames=1)
    with torch.no_grad():
        dense = model.forward_teacher_forcing(clean, noisy, t, ctx, causal)
        model.attention_backend = "flex"
        flex = model.forward_teacher_forcing(clean, noisy, t, ctx, causal)
    assert np.isclose((dense - flex).abs().max().item(), 0.0, atol=1e-3)


@pytest.mark.gpu
def test_cpu_generator_drives_cuda_sde_noise():
    from ardrag.sampling import randn, sde_step

    x, v = torch.randn(1, 12, 2, 4, 4, device="cuda"), torch.randn(1, 12, 2, 4, 4, device="cuda")
    out = sde_step(x, v, 0.6, 0.4, 0.7, generator=torch.Generator().manual_seed(0))
    eps = randn(x.shape, torch.Generator().manual_seed(0), "cpu")  # the same numbers as on the CPU
    assert out.sample.device.type == "cuda"
    torch.testing.assert_close((out.sample - out.mean).cpu(), float(out.std) * eps, rtol=0, atol=1e-5)
