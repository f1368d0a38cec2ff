"""DMD pieces: the generator gradient (zero when critic == teacher at guidance 1, pointing from the fake toward
the real distribution), no critic gradient from the generator loss, a critic flow loss that falls, and the
ODE-regression warm start (exact states on a Gaussian flow, a loss that falls)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from ardrag.models import CausalConfig, CausalWanTransformer, preset_config
from ardrag.sampling import Conditions, Denoiser, FlowSchedule, RolloutConfig
from ardrag.training.dmd import (
    AdversarialHead,
    DMDConfig,
    critic_loss,
    dmd_gradient,
    dmd_loss,
    generator_loss,
    ode_regression_loss,
    teacher_ode_states,
)


class GaussianFlow(nn.Module):
    """The exact flow-matching velocity for data x0 ~ N(mu, sd^2) per element (same call signature as the DiT)."""

    def __init__(self, mu: float, sd: float = 1.0):
        super().__init__()
        self.mu, self.sd = mu, sd
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, timestep, context, cond=None, encoder_hidden_states_image=None):
        s = (timestep / 1000).view(x.shape[0], 1, x.shape[2], 1, 1)
        var = self.sd**2
        x0 = self.mu + (1 - s) * var / ((1 - s) ** 2 * var + s**2) * (x - (1 - s) * self.mu)
        return (x - x0) / s + 0 * self.dummy


def _tiny(seed=0) -> CausalWanTransformer:
    torch.manual_seed(seed)
    model = CausalWanTransformer(**preset_config("tiny", cond_in_channels=2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def _conds(frames=3) -> Conditions:
    return Conditions(torch.randn(2, 4, 16), torch.randn(2, 2, frames, 4, 4), torch.randn(2, 4, 16))


def test_dmd_gradient_is_zero_when_critic_equals_teacher_at_guidance_one():
    teacher, conds = _tiny(), _conds()
    critic = copy.deepcopy(teacher)
    x = torch.randn(2, 12, 3, 4, 4, requires_grad=True)
    out = generator_loss(
        x, Denoiser(teacher, conds, 1.0), Denoiser(critic, conds), DMDConfig(real_guidance=1.0)
    )
    out.loss.backward()
    assert out.grad_norm.item() == 0.0 and out.dmd.item() == 0.0 and x.grad.abs().max().item() == 0.0
    guided = generator_loss(x, Denoiser(teacher, conds, 3.0), Denoiser(critic, conds), DMDConfig())
    assert guided.grad_norm.item() > 1e-2  # guidance makes the real score differ from the critic's


def test_dmd_loss_gradient_is_the_normalised_score_difference():
    x = torch.randn(2, 5, 3, requires_grad=True)
    real, fake = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    grad = dmd_gradient(x.detach(), real, fake)
    norm = (x.detach() - real).abs().mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(grad, (fake - real) / norm)
    dmd_loss(x, grad).backward()
    assert torch.allclose(x.grad, grad / x.numel(), atol=1e-7)


def test_dmd_step_moves_samples_from_the_fake_toward_the_real_distribution():
    conds = Conditions(torch.zeros(64, 1, 4), None, torch.zeros(64, 1, 4))
    real, fake = Denoiser(GaussianFlow(1.0), conds), Denoiser(GaussianFlow(-1.0), conds)
    g = torch.Generator().manual_seed(0)
    x = -1.0 + torch.randn(64, 4, 2, 3, 3, generator=g)  # samples of the current (fake) distribution
    cfg = DMDConfig(real_guidance=1.0)
    means = [x.mean().item()]
    for _ in range(5):  # the critic is held at the initial fake distribution: only the direction is tested
        x = x.detach().requires_grad_(True)
        generator_loss(x, real, fake, cfg, generator=g).loss.backward()
        x = x - 0.1 * x.grad * x.numel()  # x.grad = dmd_gradient / numel
        means.append(x.mean().item())
    print("sample mean per DMD step:", [round(m, 3) for m in means], "(real mean 1)")
    assert all(b > a + 0.05 for a, b in zip(means, means[1:]))
    assert means[-1] > means[0] + 0.3 and means[-1] < 1.0


def test_critic_gets_no_gradient_from_the_generator_loss():
    teacher, critic, conds = _tiny(0), _tiny(1), _conds()
    head = AdversarialHead(critic.inner_dim, hidden=8)
    cfg = DMDConfig(adversarial_weight=0.5)
    x = torch.randn(2, 12, 3, 4, 4, requires_grad=True)
    out = generator_loss(x, Denoiser(teacher, conds, 3.0), Denoiser(critic, conds), cfg, head=head)
    out.loss.backward()
    assert out.adversarial.item() > 0 and x.grad.abs().sum().item() > 0
    assert all(p.grad is None for p in [*critic.parameters(), *head.parameters(), *teacher.parameters()])
    assert all(p.requires_grad for p in [*critic.parameters(), *head.parameters()])  # unfrozen afterwards
    # the critic step trains the critic and the head
    c = critic_loss(x.detach(), Denoiser(critic, conds), cfg, head=head, x_real=torch.randn_like(x))
    c.loss.backward()
    assert critic.proj_out.weight.grad.abs().sum() > 0 and head.net[1].weight.grad.abs().sum() > 0


def test_critic_flow_loss_falls_on_fixed_samples():
    critic, conds = _tiny(), _conds()
    den = Denoiser(critic, conds)
    x = torch.randn(2, 12, 3, 4, 4) * 0.5 + 0.3
    opt = torch.optim.AdamW(critic.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = critic_loss(x, den, DMDConfig(), generator=torch.Generator().manual_seed(0)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_teacher_ode_states_follow_the_exact_gaussian_flow():
    conds = Conditions(torch.zeros(4, 1, 4))
    mu = 0.7
    noise = torch.randn(4, 3, 2, 2, 2)
    sched = FlowSchedule()
    states, x0 = teacher_ode_states(Denoiser(GaussianFlow(mu), conds), noise, sched, teacher_steps=400)
    assert states.shape == (3, *noise.shape)
    for state, s in zip(states, sched.sigmas()[:-1].tolist()):  # x_s = (1 - s) mu + sqrt((1 - s)^2 + s^2) eps
        assert torch.allclose(state, (1 - s) * mu + ((1 - s) ** 2 + s**2) ** 0.5 * noise, atol=2e-2)
    assert torch.allclose(x0, mu + noise, atol=2e-2)


def test_ode_regression_loss_falls():
    student = _tiny()
    conds = Conditions(torch.randn(2, 4, 16), torch.randn(2, 2, 4, 4, 4))
    cfg = RolloutConfig(causal=CausalConfig(chunk_size=1, cache_frames=2))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 12, 4, 4, 4, generator=g)
    states, x0 = teacher_ode_states(Denoiser(GaussianFlow(0.5, 0.5), conds), noise, cfg.schedule, 50)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    den = Denoiser(student, conds)
    losses = []
    for _ in range(40):
        loss = ode_regression_loss(den, states, x0, cfg, generator=torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_config_rejects_bad_sigma_range():
    with pytest.raises(ValueError):
        DMDConfig(min_sigma=0.5, max_sigma=0.2)
