# Over 500 lines: one rollout loop serves inference, Self-Rollout and GRPO; its steps sit beside it.
"""Flow-matching schedule, ODE/SDE steps and the frame-wise autoregressive rollout.

Notation (docs/method.md): sigma s in [0, 1], x_s = (1 - s) x0 + s eps, the model predicts v ~ eps - x0,
timestep t = 1000 s. One rollout loop serves inference (`ARDragPipeline`), Self-Rollout training (gradient at one
step per chunk) and GRPO (one SDE step per chunk carrying a log-probability).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ardrag.models.attention import CausalConfig, KVCache, frame_visible

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor | float, shift: float) -> torch.Tensor:
    """Wan / SD3 timestep shift: s' = k s / (1 + (k - 1) s)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


@dataclass
class FlowSchedule:
    """Few-step denoising schedule. Explicit `timesteps` are used as given (the paper's 1000, 755, 522 are already
    warped); otherwise `num_steps` uniform sigmas from 1 are warped by `shift`. The schedule always ends at 0."""

    timesteps: list[float] | None = field(default_factory=lambda: [1000.0, 755.0, 522.0])
    """Timesteps in (0, 1000], decreasing; None to use num_steps + shift."""
    num_steps: int = 3
    """Used only when timesteps is None."""
    shift: float = 1.0
    """Timestep shift k applied to the uniform schedule (Wan uses 5 at 480p for 50 steps; CausVid 8)."""

    def __post_init__(self) -> None:
        if self.timesteps is not None:
            ts = [float(t) for t in self.timesteps]
            if not ts or any(not 0 < t <= NUM_TRAIN_TIMESTEPS for t in ts):
                raise ValueError(f"timesteps must be non-empty and in (0, 1000], got {self.timesteps}")
            if any(b >= a for a, b in zip(ts, ts[1:])):
                raise ValueError(f"timesteps must be strictly decreasing, got {self.timesteps}")
            self.timesteps = ts
        elif self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")

    @property
    def steps(self) -> int:
        return len(self.timesteps) if self.timesteps is not None else self.num_steps

    def sigmas(self) -> torch.Tensor:
        """(N + 1,) float32 sigmas, decreasing, last = 0."""
        if self.timesteps is not None:
            s = torch.tensor(self.timesteps, dtype=torch.float64) / NUM_TRAIN_TIMESTEPS
        else:
            s = shift_sigma(
                torch.linspace(1.0, 0.0, self.num_steps + 1, dtype=torch.float64)[:-1], self.shift
            )
        return torch.cat([s, s.new_zeros(1)]).float()


