"""Distribution matching distillation (DMD) in plain torch: the generator's DMD loss, the critic's flow-matching
loss, an optional light adversarial head on critic features, and the optional ODE-regression warm start.

Notation (docs/method.md): x_s = (1 - s) x0 + s eps, a model predicts v ~ eps - x0, x0_hat = x_s - s v, t = 1000 s.
Generator step: draw s, noise the student's sample x; real = teacher x0-prediction with guidance g, fake = critic
x0-prediction; grad = (fake - real) / mean|x - real|; loss = 0.5 ||x - stopgrad(x - grad)||^2 (dloss/dx = grad /
numel). Critic step: flow matching of the critic on detached student samples. Teacher and critic are
bidirectional models (`Denoiser.full`); the student is whatever produced x.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ardrag.sampling import (
    NUM_TRAIN_TIMESTEPS,
    Denoiser,
    FlowSchedule,
    RolloutConfig,
    context_frames,
    conversion_sigma,
    randn,
    shift_sigma,
    velocity_target,
)


@dataclass
class DMDConfig:
    """Knobs of the DMD losses (the numbers that define the distillation)."""

    real_guidance: float = 3.0
    """Classifier-free guidance g of the teacher's (real score's) x0-prediction, in the one convention of this
    package (`ardrag.sampling.Denoiser`, diffusers, Wan): uncond + g (cond - uncond), so g = 1 is the conditional
    prediction alone. Self-Forcing writes cond + g' (cond - uncond); its g' = 3 for Wan is g = 4 here."""
    min_sigma: float = 0.02
    """Noise levels s for the DMD and critic losses are drawn in [min_sigma, max_sigma] (away from 0 and 1)."""
    max_sigma: float = 0.98
    sigma_shift: float = 1.0
    """Timestep shift k applied to the uniform draw of s (Wan / SD3: s' = k s / (1 + (k - 1) s)); 1 = uniform."""
    normalizer_eps: float = 1e-6
    """Floor of mean|x - real| in the DMD gradient's denominator."""
    adversarial_weight: float = 0.0
    """Weight of the adversarial term (0: off). Generator: softplus(-D(fake)); critic: softplus(-D(real)) +
    softplus(D(fake)), D = a light head on the critic's last hidden states."""
    critic_weighting: str = "velocity"
    """The critic's flow-matching error: 'velocity' (mean ||v_hat - v||^2, the plain loss) or 'sample' (the same error
    times s^2, i.e. mean ||x0_hat - x0||^2: every noise level counts alike in x0 error, as the generator's DMD
    gradient uses the critic's x0-prediction; the velocity loss of an x0-predicting critic puts ~87% of its weight
    on s < 0.2 when s is drawn uniformly)."""

    def __post_init__(self) -> None:
        if not 0 < self.min_sigma <= self.max_sigma < 1:
            raise ValueError(f"need 0 < min_sigma <= max_sigma < 1, got {self.min_sigma}, {self.max_sigma}")
        if self.sigma_shift <= 0 or self.adversarial_weight < 0:
            raise ValueError("sigma_shift must be > 0 and adversarial_weight >= 0")
        if self.critic_weighting not in ("velocity", "sample"):
            raise ValueError(
                f"critic_weighting must be 'velocity' or 'sample', got {self.critic_weighting!r}"
            )


def sample_sigma(b: int, cfg: DMDConfig, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B,) noise levels in [min_sigma, max_sigma], uniform then shifted."""
    u = torch.rand(b, generator=generator, device=generator.device if generator else device).to(device)
    s = shift_sigma(u.double(), cfg.sigma_shift).float()
    return cfg.min_sigma + (cfg.max_sigma - cfg.min_sigma) * s


def _bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def add_noise(x: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x + s eps with per-sample s (B,)."""
    sb = _bcast(s, x)
    return (1 - sb) * x + sb * eps


def x0_prediction(den: Denoiser, xs: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Bidirectional x0-prediction xs - s v of all frames, with the denoiser's guidance. xs: (B, C, F, h, w)."""
    t = (s * NUM_TRAIN_TIMESTEPS)[:, None].expand(-1, xs.shape[2])
    return xs - _bcast(s, xs) * den.full(xs, t)


def dmd_gradient(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor, eps: float = 1e-6):
    """(fake - real) / mean|x - real|, the mean per sample over all non-batch elements (DMD's normaliser)."""
    dims = tuple(range(1, x.ndim))
    norm = (x - real_x0).abs().mean(dim=dims, keepdim=True).clamp_min(eps)
    return (fake_x0 - real_x0) / norm


def dmd_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 ||x - stopgrad(x - grad)||^2, mean over elements: its gradient w.r.t. x is grad / numel."""
    return 0.5 * F.mse_loss(x.float(), (x - grad).detach().float())


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of `modules` do not require grad inside the block (restored after)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class AdversarialHead(nn.Module):
    """A light discriminator on critic features: per-frame mean over tokens -> LayerNorm -> MLP -> logit.

    features: (B, F, tokens, D) -> logits (B, F).
    """

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float().mean(dim=2)).squeeze(-1)


@contextmanager
def capture_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the final hidden states (B, F, tokens, D) of each forward (the input of the output norm)."""
    store: list[torch.Tensor] = []
    handle = model.norm_out.register_forward_hook(lambda mod, args, out: store.append(args[0]))
    try:
        yield store
    finally:
        handle.remove()


@dataclass
class DMDOutput:
    """Generator-step results: loss (scalar, with graph to x), and detached statistics for logging."""

    loss: torch.Tensor
    dmd: torch.Tensor
    adversarial: torch.Tensor
    grad_norm: torch.Tensor
    sigma: torch.Tensor


def generator_loss(
    x: torch.Tensor,
    teacher: Denoiser,
    critic: Denoiser,
    cfg: DMDConfig,
    generator: torch.Generator | None = None,
    head: AdversarialHead | None = None,
) -> DMDOutput:
    """DMD loss (+ adversarial term) of the student's sample x (B, C, F, h, w); differentiable w.r.t. x only.

    Teacher and critic run without gradient to their parameters (the critic's features get a graph to x when the
    adversarial term is on, with its parameters frozen). `teacher` carries the real guidance, `critic` none.
    """
    b = x.shape[0]
    s = sample_sigma(b, cfg, generator, x.device)
    eps = randn(x.shape, generator, x.device).to(x.dtype)
    xs = add_noise(x.detach(), eps, s)
    with torch.no_grad():
        real = x0_prediction(teacher, xs, s)
        fake = x0_prediction(critic, xs, s)
    grad = dmd_gradient(x.detach(), real, fake, cfg.normalizer_eps)
    dmd = dmd_loss(x, grad)
    adv = x.new_zeros(())
    if cfg.adversarial_weight > 0:
        if head is None:
            raise ValueError("adversarial_weight > 0 needs an AdversarialHead")
        with frozen(critic.model, head), capture_features(critic.model) as feats:
            x0_prediction(critic, add_noise(x, eps, s), s)  # same x_s, with a graph to x
            adv = F.softplus(-head(feats[-1])).mean()
    loss = dmd + cfg.adversarial_weight * adv
    grad_norm = grad.flatten(1).norm(dim=1).mean()
    return DMDOutput(loss, dmd.detach(), adv.detach(), grad_norm.detach(), s.detach())


@dataclass
class CriticOutput:
    loss: torch.Tensor
    flow: torch.Tensor
    adversarial: torch.Tensor


def critic_loss(
    x_fake: torch.Tensor,
    critic: Denoiser,
    cfg: DMDConfig,
    generator: torch.Generator | None = None,
    head: AdversarialHead | None = None,
    x_real: torch.Tensor | None = None,
) -> CriticOutput:
    """Flow-matching loss of the critic on detached student samples x_fake (B, C, F, h, w): ||v - (eps - x)||^2,
    plus (adversarial_weight > 0) the head's real/fake classification at the same noise level (x_real: data)."""
    x = x_fake.detach()
    s = sample_sigma(x.shape[0], cfg, generator, x.device)
    eps = randn(x.shape, generator, x.device).to(x.dtype)
    xs = add_noise(x, eps, s)
    t = (s * NUM_TRAIN_TIMESTEPS)[:, None].expand(-1, x.shape[2])
    with capture_features(critic.model) as feats:
        v = critic.full(xs, t)
    sb = s.view(-1, 1, 1, 1, 1)
    err = (v.float() - velocity_target(critic.model, xs, x, eps, sb)) ** 2
    if cfg.critic_weighting == "sample":  # x0_hat - x0 = s (v_hat - v)
        err = err * conversion_sigma(critic.model, sb) ** 2
    flow = err.mean()
    adv = flow.new_zeros(())
    if cfg.adversarial_weight > 0:
        if head is None or x_real is None:
            raise ValueError("adversarial_weight > 0 needs an AdversarialHead and real latents")
        fake_logit = head(feats[-1])
        with capture_features(critic.model) as feats_real:
            critic.full(add_noise(x_real, eps, s), t)
        adv = F.softplus(-head(feats_real[-1])).mean() + F.softplus(fake_logit).mean()
    return CriticOutput(flow + cfg.adversarial_weight * adv, flow.detach(), adv.detach())


# ---------------------------------------------------------------------------- ODE-regression warm start
@torch.no_grad()
def teacher_ode_states(
    teacher: Denoiser, noise: torch.Tensor, student: FlowSchedule, teacher_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the teacher's probability-flow ODE from `noise` (B, C, F, h, w) with Euler steps on a fine grid that
    contains the student's sigmas; return the states at the student's N sigmas (N, B, C, F, h, w) and x0."""
    stu = student.sigmas()[:-1].double()
    fine = torch.linspace(1.0, 0.0, teacher_steps + 1, dtype=torch.float64)
    grid = torch.unique(torch.cat([fine, stu]), sorted=True).flip(
        0
    )  # decreasing, contains every student sigma
    states, x = [], noise
    b, f = noise.shape[0], noise.shape[2]
    for s, s_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        if any(abs(s - float(k)) < 1e-12 for k in stu):
            states.append(x)
        t = torch.full((b, f), s * NUM_TRAIN_TIMESTEPS, device=noise.device)
        x = (x.float() + (s_next - s) * teacher.full(x, t).float()).to(x.dtype)
    return torch.stack(states), x


def ode_regression_loss(
    student: Denoiser,
    states: torch.Tensor,
    x0: torch.Tensor,
    cfg: RolloutConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CausVid-style warm start: per chunk a random student step k; the causal student sees the teacher's ODE
    state at sigma_k for that chunk and the ODE solution x0 as its clean context (teacher-forcing layout, as the KV
    cache would hold it) and regresses x0: mean ||x0_hat - x0||^2. states: (N, B, C, F, h, w)."""
    n, b, _, f = states.shape[:4]
    c = cfg.causal.chunk_size
    sig = cfg.schedule.sigmas()[:-1].to(x0.device)
    k = torch.randint(0, n, (-(-f // c),), generator=generator).repeat_interleave(c)[:f].to(x0.device)
    noisy = states[k, :, :, torch.arange(f, device=x0.device)].permute(1, 2, 0, 3, 4)  # (B, C, F, h, w)
    s = sig[k]
    context = context_frames(x0, cfg.context_timestep, generator)
    v = student.teacher_forcing(
        context, noisy, (s * NUM_TRAIN_TIMESTEPS)[None].expand(b, -1), cfg.causal, cfg.context_timestep
    )
    x0_hat = noisy - s.view(1, 1, -1, 1, 1) * v
    return F.mse_loss(x0_hat.float(), x0.float())
