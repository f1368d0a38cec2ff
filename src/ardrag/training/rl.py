"""RL stage: GRPO over the frame-wise denoising MDP with one SDE step per frame (the paper's Stage 2).

Per training step, for each of the batch's B conditions: G rollouts of the current policy with Self-Rollout
(every frame fully denoised and cached from the policy's own output, exactly as at inference), where per frame
ONE randomly chosen denoising step is the Flow-GRPO SDE step (it alone has a log-probability) and the others are
the deterministic ODE; decode; per-frame rewards (tracker-based motion + appearance); per-frame advantages
normalised within the group; then `inner_updates` PPO-clipped steps that re-score every frame's SDE step of a
video in ONE teacher-forcing forward, plus a KL to the frozen initial student.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ardrag.pipeline import ARDragPipeline
from ardrag.sampling import Conditions, Denoiser, iter_rollout, randn
from ardrag.training.base import StageModule
from ardrag.training.grpo import (
    GRPOConfig,
    clipped_objective,
    collect,
    gaussian_kl,
    group_advantages,
    rescore,
)
from ardrag.training.rewards import (
    RewardConfig,
    check_reward_config,
    compute_rewards,
    frame_rewards_to_latent,
    reward_name,
)


@dataclass
class RLOptim:
    """AdamW on the policy (the paper's RL learning rate is unknown)."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass
class LoRA:
    """Low-rank adapters (peft, through diffusers' add_adapter) instead of a full fine-tune; rank 0 = full."""

    rank: int = 0
    alpha: float | None = None
    """LoRA scale numerator (default: the rank, i.e. scale 1)."""
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
    """Linear layers that get adapters (names as in diffusers' Wan blocks: self-/cross-attention and the FFN)."""


def add_lora(model: torch.nn.Module, cfg: LoRA) -> None:
    """Freeze `model` and add trainable LoRA adapters (B initialised to zero: the model is unchanged at step 0)."""
    from peft import LoraConfig

    model.requires_grad_(False)
    model.add_adapter(
        LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, target_modules=list(cfg.target_modules))
    )


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a LoRA-adapted model with the adapters folded into the base weights and removed (plain state dict)."""
    m = copy.deepcopy(model)
    m.fuse_lora()
    m.unload_lora()
    return m


def _repeat(x: Any, g: int) -> Any:
    """Repeat each of B entries G times, contiguously (rollouts of one condition are neighbours)."""
    if isinstance(x, torch.Tensor):
        return x.repeat_interleave(g, dim=0)
    if isinstance(x, list):
        return [v for v in x for _ in range(g)]
    return x


class RLModule(StageModule):
    """GRPO fine-tune of an exported AR student.

    Args:
        init: exported student pipeline folder (the SFT stage's export); also the frozen KL reference.
        grpo: group size, clip range, KL weight, inner updates, SDE noise level and step choice.
        reward: reward terms and weights.
        optim: AdamW settings.
        lora: LoRA adapters instead of a full fine-tune (rank 0: full); exports fold them into the weights.
        seed: every random draw of a step is a function of (seed, global step, rank).
    """

    def __init__(
        self,
        init: str = "results/toy/checkpoints/sft",
        grpo: GRPOConfig | None = None,
        reward: RewardConfig | None = None,
        optim: RLOptim | None = None,
        lora: LoRA | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.automatic_optimization = False
        self.grpo = grpo or GRPOConfig()
        self.reward_cfg = reward or RewardConfig()
        check_reward_config(self.reward_cfg)
        self.optim_cfg = optim or RLOptim()
        path = Path(init)
        if not (path / "ardrag_pipeline.json").exists():
            made_by = (
                f" (an SFT run with trainer.default_root_dir={path.parent} writes this one)"
                if path.name == "export"
                else ""
            )
            raise FileNotFoundError(
                f"initial student not found at {path}: set model.init_args.init to an exported autoregressive "
                f"pipeline folder, the export/ of an SFT run at the same scale{made_by}"
            )
        pipe = ARDragPipeline.from_pretrained(path)
        pipe.transformer.float()  # exports may store bf16 weights; training keeps float32 masters
        if pipe.config.mode != "autoregressive":
            raise ValueError(
                f"{path} is a {pipe.config.mode} pipeline; RL fine-tunes an autoregressive student"
            )
        self.policy = pipe.transformer.train().requires_grad_(True)
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.lora = lora or LoRA()
        if self.lora.rank > 0:
            add_lora(self.policy, self.lora)
        self.attach_pipeline(pipe)
        self.rollout_cfg = dataclasses.replace(
            pipe.config.rollout(),
            noise_level=self.grpo.noise_level,
            sde_type=self.grpo.sde_type,
            last_step_std=self.grpo.last_step_std,
            cache_update="full_denoise",
        )

    # the frozen reference is re-read from `init`, never stored in checkpoints
    frozen_modules = ("reference",)

    def configure_optimizers(self):
        o = self.optim_cfg
        params = [p for p in self.policy.parameters() if p.requires_grad]  # all, or the LoRA adapters
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)

    # ------------------------------------------------------------------ rollouts and rewards
    @torch.no_grad()
    def rollout(self, conds: Conditions, shape: tuple[int, ...], g: torch.Generator):
        """G-fold rollouts of the policy: (Rollout record for re-scoring, decoded uint8 videos (N, T, H, W, 3))."""
        n, _, f = shape[:3]
        c = self.rollout_cfg.causal.chunk_size
        n_chunks = -(-f // c)
        k = self.grpo.sde_choices(self.rollout_cfg.schedule.steps)
        # one SDE step per chunk, the same for the whole batch (a chunk's steps share one forward)
        sde_steps = torch.randint(0, k, (n_chunks,), generator=g).tolist()
        gsz = self.grpo.group_size
        if self.grpo.shared_noise:  # one draw per condition, repeated for its G rollouts
            noise = randn((n // gsz, *shape[1:]), g, self.device).repeat_interleave(gsz, dim=0)
        else:
            noise = randn(shape, g, self.device)
        chunks = list(
            iter_rollout(
                Denoiser(self.policy, conds), noise, self.rollout_cfg, sde_steps=sde_steps, generator=g
            )
        )
        ro = collect(chunks, self.rollout_cfg)
        return ro, self.decode_videos(torch.cat([ch.clean for ch in chunks], dim=2))

    def rewards(self, frames: np.ndarray, batch: dict[str, Any], num_latent: int) -> dict[str, np.ndarray]:
        g = self.grpo.group_size
        tracks = _repeat(batch["tracks"], g).numpy()
        visible = _repeat(batch["visible"], g).numpy()
        per_frame = compute_rewards(self.reward_cfg, frames, tracks, visible)
        tf = getattr(self.codec, "temporal_factor", 1)
        return {k: frame_rewards_to_latent(v, num_latent, tf) for k, v in per_frame.items()}

    # ------------------------------------------------------------------ the step
    def group_rollout(
        self, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[Conditions, Any, np.ndarray]:
        """``group_size`` rollouts of each condition in ``batch`` with the training sampler: (the conditions
        repeated per group, the rollout record, the decoded videos), rollouts of one condition adjacent."""
        gsz = self.grpo.group_size
        x0, conds = self.conditions(batch)
        conds = Conditions(*(_repeat(getattr(conds, f.name), gsz) for f in dataclasses.fields(conds)))
        ro, frames = self.rollout(conds, (x0.shape[0] * gsz, *x0.shape[1:]), generator)
        return conds, ro, frames

    def group_rewards(self, frames: np.ndarray, batch: dict[str, Any], ro: Any) -> dict[str, np.ndarray]:
        """The rewards of ``group_rollout``'s videos per latent frame (``rewards`` over the rollout's frames)."""
        return self.rewards(frames, batch, ro.old_log_prob.shape[1] * self.rollout_cfg.causal.chunk_size)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        gsz = self.grpo.group_size
        g = self.step_generator()
        t0 = time.perf_counter()
        conds, ro, frames = self.group_rollout(batch, g)
        t1 = time.perf_counter()
        rew = self.group_rewards(frames, batch, ro)
        # per-chunk rewards: mean over the chunk's latent frames
        c = self.rollout_cfg.causal.chunk_size
        total = torch.from_numpy(rew["total"])
        chunk_r = torch.stack([total[:, s : s + c].mean(1) for s in ro.chunk_starts], dim=1)
        adv = group_advantages(chunk_r, gsz, self.grpo.adv_clip, self.grpo.credit, self.grpo.adv_norm).to(
            self.device
        )
        t2 = time.perf_counter()
        ref_den = Denoiser(self.reference, conds)
        with torch.no_grad():
            _, ref_means, _ = rescore(ref_den, ro, self.rollout_cfg, self.grpo.noise_level)
        logs: dict[str, torch.Tensor] = {}
        for inner in range(self.grpo.inner_updates):
            logp, means, scales = rescore(
                Denoiser(self.policy, conds), ro, self.rollout_cfg, self.grpo.noise_level
            )
            pg, stats = clipped_objective(logp, ro.old_log_prob.to(logp.device), adv, self.grpo.clip_range)
            kl = gaussian_kl(means, ref_means, scales).mean()
            loss = pg + self.grpo.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            gn = torch.nn.utils.clip_grad_norm_(
                self.policy.parameters(), self.optim_cfg.grad_clip or float("inf")
            )
            opt.step()
            if (
                inner == 0
            ):  # on-policy: ratio 1 and nothing clipped unless re-scoring disagrees with the rollout
                logs["train/ratio_first_max_dev"] = (
                    (logp.detach() - ro.old_log_prob.to(logp.device)).abs().max()
                )
                logs["train/clip_frac_first"] = stats["clip_frac"]
        t3 = time.perf_counter()
        bs = frames.shape[0]
        logs.update(
            {
                "train/loss": loss.detach(),
                "train/policy": pg.detach(),
                "train/kl": kl.detach(),
                "train/clip_frac": stats["clip_frac"],
                "train/ratio_mean": stats["ratio_mean"],
                "train/ratio_max": stats["ratio_max"],
                "train/grad_norm": gn.detach(),
                "train/adv_std": adv.std(),
                **{f"train/adv_abs/frame{m}": a for m, a in enumerate(adv.abs().mean(0))},
                "train/sde_step_mean": torch.tensor(float(np.mean(ro.sde_steps))),
                "train/reward/total": torch.tensor(float(rew["total"].mean())),
                "train/reward/motion": torch.tensor(float(rew["motion"].mean())),
                "train/reward/quality": torch.tensor(float(rew["quality"].mean())),
                "train/reward/motion_std": torch.tensor(float(rew["motion"].std())),
                **{
                    f"train/reward/{k}": torch.tensor(float(rew[k].mean()))
                    for k in ["aesthetic"] * bool(self.reward_cfg.aesthetic)
                    + [reward_name(k) for k in self.reward_cfg.extra]
                },
                "train/time/rollout_s": torch.tensor(t1 - t0),
                "train/time/reward_s": torch.tensor(t2 - t1),
                "train/time/update_s": torch.tensor(t3 - t2),
                "train/lr": torch.tensor(opt.param_groups[0]["lr"]),
            }
        )
        self.log_dict(logs, on_step=True, batch_size=bs)
        self.log("reward", logs["train/reward/motion"], prog_bar=True, logger=False, batch_size=bs)
        return logs["train/loss"]

    # ------------------------------------------------------------------ hand-over
    def export_pipeline(self) -> ARDragPipeline:
        weights = merged_copy(self.policy) if self.lora.rank > 0 else self.policy
        return self.pipeline_with(weights, self.pipeline_config)

    @torch.no_grad()
    def probe_rewards(self, batch: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, float]:
        """Mean per-frame rewards of the deployed sampler (every step ODE) on `batch`, one noise draw per seed
        (the seed alone fixes the noise): the `RewardProbe` callback's figure."""
        x0, conds = self.conditions(batch)
        tracks, visible = batch["tracks"].numpy(), batch["visible"].numpy()
        sums: dict[str, list[float]] = {}
        for seed in seeds:
            videos = self._deployed_videos(conds, x0.shape, int(seed))
            for k, v in compute_rewards(self.reward_cfg, videos, tracks, visible).items():
                sums.setdefault(k, []).append(float(v.mean()))
        return {k: float(np.mean(v)) for k, v in sums.items()}

    @torch.no_grad()
    def sample_videos(self, batch: dict[str, Any]) -> np.ndarray:
        x0, conds = self.conditions(batch)
        return self._deployed_videos(conds, x0.shape, self.seed)

    def _deployed_videos(self, conds: Conditions, shape: tuple[int, ...], seed: int) -> np.ndarray:
        """Decoded uint8 videos of the policy with the deployed sampler (every step ODE), noise fixed by `seed`."""
        noise = randn(shape, torch.Generator().manual_seed(seed), self.device)
        chunks = iter_rollout(Denoiser(self.policy, conds), noise, self.rollout_cfg)
        return self.decode_videos(torch.cat([ch.clean for ch in chunks], dim=2))