def ode_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Euler step of dx/ds = v from s to s_next (exact on straight flow paths)."""
    return (x.float() + (sigma_next - sigma) * v.float()).to(x.dtype)


@dataclass
class SDEStep:
    """Result of a stochastic step, all float32 (the stored action must be exactly what was scored).

    sample: x' (the action); log_prob: (B,); mean: the Gaussian's mean; std: the Gaussian's std, i.e. the step's
    noise scale `sde_noise_rate(s, s_next, a) * sqrt(s - s_next)`, the std that `sde_kl` takes.
    """

    sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def sde_noise_rate(sigma: float, sigma_next: float, noise_level: float) -> float:
    """Flow-GRPO's diffusion coefficient std_t = a sqrt(s / (1 - s)) (per unit time, NOT a step's std: that is
    std_t sqrt(s - s_next), `SDEStep.std`); at s = 1 the next sigma replaces s in (1 - s) to stay finite."""
    denom_sigma = sigma_next if sigma >= 1.0 else sigma
    return noise_level * math.sqrt(sigma / (1.0 - denom_sigma))


SDE_TYPES = ("flow_grpo", "cps")


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float,
    sigma_next: float,
    noise_level: float = 0.7,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
    sde_type: str = "flow_grpo",
    last_step_std: float = 0.0,
) -> SDEStep:
    """A stochastic step with a Gaussian log-probability, in float32 (formulas in docs/method.md).

    'flow_grpo' (Flow-GRPO): mean = x (1 + std^2 dt / (2 s)) + v (1 + std^2 (1 - s) / (2 s)) dt, step std
    std sqrt(-dt), std = a sqrt(s / (1 - s)), dt = s_next - s < 0.
    'cps' (coefficients-preserving, Flow-CPS): with x0 = x - s v and eps = x + (1 - s) v, step std
    s_next sin(a pi / 2) and mean = (1 - s_next) x0 + sqrt(s_next^2 - std^2) eps: the sample stays of the form
    (1 - s_next) x0 + s_next * (unit noise), the deterministic path's marginal, whatever a.
    A step to s_next = 0 (a frame's last) has step std `last_step_std` instead (both forms: the mean is then the
    deterministic step, x0), the noise the clean frame keeps; 0 makes such a step deterministic (not allowed).
    x' = mean + step std * eps. If `prev_sample` is given it is scored instead of sampled (GRPO's ratio). log_prob
    is the Gaussian log density averaged over all non-batch elements (Flow-GRPO's reduction), shape (B,).
    """
    if not sigma > sigma_next >= 0:
        raise ValueError(f"need sigma > sigma_next >= 0, got {sigma}, {sigma_next}")
    if sde_type not in SDE_TYPES:
        raise ValueError(f"sde_type must be one of {SDE_TYPES}, got {sde_type!r}")
    x32, v32 = x.float(), v.float()
    dt = sigma_next - sigma
    if sigma_next == 0:
        if not last_step_std > 0:
            raise ValueError(
                "a stochastic step to sigma 0 needs last_step_std > 0 (or exclude the last step)"
            )
        mean, scale = x32 - sigma * v32, last_step_std
    elif sde_type == "cps":
        scale = sigma_next * math.sin(noise_level * math.pi / 2)
        x0, eps_hat = x32 - sigma * v32, x32 + (1 - sigma) * v32
        mean = (1 - sigma_next) * x0 + math.sqrt(max(sigma_next**2 - scale**2, 0.0)) * eps_hat
    else:
        std = sde_noise_rate(sigma, sigma_next, noise_level)
        mean = x32 * (1 + std**2 * dt / (2 * sigma)) + v32 * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
        scale = std * math.sqrt(-dt)
    if prev_sample is None:
        eps = randn(x.shape, generator, x.device)
        prev_sample = mean + scale * eps
    prev32 = prev_sample.detach().float()
    log_prob = -((prev32 - mean) ** 2) / (2 * scale**2) - math.log(scale) - 0.5 * math.log(2 * math.pi)
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return SDEStep(prev32, log_prob, mean, torch.tensor(scale))


def sde_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """KL between two Gaussian SDE steps with the same std (`SDEStep.std`): ||mean - mean_ref||^2 / (2 std^2),
    averaged over non-batch elements (B,)."""
    kl = (mean.float() - mean_ref.float()) ** 2 / (2 * torch.as_tensor(std, dtype=torch.float32) ** 2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


# ---------------------------------------------------------------------------- conditioning of the denoiser
@dataclass
class Conditions:
    """Everything the backbone is conditioned on, for B videos of F latent frames.

    context: (B, L, text_dim) text embeddings; negative_context: same shape, for classifier-free guidance;
    cond: (B, Cc, F, h, w) extra channels (trajectory latents, reference latent, mask), may be replaced for frames
    not yet generated while streaming; image_context: optional CLIP tokens (B, 257, image_dim).
    """

    context: torch.Tensor
    cond: torch.Tensor | None = None
    negative_context: torch.Tensor | None = None
    image_context: torch.Tensor | None = None

    def cond_slice(self, start: int, stop: int) -> torch.Tensor | None:
        return None if self.cond is None else self.cond[:, :, start:stop]


class Denoiser:
    """The backbone bound to conditions and guidance: velocity of a chunk at given timesteps.

    With guidance_scale != 1 the batch is doubled [cond | uncond] (negative prompt as the unconditional text), so
    the KV cache holds 2B rows; v = v_uncond + g (v_cond - v_uncond).
    """

    def __init__(self, model: torch.nn.Module, conditions: Conditions, guidance_scale: float = 1.0) -> None:
        self.model = model
        self.c = conditions
        self.guidance_scale = guidance_scale
        if self.guided and conditions.negative_context is None:
            raise ValueError("guidance_scale != 1 needs a negative_context (embed the negative prompt)")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def _inputs(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None):
        ctx, img = self.c.context, self.c.image_context
        if not self.guided:
            return x, t, ctx, cond, img
        two = lambda a: None if a is None else torch.cat([a, a])  # noqa: E731
        return two(x), two(t), torch.cat([ctx, self.c.negative_context]), two(cond), two(img)

    def _combine(self, v: torch.Tensor) -> torch.Tensor:
        if not self.guided:
            return v
        v_c, v_u = v.chunk(2)
        return v_u + self.guidance_scale * (v_c - v_u)

    def cached(self, x: torch.Tensor, t: torch.Tensor, cache: KVCache, start: int, write: bool = False):
        cond = self.c.cond_slice(start, start + x.shape[2])
        x2, t2, ctx, cond2, img = self._inputs(x, t, cond)
        v = self.model.forward_cached(
            x2, t2, ctx, cache, start, cond=cond2, encoder_hidden_states_image=img, write=write
        )
        return self._combine(v)

    def masked(
        self,
        context_frames: torch.Tensor | None,
        x: torch.Tensor,
        t: torch.Tensor,
        start: int,
        causal: CausalConfig,
        context_t: float,
    ):
        """Reference path without a cache: [all clean frames so far | current chunk] under the causal mask."""
        c = x.shape[2]
        if context_frames is None or context_frames.shape[2] == 0:
            seq, tt = x, t
        else:
            seq = torch.cat([context_frames, x], dim=2)
            tt = torch.cat([torch.full_like(t[:, :1], context_t).expand(-1, start), t], dim=1)
        cond = self.c.cond_slice(0, start + c)
        seq2, tt2, ctx, cond2, img = self._inputs(seq, tt, cond)
        pos = torch.arange(start + c, device=x.device)
        mask = frame_visible(pos, pos, causal)
        v = self.model(
            seq2, tt2, ctx, cond=cond2, encoder_hidden_states_image=img, positions=pos, frame_mask=mask
        )
        return self._combine(v[:, :, start:])

    def teacher_forcing(
        self,
        clean: torch.Tensor,
        noisy: torch.Tensor,
        t: torch.Tensor,
        causal: CausalConfig,
        context_t: float,
    ) -> torch.Tensor:
        """All chunks at once in the teacher-forcing layout [clean | noisy]: noisy (B, C, F, h, w) at per-frame
        timesteps t (B, F) sees the clean frames (at `context_t`) of its window, as the KV cache would hold them."""
        cond = self.c.cond_slice(0, noisy.shape[2])
        x2, t2, ctx, cond2, img = self._inputs(noisy, t, cond)
        clean2 = torch.cat([clean, clean]) if self.guided else clean
        v = self.model.forward_teacher_forcing(
            clean2, x2, t2, ctx, causal, cond=cond2, encoder_hidden_states_image=img, clean_timestep=context_t
        )
        return self._combine(v)

    def full(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Bidirectional forward over all frames (the teacher / initial model)."""
        x2, t2, ctx, cond2, img = self._inputs(x, t, self.c.cond)
        return self._combine(self.model(x2, t2, ctx, cond=cond2, encoder_hidden_states_image=img))


# ---------------------------------------------------------------------------- the frame-wise rollout
@dataclass
class ChunkResult:
    """One finished chunk of latent frames [start, start + c).

    clean: the chunk's output latents (no gradient): the result of all N steps (`full_denoise`, or any rule run
    with `finish`), else the x0-prediction at the exit step (`exit_prediction`, `ground_truth`); cached: the
    latents written into the KV cache, exactly as written (context noise included); grad_x0: the x0-prediction at the exit step (`grad_steps`),
    carrying gradient when the rollout ran with grad enabled; grad_state: the noisy state x at that step (detached,
    for recomputing it later); sde_step: index of the SDE step in this chunk (-1 none); log_prob (B,) and
    sde_prev / sde_sample / sde_mean: the state, action and Gaussian mean of that step (for GRPO).
    """

    start: int
    clean: torch.Tensor
    cached: torch.Tensor | None = None
    grad_x0: torch.Tensor | None = None
    grad_step: int = -1
    grad_state: torch.Tensor | None = None
    sde_step: int = -1
    log_prob: torch.Tensor | None = None
    sde_prev: torch.Tensor | None = None
    sde_sample: torch.Tensor | None = None
    sde_mean: torch.Tensor | None = None


CACHE_UPDATES = ("full_denoise", "exit_prediction", "ground_truth")


@dataclass
class RolloutConfig:
    """Frame-wise AR sampling knobs (the numbers that define the method live here, not in loops)."""

    schedule: FlowSchedule = field(default_factory=FlowSchedule)
    causal: CausalConfig = field(default_factory=CausalConfig)
    context_timestep: float = 0.0
    """Timestep at which clean frames are written to the cache; > 0 also noises them to that level
    (x = (1 - s) x0 + s eps, eps drawn from the rollout's generator), as the label says."""
    cache_update: str = "full_denoise"
    """What enters the cache after a chunk: 'full_denoise' (Self-Rollout: the result of all N steps, as at
    inference), 'exit_prediction' (Self-Forcing: the x0-prediction at the exit step, later steps skipped) or
    'ground_truth' (teacher forcing: the data latents). The exit step of chunk m is grad_steps[m] (else the last)."""
    noise_level: float = 0.7
    """SDE noise level a for the selected stochastic step (see `sde_step`)."""
    sde_type: str = "flow_grpo"
    """The stochastic step's form: 'flow_grpo' or 'cps' (see `sde_step`)."""
    last_step_std: float = 0.0
    """Step std of a stochastic step to sigma 0 (the noise the clean frame keeps); 0: such a step is refused."""
    guidance_scale: float = 1.0
    use_kv_cache: bool = True
    """False: recompute the context with the masked full-sequence forward at every step (reference mode)."""

    def __post_init__(self) -> None:
        if self.cache_update not in CACHE_UPDATES:
            raise ValueError(f"cache_update must be one of {CACHE_UPDATES}, got {self.cache_update!r}")
        if not 0.0 <= self.context_timestep < NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"context_timestep must be in [0, 1000), got {self.context_timestep}")


