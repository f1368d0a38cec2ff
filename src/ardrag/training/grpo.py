"""GRPO over the frame-wise denoising MDP (the paper's Stage 2; formulas in docs/method.md), as plain torch functions.

Per frame (chunk) m of rollout i in a group of G rollouts sharing one condition:
  A_im = clip((R_im - mean_j R_jm) / (std_j R_jm + 1e-4), -5, 5)
  ratio = exp(logp_new - logp_old) at the frame's one SDE step
  L = mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))) + beta KL,  KL = ||mu_theta - mu_ref||^2 / (2 std^2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ardrag.sampling import (
    NUM_TRAIN_TIMESTEPS,
    SDE_TYPES,
    ChunkResult,
    Denoiser,
    RolloutConfig,
    sde_kl,
    sde_step,
)


@dataclass
class GRPOConfig:
    """GRPO knobs (Flow-GRPO's ranges in docs/method.md; the paper does not give its values)."""

    group_size: int = 4
    """G: rollouts per condition (advantages are normalised within the group, per frame)."""
    clip_range: float = 1e-3
    """eps of the clipped importance ratio (Flow-GRPO uses 1e-4..1e-3: log-probs are per-element means)."""
    kl_weight: float = 0.01
    """beta: weight of the KL to the frozen reference policy (the initial student)."""
    adv_clip: float = 5.0
    credit: str = "frame"
    """What a frame's action is credited with: "frame" = that frame's reward (the paper), "to_go" = the sum of its
    and every later frame's rewards. A frame's action shapes all later frames through the KV cache, and the
    tracker's error at frame m carries every earlier frame's drift, so the per-frame reward credits an action with
    effects of earlier actions and none of its own later ones; the reward-to-go credits it with all of its own."""
    adv_norm: str = "group"
    """How advantages are scaled after centring on the group mean (per frame): "group" = divided by the group's
    std at that frame (the paper, Flow-GRPO); "batch" = divided by one std of the centred rewards over the whole
    batch, so a frame whose G rollouts differ only at the reward's measurement noise (early frames: std ~0.001,
    sub-pixel tracker jitter) gets a proportionally small advantage instead of a full +-1."""
    inner_updates: int = 2
    """Optimizer steps on each batch of rollouts (the first is exactly on-policy: ratio 1, nothing clipped)."""
    noise_level: float = 0.7
    """a: the SDE step's noise level."""
    sde_type: str = "cps"
    """The stochastic step's form (`ardrag.sampling.sde_step`): 'cps' keeps the sample on the deterministic
    sampler's marginal (what the deployed student sees); 'flow_grpo' (Flow-GRPO's) adds noise the ODE marginal
    does not have, which with three coarse steps lowers the motion reward of the rollouts it trains on
    (results/training/rl_sde.md)."""
    last_step_std: float = 0.02
    """Step std of the stochastic step when it is a frame's last (to sigma 0): the noise the clean frame keeps
    (results/training/rl_sde.md measures its cost)."""
    shared_noise: bool = True
    """Start the G rollouts of a condition from the SAME initial noise, so the differences within a group come from
    the SDE steps alone: those are what the advantages credit (different initial noise adds reward differences no
    action caused, i.e. gradient noise). DanceGRPO shares initial noise within a group for the same reason. With
    the last step trainable it is needed: a last-step action of std 0.02 explains almost none of the reward
    differences that different initial noise makes, and GRPO then learns nothing (tests/test_rl.py's pluggable
    reward: no rise with separate noise, a steady rise with shared noise)."""
    exclude_last_step: bool = False
    """Never make the last denoising step the stochastic one (it is then never trained). With three steps that is
    the step s = 0.522 -> 0, a third of the chain; `last_step_std` bounds the noise it leaves instead."""

    def __post_init__(self) -> None:
        if self.sde_type not in SDE_TYPES:
            raise ValueError(f"grpo.sde_type must be one of {SDE_TYPES}, got {self.sde_type!r}")
        if not self.exclude_last_step and not self.last_step_std > 0:
            raise ValueError("grpo.last_step_std must be > 0 when the last step may be stochastic")

    def sde_choices(self, n_steps: int) -> int:
        """How many steps (0..k-1) may be the stochastic one."""
        k = n_steps - 1 if self.exclude_last_step and n_steps > 1 else n_steps
        return max(k, 1)


def group_advantages(
    rewards: torch.Tensor, group_size: int, clip: float = 5.0, credit: str = "frame", norm: str = "group"
) -> torch.Tensor:
    """rewards (B * G, M), rollouts of one condition contiguous -> per-frame advantages (B * G, M).

    credit / norm: as `GRPOConfig.credit` / `GRPOConfig.adv_norm`. A group whose rewards are all equal (nothing to
    learn from) gets advantage 0, not NaN.
    """
    n, m = rewards.shape
    if n % group_size:
        raise ValueError(f"{n} rollouts are not groups of {group_size}")
    r = rewards.float()
    if credit == "to_go":
        r = r.flip(1).cumsum(1).flip(1)
    elif credit != "frame":
        raise ValueError(f"credit must be 'frame' or 'to_go', got {credit!r}")
    r = r.view(n // group_size, group_size, m)
    centred = r - r.mean(dim=1, keepdim=True)
    if norm == "group":
        scale = r.std(dim=1, keepdim=True, unbiased=False)
    elif norm == "batch":
        scale = centred.pow(2).mean().sqrt()
    else:
        raise ValueError(f"adv_norm must be 'group' or 'batch', got {norm!r}")
    adv = centred / (scale + 1e-4)
    return adv.clamp(-clip, clip).view(n, m)


def clipped_objective(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clipped policy loss over all (rollout, frame) entries, and its ratio statistics."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "clip_frac": ((ratio - 1).abs() > clip_range).float().mean(),
            "ratio_mean": ratio.mean(),
            "ratio_max": ratio.max(),
            "ratio_min": ratio.min(),
        }
    return loss, stats


@dataclass
class Rollout:
    """What re-scoring needs from one rollout batch (B * G videos of F latent frames, chunk size c).

    clean: (N, C, F, h, w) the latents each chunk wrote to the cache; state / action: (N, C, F, h, w) per chunk
    the noisy input x_{m,n} of its SDE step and the float32 sample it drew; sigma / sigma_next: (F,) the SDE step's
    noise levels per frame; old_log_prob: (N, M) per chunk; sde_mask: (M,) chunks with an SDE step.
    """

    clean: torch.Tensor
    state: torch.Tensor
    action: torch.Tensor
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    old_log_prob: torch.Tensor
    chunk_starts: list[int]
    sde_steps: list[int]


def collect(chunks: list[ChunkResult], cfg: RolloutConfig) -> Rollout:
    """Stack the per-chunk SDE records of `iter_rollout(..., sde_steps=...)` for re-scoring."""
    if any(ch.sde_step < 0 for ch in chunks):
        raise ValueError("every chunk needs an SDE step for GRPO")
    sig = cfg.schedule.sigmas().tolist()
    s, s_next = [], []
    for ch in chunks:
        f = ch.clean.shape[2]
        s += [sig[ch.sde_step]] * f
        s_next += [sig[ch.sde_step + 1]] * f
    return Rollout(
        clean=torch.cat([ch.cached for ch in chunks], dim=2),
        state=torch.cat([ch.sde_prev for ch in chunks], dim=2),
        action=torch.cat([ch.sde_sample for ch in chunks], dim=2),
        sigma=torch.tensor(s),
        sigma_next=torch.tensor(s_next),
        old_log_prob=torch.stack([ch.log_prob for ch in chunks], dim=1).float(),
        chunk_starts=[ch.start for ch in chunks],
        sde_steps=[ch.sde_step for ch in chunks],
    )


def rescore(
    denoiser: Denoiser, ro: Rollout, cfg: RolloutConfig, noise_level: float | None = None
) -> tuple[torch.Tensor, list[torch.Tensor], list[float]]:
    """Log-probs (N, M) of every chunk's stored action under `denoiser`, from ONE teacher-forcing forward:
    [clean self-generated frames | noisy states at their SDE steps] with per-frame timesteps.

    Returns (log_prob, per-chunk Gaussian means, per-chunk std * sqrt(-dt)) (means carry gradient).
    """
    n = ro.state.shape[0]
    t = (ro.sigma * NUM_TRAIN_TIMESTEPS).to(ro.state.device).expand(n, -1)
    v = denoiser.teacher_forcing(ro.clean, ro.state, t, cfg.causal, cfg.context_timestep)
    logps, means, scales = [], [], []
    bounds = ro.chunk_starts + [ro.state.shape[2]]
    for m in range(len(ro.chunk_starts)):
        a, b = bounds[m], bounds[m + 1]
        s, s_next = float(ro.sigma[a]), float(ro.sigma_next[a])
        out = sde_step(
            ro.state[:, :, a:b],
            v[:, :, a:b],
            s,
            s_next,
            cfg.noise_level if noise_level is None else noise_level,
            prev_sample=ro.action[:, :, a:b],
            sde_type=cfg.sde_type,
            last_step_std=cfg.last_step_std,
        )
        logps.append(out.log_prob)
        means.append(out.mean)
        scales.append(float(out.std))
    return torch.stack(logps, dim=1), means, scales


def gaussian_kl(
    means: list[torch.Tensor], ref_means: list[torch.Tensor], scales: list[float]
) -> torch.Tensor:
    """Per-chunk KL (N, M) between two SDE-step Gaussians of equal std: ||mu - mu_ref||^2 / (2 std^2) (mean)."""
    return torch.stack([sde_kl(mu, mu_ref, sc) for mu, mu_ref, sc in zip(means, ref_means, scales)], dim=1)
