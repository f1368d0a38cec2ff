"""Flow-matching schedule, ODE/SDE steps, guidance and the frame-wise rollout."""

from __future__ import annotations

import math

import pytest
import torch

from ardrag.models import CausalConfig, CausalWanTransformer, preset_config
from ardrag.sampling import (
    Conditions,
    Denoiser,
    FlowSchedule,
    RolloutConfig,
    iter_rollout,
    ode_step,
    randn,
    sde_kl,
    sde_noise_rate,
    sde_step,
    shift_sigma,
)


def test_default_schedule_is_the_papers():
    assert FlowSchedule().sigmas().tolist() == pytest.approx([1.0, 0.755, 0.522, 0.0])


def test_shifted_uniform_schedule():
    sig = FlowSchedule(timesteps=None, num_steps=4, shift=5.0).sigmas()
    expected = [5 * s / (1 + 4 * s) for s in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    assert sig.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(shift_sigma(0.5, 1.0)) == 0.5


@pytest.mark.parametrize("bad", [[], [1000, 1000], [500, 700], [0.0], [1200]])
def test_schedule_rejects_bad_timesteps(bad):
    with pytest.raises(ValueError):
        FlowSchedule(timesteps=bad)


def test_ode_step_is_exact_on_a_straight_flow_path():
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    v = eps - x0  # constant velocity along x_s = (1 - s) x0 + s eps
    sig = FlowSchedule().sigmas().tolist()
    x = eps.clone()
    for s, s_next in zip(sig, sig[1:]):
        x = ode_step(x, v, s, s_next)
        assert torch.allclose(x, (1 - s_next) * x0 + s_next * eps, atol=1e-6)
    assert torch.allclose(x, x0, atol=1e-6)


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.755), (0.755, 0.522), (0.522, 0.1)])
def test_sde_log_prob_matches_torch_normal(sigma, sigma_next):
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 2, 5, 5, generator=g), torch.randn(3, 4, 2, 5, 5, generator=g)
    out = sde_step(x, v, sigma, sigma_next, noise_level=0.7, generator=g)
    scale = sde_noise_rate(sigma, sigma_next, 0.7) * math.sqrt(sigma - sigma_next)
    ref = torch.distributions.Normal(out.mean, scale).log_prob(out.sample).mean(dim=(1, 2, 3, 4))
    assert torch.isfinite(out.sample).all() and torch.isfinite(out.log_prob).all()
    assert torch.allclose(out.log_prob, ref, atol=1e-5)
    # scoring the same sample again (GRPO's ratio) gives the same log-prob; a different sample a lower one
    again = sde_step(x, v, sigma, sigma_next, 0.7, prev_sample=out.sample)
    assert torch.allclose(again.log_prob, out.log_prob)
    far = sde_step(x, v, sigma, sigma_next, 0.7, prev_sample=out.sample + 3 * scale)
    assert (far.log_prob < out.log_prob).all()


def test_sde_step_at_sigma_one_uses_next_sigma_and_is_finite():
    x, v = torch.randn(1, 8), torch.randn(1, 8)
    assert sde_noise_rate(1.0, 0.755, 0.7) == pytest.approx(0.7 * math.sqrt(1 / (1 - 0.755)))
    out = sde_step(x, v, 1.0, 0.755, 0.7)
    assert torch.isfinite(out.mean).all() and torch.isfinite(out.log_prob).all()


def test_sde_mean_is_the_design_formula_and_noise_zero_is_ode():
    x, v = torch.randn(2, 6), torch.randn(2, 6)
    s, sn, a = 0.755, 0.522, 0.7
    std, dt = sde_noise_rate(s, sn, a), sn - s
    mean = x * (1 + std**2 * dt / (2 * s)) + v * (1 + std**2 * (1 - s) / (2 * s)) * dt
    assert torch.allclose(sde_step(x, v, s, sn, a).mean, mean, atol=1e-6)
    assert torch.allclose(sde_step(x, v, s, sn, 1e-8).mean, ode_step(x, v, s, sn), atol=1e-6)


def test_sde_kl_is_zero_for_equal_means_and_matches_formula():
    m = torch.randn(2, 10)
    assert torch.equal(sde_kl(m, m, 0.3), torch.zeros(2))
    assert torch.allclose(sde_kl(m + 0.3, m, 0.3), torch.full((2,), 0.5))