def velocity_target(
    model: torch.nn.Module, x_s: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The flow-matching regression target for `model`'s velocity output at x_s = (1 - s) x0 + s eps.

    eps - x0 for a velocity-predicting model; for an x0-predicting one ('sample', see `PREDICTION_TYPES`) the same
    (x_s - x0) / max(s, s_min) that its output is converted with, which equals eps - x0 wherever s >= s_min, so a
    perfect x0 gives zero loss at every level. sigma: broadcastable to x_s, e.g. (B, 1, 1, 1, 1) or (B, 1, F, 1, 1).
    """
    config = getattr(model, "config", {})
    if config.get("prediction_type", "velocity") == "sample":
        return (x_s.float() - x0.float()) / conversion_sigma(model, sigma)
    return (eps - x0).float()


def conversion_sigma(model: torch.nn.Module, sigma: torch.Tensor) -> torch.Tensor:
    """The s in x0_hat = x_s - s v_hat for `model`'s velocity output: sigma itself, or for an x0-predicting model
    ('sample') max(sigma, sample_sigma_min), the level its forward divides by (float32)."""
    config = getattr(model, "config", {})
    if config.get("prediction_type", "velocity") == "sample":
        return sigma.float().clamp_min(config.get("sample_sigma_min", 0.05))
    return sigma.float()


def randn(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """float32 standard normal noise drawn on the generator's device, then moved: a CPU generator may drive CUDA
    tensors and a seed gives the same numbers on every device."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def context_frames(clean: torch.Tensor, context_timestep: float, generator: torch.Generator | None):
    """The latents a clean chunk is written to the cache as: clean itself at t = 0, else noised to that level."""
    if context_timestep == 0:
        return clean
    s = context_timestep / NUM_TRAIN_TIMESTEPS
    eps = randn(clean.shape, generator, clean.device)
    return ((1 - s) * clean.float() + s * eps).to(clean.dtype)


def iter_rollout(
    denoiser: Denoiser,
    noise: torch.Tensor,
    cfg: RolloutConfig,
    sde_steps: list[int] | None = None,
    grad_steps: list[int] | None = None,
    generator: torch.Generator | None = None,
    on_chunk_start: Callable[[int], None] | None = None,
    ground_truth: torch.Tensor | None = None,
    finish: bool = False,
) -> Iterator[ChunkResult]:
    """Generate latent frames chunk by chunk from `noise` (B, C, F, h, w), yielding each chunk when clean.

    Per chunk m, x <- noise_m; for n in 0..N-1: x <- step(x, n) where step n is the Flow-GRPO SDE step when
    n == sde_steps[m] (else the Euler ODE step), and carries gradient only when n == grad_steps[m] (Self-Rollout).
    What enters the KV cache is set by `cfg.cache_update` (see `RolloutConfig`); it is written by one forward at
    `context_timestep` without gradient (after the chunk is yielded, and not for the last chunk), so later chunks
    condition on it exactly as at inference, and no gradient ever flows through cached keys/values
    (`backward_exit_predictions` offers that as an explicit choice).
    `ground_truth` (B, C, F, h, w): the data latents, needed for `cache_update='ground_truth'`.
    `finish`: with `exit_prediction` or `ground_truth`, run the steps after the exit step too (without gradient),
    so that `clean` is the chunk's fully denoised frames while the cache still receives what the rule says.
    `on_chunk_start(start)` runs before a chunk (the streaming pipeline swaps conditions there).
    """
    b, _, num_frames, h, w = noise.shape
    c = cfg.causal.chunk_size
    sig = cfg.schedule.sigmas().tolist()
    n_steps = len(sig) - 1
    n_chunks = math.ceil(num_frames / c)
    for name, steps in (("sde_steps", sde_steps), ("grad_steps", grad_steps)):
        if steps is not None and (len(steps) != n_chunks or any(not -1 <= s < n_steps for s in steps)):
            raise ValueError(f"{name} needs {n_chunks} entries in [-1, {n_steps}), got {steps}")
    if cfg.cache_update == "ground_truth" and (ground_truth is None or ground_truth.shape != noise.shape):
        raise ValueError("cache_update='ground_truth' needs ground_truth latents of the noise's shape")
    model = denoiser.model
    cache = model.new_cache(cfg.causal, h, w) if cfg.use_kv_cache else None
    context_so_far: list[torch.Tensor] = []
    for m in range(n_chunks):
        start = m * c
        stop = min(start + c, num_frames)
        if on_chunk_start is not None:
            on_chunk_start(start)
        x = noise[:, :, start:stop]
        res = ChunkResult(start=start, clean=x)
        # full_denoise runs all N steps; the other rules stop at the exit step and use its x0-prediction (with
        # `finish` they go on to the last step, and the exit x0-prediction is kept for the cache)
        exit_step = grad_steps[m] if grad_steps is not None and grad_steps[m] >= 0 else n_steps - 1
        stops_at_exit = cfg.cache_update != "full_denoise"
        last = exit_step if stops_at_exit and not finish else n_steps - 1
        exit_x0 = None
        for n in range(last + 1):
            s, s_next = sig[n], sig[n + 1]
            t = torch.full((b, stop - start), s * NUM_TRAIN_TIMESTEPS, device=x.device)
            with_grad = grad_steps is not None and grad_steps[m] == n
            with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
                if cache is not None:
                    v = denoiser.cached(x, t, cache, start)
                else:
                    ctx = torch.cat(context_so_far, dim=2) if context_so_far else None
                    v = denoiser.masked(ctx, x, t, start, cfg.causal, cfg.context_timestep)
                if with_grad:
                    res.grad_x0, res.grad_step, res.grad_state = x - s * v, n, x.detach()
                if stops_at_exit and n == exit_step:
                    # the exit x0-prediction (the Euler step to 0 at the last step)
                    exit_x0 = (x - s * v).detach()
                if stops_at_exit and n == last and not finish:
                    x_next = exit_x0
                elif sde_steps is not None and sde_steps[m] == n:
                    out = sde_step(
                        x, v, s, s_next, cfg.noise_level, generator, None, cfg.sde_type, cfg.last_step_std
                    )
                    res.sde_step, res.log_prob, res.sde_prev = n, out.log_prob, x.detach()
                    res.sde_sample, res.sde_mean = out.sample.detach(), out.mean
                    x_next = out.sample
                else:
                    x_next = ode_step(x, v, s, s_next)
            x = x_next.detach()
        res.clean = x
        if cfg.cache_update == "ground_truth":
            written = ground_truth[:, :, start:stop]
        else:
            written = exit_x0 if cfg.cache_update == "exit_prediction" else x
        res.cached = context_frames(written, cfg.context_timestep, generator)
        context_so_far.append(res.cached)
        # The chunk is handed out before its cache write: a streaming consumer shows it one forward sooner
        # (the write only serves the next chunk, and runs when that is asked for; after the last chunk, never).
        yield res
        if cache is not None and stop < num_frames:
            with torch.no_grad():
                t0 = torch.full((b, stop - start), cfg.context_timestep, device=x.device)
                denoiser.cached(res.cached, t0, cache, start, write=True)


def backward_exit_predictions(
    denoiser: Denoiser,
    chunks: list[ChunkResult],
    grad: torch.Tensor,
    cfg: RolloutConfig,
    through_context: bool = False,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> torch.Tensor:
    """Backpropagate `grad` = dL/dx, (B, C, F, h, w) w.r.t. the exit x0-predictions of a rollout that ran WITHOUT a
    graph, into the model's parameters, by recomputing every chunk's exit step from its stored state.

    The bounded-memory route for Self-Rollout training: the rollout keeps only `grad_state` per chunk, the loss is
    computed on the detached exit predictions, then
      - through_context=False (the gradient rule of the cached rollout): the KV cache is rebuilt from the stored
        `cached` latents without gradient and each chunk's exit forward is recomputed and backpropagated at once,
        so at most one chunk's graph is alive and no gradient flows through cached keys/values. Extra cost: one
        cache-write forward and one exit forward per chunk (about 2 of the rollout's N + 1 forwards per chunk).
      - through_context=True: one teacher-forcing forward over [cached | exit states] (checkpointed per block when
        the model has gradient checkpointing on); the gradient also flows through the context frames' keys and
        values into the parameters, as in the masked (use_kv_cache=False) rollout. Cost: a forward and backward
        over 2F frames under the causal mask instead of F one-chunk forwards; activation memory grows with F
        (one block input per layer with checkpointing).
    Chunks with grad_step = -1 get no gradient. `backward(surrogate)` runs each backward on the scalar
    <x0, grad> (same gradient; a trainer passes its own, e.g. Lightning's manual_backward).
    Returns the recomputed exit predictions (B, C, F, h, w), detached.
    """
    if any(ch.grad_state is None and ch.grad_step >= 0 for ch in chunks):
        raise ValueError("chunks need grad_state: run iter_rollout with grad_steps")
    sig = cfg.schedule.sigmas().tolist()
    out = []
    if through_context:
        if any(ch.grad_step < 0 for ch in chunks):
            raise ValueError("through_context=True needs a grad step in every chunk")
        clean = torch.cat([ch.cached for ch in chunks], dim=2)
        noisy = torch.cat([ch.grad_state for ch in chunks], dim=2)
        s = torch.cat([torch.full(ch.grad_state.shape[2:3], sig[ch.grad_step]) for ch in chunks]).to(noisy)
        b = noisy.shape[0]
        v = denoiser.teacher_forcing(
            clean, noisy, (s * NUM_TRAIN_TIMESTEPS).expand(b, -1), cfg.causal, cfg.context_timestep
        )
        x0 = noisy - s.view(1, 1, -1, 1, 1) * v
        backward((x0 * grad.to(x0.dtype)).sum())
        return x0.detach()
    b, _, _, h, w = grad.shape
    cache = denoiser.model.new_cache(cfg.causal, h, w)
    for ch in chunks:
        stop = ch.start + ch.cached.shape[2]
        if ch.grad_step >= 0:
            s = sig[ch.grad_step]
            t = torch.full((b, stop - ch.start), s * NUM_TRAIN_TIMESTEPS, device=grad.device)
            with torch.enable_grad():
                x0 = ch.grad_state - s * denoiser.cached(ch.grad_state, t, cache, ch.start)
                backward((x0 * grad[:, :, ch.start : stop].to(x0.dtype)).sum())
            out.append(x0.detach())
        else:
            out.append(torch.zeros_like(ch.cached))
        with torch.no_grad():
            t0 = torch.full((b, stop - ch.start), cfg.context_timestep, device=grad.device)
            denoiser.cached(ch.cached, t0, cache, ch.start, write=True)
    return torch.cat(out, dim=2)


def sample_bidirectional(denoiser: Denoiser, noise: torch.Tensor, schedule: FlowSchedule) -> torch.Tensor:
    """N-step Euler sampler over all frames at once (the bidirectional teacher and the initial model)."""
    sig = schedule.sigmas().tolist()
    x = noise
    b, f = noise.shape[0], noise.shape[2]
    for n in range(len(sig) - 1):
        t = torch.full((b, f), sig[n] * NUM_TRAIN_TIMESTEPS, device=noise.device)
        x = ode_step(x, denoiser.full(x, t), sig[n], sig[n + 1])
    return x
