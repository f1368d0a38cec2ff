"""SFT stage: distil the bidirectional teacher into the causal few-step student with DMD and Self-Rollout.

Student, critic (fake score) and teacher (real score) all start as copies of the teacher export's transformer.
Per training step (the paper; formulas in docs/method.md):
  - every `generator_every` steps, the generator step: per chunk an exit step n_m is drawn; the student rolls out
    frame by frame from noise with its own KV cache (`cache_update`: full_denoise = Self-Rollout); the DMD loss
    of its exit x0-predictions is backpropagated with the bounded-memory route (one chunk's graph at a time);
  - every step, the critic step: flow matching of the critic on the detached student samples;
  - optionally first `ode_init_steps` steps of CausVid-style ODE regression instead of DMD.
One AdamW (beta1 = 0) over two parameter groups (student, critic); a group without gradients is skipped by AdamW,
so the critic-only steps leave the student untouched and `global_step` counts training steps. EMA of the student
is what gets exported.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ardrag.models.attention import CausalConfig
from ardrag.pipeline import ARDragPipeline
from ardrag.sampling import (
    Conditions,
    Denoiser,
    FlowSchedule,
    RolloutConfig,
    iter_rollout,
    randn,
    sample_bidirectional,
)
from ardrag.training.base import StageModule, make_ema
from ardrag.training.dmd import (
    AdversarialHead,
    DMDConfig,
    critic_loss,
    generator_loss,
    ode_regression_loss,
    teacher_ode_states,
)
from ardrag.training.self_rollout import (
    StudentRollout,
    backward_loss_through_rollout,
    sample_exit_steps,
    student_rollout,
)


@dataclass
class StudentConfig:
    """How the student generates (written into its exported pipeline folder)."""

    timesteps: list[float] = field(default_factory=lambda: [1000.0, 755.0, 522.0])
    """Denoising timesteps per frame (the paper's 1000, 755, 522, then 0)."""
    chunk_size: int = 1
    """Latent frames per AR step (1: AR-Drag; 3: the Self-Forcing-style baseline)."""
    cache_frames: int = 7
    """KV cache window in latent frames (the paper's 7)."""
    sink_frames: int = 0
    """Frames kept in the cache forever."""
    context_timestep: float = 0.0
    """Timestep (noise level) at which clean frames are written to the cache."""
    cache_update: str = "full_denoise"
    """What the training rollout caches: full_denoise (Self-Rollout), exit_prediction (Self-Forcing),
    ground_truth (teacher forcing)."""
    grad_through_context: bool = False
    """False: gradient only through each chunk's exit forward, cached K/V constant (one chunk graph alive).
    True: one checkpointed teacher-forcing pass, gradient also through the context frames' K/V (costs a forward
    and backward over 2F frames)."""
    exit_step: str = "per_chunk"
    """How exit steps are drawn: 'per_chunk' (each chunk its own n_m, as the paper's Self-Rollout reads) or
    'per_video' (one n for every chunk of a video, Self-Forcing's same step across blocks)."""
    dmd_sample: str = "exit"
    """What DMD scores: 'exit' (the chunks' exit x0-predictions spliced together) or 'final' (each chunk after all
    N steps, i.e. what inference shows; the gradient still enters the student through each chunk's exit prediction,
    straight-through). With full_denoise, 'exit' makes the teacher score a video the student never produced: each
    later frame was conditioned on the fully denoised frames, not on the exit predictions. With exit_prediction,
    'final' runs each chunk's steps after its exit too (no gradient) while the cache still receives the exit
    prediction, so the two cache rules differ in what enters the cache alone."""

    def __post_init__(self) -> None:
        if self.exit_step not in ("per_chunk", "per_video"):
            raise ValueError(f"exit_step must be 'per_chunk' or 'per_video', got {self.exit_step!r}")
        if self.dmd_sample not in ("exit", "final"):
            raise ValueError(f"dmd_sample must be 'exit' or 'final', got {self.dmd_sample!r}")

    def rollout(self) -> RolloutConfig:
        return RolloutConfig(
            schedule=FlowSchedule(self.timesteps),
            causal=CausalConfig(self.chunk_size, self.cache_frames, self.sink_frames),
            context_timestep=self.context_timestep,
            cache_update=self.cache_update,
        )


@dataclass
class OptimConfig:
    """AdamW for the generator (student) and critic; Self-Forcing's values by default."""

    lr_generator: float = 2e-6
    lr_critic: float = 4e-7
    beta1: float = 0.0
    """DMD practice: no first moment (the DMD gradient is noisy and non-stationary)."""
    beta2: float = 0.999
    weight_decay: float = 0.01
    grad_clip: float = 10.0
    """Max global grad norm per model (0: off)."""
    generator_every: int = 5
    """k: the generator is updated every k steps, the critic every step."""
    ema_decay: float = 0.99
    """EMA of the student's weights (exported)."""
    ode_init_steps: int = 0
    """First steps of ODE-regression warm start (student only) before DMD."""
    ode_teacher_steps: int = 20
    """Euler steps of the teacher's ODE solutions for the warm start."""

    def __post_init__(self) -> None:
        if self.generator_every < 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("need generator_every >= 1 and 0 <= ema_decay < 1")


SPARSE = (
    "train/dmd",
    "train/generator",
    "train/adversarial_generator",
    "train/grad_norm/generator",
    "train/ode",
)
"""Scalar names logged only on the steps that compute them."""


class SFTModule(StageModule):
    """DMD + Self-Rollout distillation of an exported teacher pipeline into a frame-wise AR student.

    Args:
        teacher: exported teacher pipeline folder (ardrag_pipeline.json + transformer/).
        student: how the student generates and what its training rollout caches.
        dmd: DMD loss knobs (real guidance, noise range, adversarial weight).
        optim: learning rates, k, EMA, warm start.
        seed: base seed; every random draw of a step is a function of (seed, global step, rank).
        adversarial_hidden: width of the adversarial head (used when dmd.adversarial_weight > 0).
        activation_checkpointing: recompute each transformer block in backward (critic step, teacher-forcing
            route): full scale needs it (results/training/sft_memory.md); the replay route's per-chunk forwards
            run with a KV cache and are never checkpointed.
    """

    def __init__(
        self,
        teacher: str = "results/toy/checkpoints/teacher",
        student: StudentConfig | None = None,
        dmd: DMDConfig | None = None,
        optim: OptimConfig | None = None,
        seed: int = 0,
        adversarial_hidden: int = 256,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__(seed)
        self.automatic_optimization = False
        self.student_cfg = student or StudentConfig()
        self.dmd_cfg = dmd or DMDConfig()
        self.optim_cfg = optim or OptimConfig()
        self.rollout_cfg = self.student_cfg.rollout()
        pipe = load_teacher(teacher)
        self.attach_pipeline(pipe)
        self.teacher = pipe.transformer.requires_grad_(False).eval()
        self.student = copy.deepcopy(self.teacher).requires_grad_(True).train()
        self.critic = copy.deepcopy(self.teacher).requires_grad_(True).train()
        if activation_checkpointing:
            self.student.enable_gradient_checkpointing()
            self.critic.enable_gradient_checkpointing()
        self.ema = make_ema(self.student, self.optim_cfg.ema_decay)
        self.head = (
            AdversarialHead(self.student.inner_dim, adversarial_hidden)
            if self.dmd_cfg.adversarial_weight > 0
            else None
        )

    # ------------------------------------------------------------------ optimisation and checkpoints
    def configure_optimizers(self):
        o = self.optim_cfg
        critic_params = list(self.critic.parameters()) + (list(self.head.parameters()) if self.head else [])
        groups = [
            {"params": list(self.student.parameters()), "lr": o.lr_generator, "name": "generator"},
            {"params": critic_params, "lr": o.lr_critic, "name": "critic"},
        ]
        return torch.optim.AdamW(groups, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)

    # the frozen teacher is re-read from its export; checkpoints hold student, critic, EMA and head only
    frozen_modules = ("teacher",)

    # ------------------------------------------------------------------ pieces
    def denoisers(self, conds: Conditions) -> tuple[Denoiser, Denoiser, Denoiser]:
        """(student, teacher with the real guidance, critic) bound to the batch's conditions."""
        return (
            Denoiser(self.student, conds),
            Denoiser(self.teacher, conds, self.dmd_cfg.real_guidance),
            Denoiser(self.critic, conds),
        )

    def _backward(self, loss: torch.Tensor) -> None:
        """Lightning's manual backward under a trainer (precision, strategy), plain backward outside one."""
        if self._trainer is not None:
            self.manual_backward(loss)
        else:
            loss.backward()

    def _clip(self, module: torch.nn.Module) -> torch.Tensor:
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            return torch.zeros(())
        max_norm = self.optim_cfg.grad_clip or float("inf")
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    # ------------------------------------------------------------------ the step
    def ode_step(self, x0: torch.Tensor, conds: Conditions, noise: torch.Tensor, g: torch.Generator) -> dict:
        """Warm start: regress the teacher's ODE solutions (accumulates the student's gradient)."""
        student, teacher, _ = self.denoisers(conds)
        o = self.optim_cfg
        states, x_ode = teacher_ode_states(teacher, noise, self.rollout_cfg.schedule, o.ode_teacher_steps)
        loss = ode_regression_loss(student, states, x_ode, self.rollout_cfg, generator=g)
        self._backward(loss)
        return {"train/ode": loss.detach(), "train/grad_norm/generator": self._clip(self.student)}

    def _exit_steps(self, num_frames: int, g: torch.Generator) -> list[int]:
        n_chunks = -(-num_frames // self.rollout_cfg.causal.chunk_size)
        if self.student_cfg.exit_step == "per_video":
            return sample_exit_steps(1, self.rollout_cfg.schedule.steps, g) * n_chunks
        return sample_exit_steps(n_chunks, self.rollout_cfg.schedule.steps, g)

    def _rollout(
        self, student: Denoiser, x0: torch.Tensor, noise: torch.Tensor, g: torch.Generator
    ) -> tuple[StudentRollout, torch.Tensor | None]:
        """The training rollout (exit steps drawn here; the data latents passed when the cache rule needs them) and
        the finished frames DMD scores under `dmd_sample: final` (None under 'exit')."""
        final = self.student_cfg.dmd_sample == "final"
        exits = self._exit_steps(x0.shape[2], g)
        truth = x0 if self.rollout_cfg.cache_update == "ground_truth" else None
        roll = student_rollout(student, noise, self.rollout_cfg, exits, g, truth, finish=final)
        return roll, (roll.clean if final else None)

    def generator_step(
        self, x0: torch.Tensor, conds: Conditions, noise: torch.Tensor, g: torch.Generator
    ) -> tuple[dict, torch.Tensor]:
        """Self-Rollout + DMD: accumulates the student's gradient. Returns logs and the (detached) sample."""
        student, teacher, critic = self.denoisers(conds)
        roll, final = self._rollout(student, x0, noise, g)
        out = {}

        def loss_fn(x: torch.Tensor) -> torch.Tensor:
            if (
                final is not None
            ):  # score the produced frames, route the gradient through the exit predictions
                x = final.to(x.dtype) + (x - x.detach())
            out["r"] = generator_loss(x, teacher, critic, self.dmd_cfg, generator=g, head=self.head)
            return out["r"].loss

        through = self.student_cfg.grad_through_context
        loss = backward_loss_through_rollout(
            loss_fn, roll, student, self.rollout_cfg, through, self._backward
        )
        r = out["r"]
        logs = {"train/dmd": r.dmd, "train/dmd_grad_norm": r.grad_norm, "train/generator": loss}
        if self.head is not None:
            logs["train/adversarial_generator"] = r.adversarial
        logs["train/grad_norm/generator"] = self._clip(self.student)
        self._log_exit_steps(roll.exit_steps)
        return logs, (roll.x if final is None else final)  # the critic learns what DMD scores

    def critic_step(
        self,
        x0: torch.Tensor,
        conds: Conditions,
        noise: torch.Tensor,
        g: torch.Generator,
        fake: torch.Tensor | None = None,
    ) -> dict:
        """Flow matching of the critic on detached student samples (rolled out here unless `fake` is given)."""
        student, _, critic = self.denoisers(conds)
        if fake is None:
            roll, final = self._rollout(student, x0, noise, g)
            fake = roll.x if final is None else final
        c = critic_loss(fake, critic, self.dmd_cfg, generator=g, head=self.head, x_real=x0)
        self._backward(c.loss)
        logs = {"train/critic": c.flow, "train/critic_total": c.loss.detach()}
        if self.head is not None:
            logs["train/adversarial_critic"] = c.adversarial
        crit = torch.nn.ModuleList([self.critic] + ([self.head] if self.head is not None else []))
        logs["train/grad_norm/critic"] = self._clip(crit)
        return logs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        g = self.step_generator()
        x0, conds = self.conditions(batch)
        noise = randn(x0.shape, g, self.device)
        step, o = self.global_step, self.optim_cfg
        logs: dict[str, torch.Tensor] = {}
        fake = None
        if step < o.ode_init_steps:
            logs.update(self.ode_step(x0, conds, noise, g))
        else:
            if step % o.generator_every == 0:
                gen_logs, fake = self.generator_step(x0, conds, noise, g)
                logs.update(gen_logs)
            logs.update(self.critic_step(x0, conds, noise, g, fake))
        opt.step()
        opt.zero_grad(set_to_none=True)  # a group without grads is skipped by AdamW at the next step
        if "train/grad_norm/generator" in logs and self.ema is not None:
            self.ema.update_parameters(self.student)
        # the stage's total loss: the losses optimised in this step
        total = torch.as_tensor(
            sum(logs.get(k, 0.0) for k in ("train/ode", "train/generator", "train/critic_total"))
        )
        self.log_sparse({k: v for k, v in logs.items() if k.startswith(SPARSE)}, step)
        every = {k: v for k, v in logs.items() if not k.startswith(SPARSE)}
        self.log_dict({**every, "train/loss": total}, on_step=True, batch_size=x0.shape[0])
        self.log("loss", total, prog_bar=True, logger=False, batch_size=x0.shape[0])
        self.log_throughput(x0.shape[0])
        return total

    def log_sparse(self, logs: dict[str, torch.Tensor], step: int) -> None:
        """Scalars of steps that do not run every time (generator every k, warm start) go straight to the
        logger: Lightning's self.log would repeat their last value on every step in between."""
        if logs and self.logger is not None:
            self.logger.log_metrics({k: float(v) for k, v in logs.items()}, step=step)

    def _log_exit_steps(self, exits: list[int]) -> None:
        exp = getattr(self.logger, "experiment", None)
        if exp is not None and hasattr(exp, "add_histogram"):
            exp.add_histogram("train/exit_step", torch.tensor(exits), self.global_step)

    # ------------------------------------------------------------------ sampling and hand-over
    def student_config(self):
        """The exported student's pipeline settings: autoregressive, few steps, no guidance (distilled)."""
        c = self.student_cfg
        return dataclasses.replace(
            self.pipeline_config,
            mode="autoregressive",
            timesteps=list(c.timesteps),
            chunk_size=c.chunk_size,
            cache_frames=c.cache_frames,
            sink_frames=c.sink_frames,
            context_timestep=c.context_timestep,
            guidance_scale=1.0,
        )

    @torch.no_grad()
    def sample(self, conds: Conditions, noise: torch.Tensor, which: str = "ema") -> torch.Tensor:
        """Latents (B, C, F, h, w) from `noise`: 'student'/'ema' roll out frame by frame as at inference (few
        steps, KV cache, full denoise), 'teacher' samples bidirectionally with its own schedule and the real
        guidance (the distribution DMD aims at)."""
        if which == "teacher":
            den = Denoiser(self.teacher, conds, self.dmd_cfg.real_guidance)
            return sample_bidirectional(den, noise, self.pipeline_config.schedule())
        model = self.ema.module if which == "ema" and self.ema is not None else self.student
        g = torch.Generator().manual_seed(self.seed)
        chunks = iter_rollout(Denoiser(model, conds), noise, self.student_config().rollout(), generator=g)
        return torch.cat([c.clean for c in chunks], dim=2)

    @torch.no_grad()
    def sample_videos(self, batch: dict[str, Any]) -> np.ndarray:
        x0, conds = self.conditions(batch)
        noise = randn(x0.shape, torch.Generator().manual_seed(self.seed), self.device)
        return self.decode_videos(self.sample(conds, noise, "ema"))

    def export_pipeline(self) -> ARDragPipeline:
        """The student (EMA weights) as an autoregressive pipeline."""
        weights = self.ema.module if self.ema is not None else self.student
        return self.pipeline_with(weights, self.student_config())


def load_teacher(path: str | Path) -> ARDragPipeline:
    """The exported teacher pipeline; a missing folder or missing weights is one clear error."""
    path = Path(path)
    if not (path / "ardrag_pipeline.json").exists():
        made_by = (
            f" (a teacher run with trainer.default_root_dir={path.parent} writes this one)"
            if path.name == "export"
            else ""
        )
        raise FileNotFoundError(
            f"teacher export not found at {path}: set model.init_args.teacher to an exported teacher pipeline "
            f"folder, the export/ of a teacher run at the same scale{made_by}"
        )
    if not list((path / "transformer").glob("*.safetensors")):
        raise FileNotFoundError(f"teacher weights missing: no safetensors in {path / 'transformer'}")
    pipe = ARDragPipeline.from_pretrained(path)
    pipe.transformer.float()  # exports may store bf16 weights; training keeps float32 masters
    return pipe