def _tiny_model() -> CausalWanTransformer:
    model = CausalWanTransformer(**preset_config("tiny", cond_in_channels=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def _conds(frames: int = 5) -> Conditions:
    return Conditions(torch.randn(1, 4, 16), torch.randn(1, 2, frames, 4, 4), torch.zeros(1, 4, 16))


@pytest.mark.parametrize("chunk,window,sinks", [(1, 2, 0), (1, 3, 1), (2, 2, 0)])
def test_cached_rollout_equals_masked_recompute(chunk, window, sinks):
    model, conds = _tiny_model(), _conds(6)
    noise = torch.randn(1, 12, 6, 4, 4)
    for guidance in (1.0, 3.0):
        den = Denoiser(model, conds, guidance)
        causal = CausalConfig(chunk, window, sinks)
        with torch.no_grad():
            a = torch.cat([c.clean for c in iter_rollout(den, noise, RolloutConfig(causal=causal))], 2)
            cfg = RolloutConfig(causal=causal, use_kv_cache=False)
            b = torch.cat([c.clean for c in iter_rollout(den, noise, cfg)], 2)
        assert (a - b).abs().max().item() <= 1e-4


def test_guidance_combines_conditional_and_unconditional():
    model = _tiny_model()
    conds = Conditions(torch.randn(1, 4, 16), torch.randn(1, 2, 3, 4, 4), torch.randn(1, 4, 16))
    x, t = torch.randn(1, 12, 3, 4, 4), torch.full((1, 3), 500.0)
    with torch.no_grad():
        vc = model(x, t, conds.context, cond=conds.cond)
        vu = model(x, t, conds.negative_context, cond=conds.cond)
        v = Denoiser(model, conds, 4.0).full(x, t)
    assert torch.allclose(v, vu + 4.0 * (vc - vu), atol=1e-5)


def test_rollout_marks_one_sde_step_and_one_gradient_step_per_frame():
    model, conds = _tiny_model(), _conds(4)
    den = Denoiser(model, conds)
    noise = torch.randn(1, 12, 4, 4, 4)
    sde, grad = [0, 2, 1, -1], [1, 1, 0, 2]
    chunks = list(iter_rollout(den, noise, RolloutConfig(last_step_std=0.02), sde_steps=sde, grad_steps=grad))
    assert [c.sde_step for c in chunks] == sde and [c.grad_step for c in chunks] == grad
    assert all(torch.isfinite(c.log_prob).all() for c in chunks[:3]) and chunks[3].log_prob is None
    assert all(not c.clean.requires_grad for c in chunks)  # the cache holds detached self-generated frames
    loss = sum(c.grad_x0.square().mean() for c in chunks)
    loss.backward()
    assert model.proj_out.weight.grad.abs().sum() > 0
    # the deterministic path: with no SDE step the rollout reproduces itself exactly
    with torch.no_grad():
        a = torch.cat([c.clean for c in iter_rollout(den, noise, RolloutConfig())], 2)
        b = torch.cat([c.clean for c in iter_rollout(den, noise, RolloutConfig())], 2)
    assert torch.equal(a, b)


def test_rollout_rejects_wrong_step_lists():
    den = Denoiser(_tiny_model(), _conds(3))
    with pytest.raises(ValueError, match="sde_steps"):
        next(iter_rollout(den, torch.randn(1, 12, 3, 4, 4), RolloutConfig(), sde_steps=[0, 1]))
    with pytest.raises(ValueError, match="grad_steps"):
        next(iter_rollout(den, torch.randn(1, 12, 3, 4, 4), RolloutConfig(), grad_steps=[0, 1, 3]))


def test_sde_step_std_is_the_transition_std_that_sde_kl_takes():
    """One convention: SDEStep.std = noise_rate * sqrt(s - s_next) is the std of the sampled x' around its mean (checked
    empirically) and the std sde_kl expects (a mean shifted by one std gives KL 1/2); the action is float32."""
    s, sn, a = 0.755, 0.522, 0.7
    x, v = torch.randn(1, 200_000).to(torch.bfloat16), torch.randn(1, 200_000)
    out = sde_step(x, v, s, sn, a, generator=torch.Generator().manual_seed(3))
    assert float(out.std) == pytest.approx(sde_noise_rate(s, sn, a) * math.sqrt(s - sn))
    # 200k samples: the empirical std is within ~0.3% of the true one
    assert float((out.sample - out.mean).std()) == pytest.approx(float(out.std), rel=0.01)
    assert torch.allclose(sde_kl(out.mean + out.std, out.mean, out.std), torch.full((1,), 0.5))
    # the stored action stays float32 even for bf16 states, so re-scoring it gives exactly the rollout's log-prob
    assert out.sample.dtype == torch.float32
    again = sde_step(x, v, s, sn, a, prev_sample=out.sample)
    assert torch.equal(again.log_prob, out.log_prob)


def test_sde_noise_follows_the_one_device_safe_rule():
    """sde_step draws its noise with `randn` (on the generator's device, then moved), as every other sampler."""
    x, v = torch.randn(2, 12, 3, 4, 4), torch.randn(2, 12, 3, 4, 4)
    out = sde_step(x, v, 0.6, 0.4, 0.7, generator=torch.Generator().manual_seed(3))
    eps = randn(x.shape, torch.Generator().manual_seed(3), x.device)
    scale = float(out.std)
    # mean + scale * eps recomputed here: one fused multiply-add of float32 values of magnitude ~3
    torch.testing.assert_close(out.sample, out.mean + scale * eps, rtol=0, atol=1e-6)


def test_no_generator_driven_randn_outside_the_helper():
    """One rule for seeded noise: `sampling.randn`. A direct torch.randn/randn_like(generator=..., device=...) on a
    model device raises when a CPU generator meets CUDA tensors (draws without device= stay on the CPU: allowed)."""
    import ast
    import pathlib

    import ardrag

    offenders = []
    for path in pathlib.Path(ardrag.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("randn", "randn_like")
                and {"generator", "device"} <= {k.arg for k in node.keywords}
                and not (path.name == "sampling.py" and _enclosing_def(tree, node) == "randn")
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def _enclosing_def(tree, target) -> str | None:
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(n is target for n in ast.walk(node)):
            return node.name
    return None


@pytest.mark.parametrize("sde_type", ["flow_grpo", "cps"])
def test_sde_step_to_sigma_zero_keeps_exactly_last_step_std_of_noise(sde_type):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 1, 32, 32, generator=g), torch.randn(2, 4, 1, 32, 32, generator=g)
    s = 0.522
    x = (1 - s) * x0 + s * eps
    with pytest.raises(ValueError, match="last_step_std"):
        sde_step(x, eps - x0, s, 0.0, 0.7, sde_type=sde_type)
    out = sde_step(x, eps - x0, s, 0.0, 0.7, g, sde_type=sde_type, last_step_std=0.02)
    torch.testing.assert_close(out.mean, x0, atol=1e-5, rtol=0)  # the deterministic step: the clean frame
    assert abs(float((out.sample - x0).std()) - 0.02) < 0.001 and float(out.std) == pytest.approx(0.02)
    ref = torch.distributions.Normal(out.mean, 0.02).log_prob(out.sample).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(out.log_prob, ref, atol=1e-4, rtol=1e-5)


def test_cps_step_stays_on_the_deterministic_marginal_and_flow_grpo_does_not():
    """Exact velocity, x_s = (1 - s) x0 + s eps: after a CPS step (x' - (1 - s') x0) / s' is unit noise for any noise
    level; Flow-GRPO's step widens it with the paper's coarse steps (the rollouts leave the deployed sampler's
    path)."""
    g = torch.Generator().manual_seed(0)
    shape = (4, 4, 1, 64, 64)
    x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    sig = FlowSchedule().sigmas().tolist()  # 1, 0.755, 0.522, 0
    for s, s_next in zip(sig[:2], sig[1:3]):
        x = (1 - s) * x0 + s * eps
        for a in (0.3, 0.7, 1.0):
            cps = sde_step(x, eps - x0, s, s_next, a, g, sde_type="cps")
            z = (cps.sample - (1 - s_next) * x0) / s_next
            assert abs(float(z.std()) - 1.0) < 0.01 and abs(float(z.mean())) < 0.01
            assert float(cps.std) == pytest.approx(s_next * math.sin(a * math.pi / 2))
        fg = sde_step(x, eps - x0, s, s_next, 0.7, g)
        assert float(((fg.sample - (1 - s_next) * x0) / s_next).std()) > 1.1
