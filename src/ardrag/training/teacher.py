"""Teacher stage: flow-matching fine-tune of the bidirectional, motion-conditioned model (the paper's Stage 1).

L = E ||v_theta(x_s, s, c) - (eps - x0)||^2 with x_s = (1 - s) x0 + s eps, s drawn uniformly and warped by the
Wan/SD3 shift; the conditions c are the trajectory latents, the reference latent (+ mask) and the text. Text and
trajectory are dropped independently at a small rate so the teacher also learns the unconditional scores that
classifier-free guidance needs (DMD's real score uses guidance). The exported pipeline is bidirectional with the
teacher's multi-step sampler; its weights are the EMA.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ardrag.pipeline import ARDragPipeline, PipelineConfig
from ardrag.sampling import (
    NUM_TRAIN_TIMESTEPS,
    Conditions,
    Denoiser,
    conversion_sigma,
    randn,
    sample_bidirectional,
    shift_sigma,
    velocity_target,
)
from ardrag.training.base import StageModule, make_ema


@dataclass
class ModelInit:
    """Where the teacher's weights start."""

    pipeline_config: str = "configs/pipeline/toy.json"
    """JSON with the pipeline settings (codec, text encoder, size, ...); see configs/pipeline/."""
    preset: str = "toy"
    """Backbone preset when starting from scratch (toy, tiny, wan2.1-1.3b)."""
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    """Backbone config overrides on top of the preset (e.g. num_layers)."""
    base: str | None = None
    """Full scale: local diffusers Wan2.1 `transformer/` folder (condition channels are added zero-initialised)."""
    init: str | None = None
    """An exported ardrag pipeline folder to continue from (overrides preset and base)."""
    seed: int = 0
    """Seed of the from-scratch initialisation."""


@dataclass
class TeacherOptim:
    """AdamW with linear warm-up then constant lr (the paper's lr 1e-5 at full scale)."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    ema_decay: float = 0.999
    """EMA of the weights, exported (0: export the raw weights)."""


@dataclass
class TeacherLoss:
    """Flow-matching loss knobs."""

    shift: float = 3.0
    """Wan/SD3 timestep shift k: s' = k s / (1 + (k - 1) s) (more weight on high noise for k > 1)."""
    text_dropout: float = 0.1
    """Chance to replace a sample's prompt by the negative prompt (unconditional text for CFG)."""
    trajectory_dropout: float = 0.1
    """Chance to zero a sample's trajectory channels (the reference image is always kept)."""
    weighting: str = "velocity"
    """Space the squared error is averaged in: `velocity` (||v_hat - v||^2, the flow-matching loss) or `sample`
    (||x0_hat - x0||^2 = s^2 ||v_hat - v||^2, s clamped as the model converts). With an x0-predicting backbone the
    velocity loss weights a sample by 1 / s^2 (up to 400 at s = 0.05), so the few low-noise draws of a batch swamp
    the high-noise ones where the motion (the layout) is decided; `sample` weights every level alike."""


@dataclass
class TeacherSampling:
    """How the exported teacher (and the logged samples) generate: its full multi-step sampler."""

    num_steps: int = 20
    shift: float = 3.0
    guidance_scale: float = 1.0
    """Classifier-free guidance on text (and the dropped-out conditions) at export; 1 = off."""


class TeacherModule(StageModule):
    """Bidirectional motion-conditioned flow-matching teacher.

    Args:
        model: where the weights start (preset from scratch, a Wan2.1 folder, or an exported pipeline).
        optim: AdamW, warm-up and EMA.
        loss: timestep shift and condition dropout.
        sampling: the exported teacher's sampler (steps, shift, guidance).
        seed: every random draw of a step is a function of (seed, global step, rank).
    """

    def __init__(
        self,
        model: ModelInit | None = None,
        optim: TeacherOptim | None = None,
        loss: TeacherLoss | None = None,
        sampling: TeacherSampling | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.init_cfg = model or ModelInit()
        self.optim_cfg = optim or TeacherOptim()
        self.loss_cfg = loss or TeacherLoss()
        self.sampling_cfg = sampling or TeacherSampling()
        if self.loss_cfg.weighting not in ("velocity", "sample"):
            raise ValueError(
                f"loss.weighting must be 'velocity' or 'sample', got {self.loss_cfg.weighting!r}"
            )
        pipe = build_pipeline(self.init_cfg)
        self.transformer = pipe.transformer.train().requires_grad_(True)
        self.ema = make_ema(self.transformer, self.optim_cfg.ema_decay)
        self.attach_pipeline(pipe)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        o = self.optim_cfg
        opt = torch.optim.AdamW(
            self.transformer.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay
        )
        warm = max(1, o.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def drop_conditions(self, conds: Conditions, g: torch.Generator) -> Conditions:
        """Per sample: text -> negative prompt with p = text_dropout; drags removed (`Conditioner.blank_drags`) with p =
        trajectory_dropout."""
        b = conds.context.shape[0]
        u = torch.rand(2, b, generator=g).to(self.device)
        drop_text = (u[0] < self.loss_cfg.text_dropout).view(b, 1, 1)
        ctx = torch.where(drop_text, conds.negative_context, conds.context)
        cond = self.conditioner.blank_drags(conds.cond, u[1] < self.loss_cfg.trajectory_dropout)
        return dataclasses.replace(conds, context=ctx, cond=cond)

    def flow_matching_loss(
        self, x0: torch.Tensor, conds: Conditions, g: torch.Generator, sigma: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean squared velocity error; sigma (B,) drawn uniformly and shifted unless given."""
        b = x0.shape[0]
        if sigma is None:
            sigma = shift_sigma(torch.rand(b, generator=g), self.loss_cfg.shift).to(self.device)
        eps = randn(x0.shape, g, self.device)
        s = sigma.view(b, 1, 1, 1, 1)
        x_s = (1 - s) * x0 + s * eps
        v = self.transformer(x_s, sigma * NUM_TRAIN_TIMESTEPS, conds.context, cond=conds.cond)
        target = velocity_target(self.transformer, x_s, x0, eps, s)
        err = (v.float() - target) ** 2
        if self.loss_cfg.weighting == "sample":  # x0_hat - x0 = s (v_hat - v)
            err = err * conversion_sigma(self.transformer, s) ** 2
        return err.mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        g = self.step_generator()
        x0, conds = self.conditions(batch)
        loss = self.flow_matching_loss(x0, self.drop_conditions(conds, g), g)
        bs = x0.shape[0]
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=bs)
        self.log("train/flow_matching", loss, on_step=True, batch_size=bs)
        self.log_throughput(bs)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.transformer)

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Flow-matching loss at fixed noise levels 0.1..0.9 with seeded noise (comparable across steps)."""
        x0, conds = self.conditions(batch)
        g = torch.Generator().manual_seed(self.seed * 7919 + batch_idx)
        losses = []
        for s in np.linspace(0.1, 0.9, 5):
            sigma = torch.full((x0.shape[0],), float(s), device=self.device)
            losses.append(self.flow_matching_loss(x0, conds, g, sigma))
        self.log("val/loss", torch.stack(losses).mean(), batch_size=x0.shape[0], sync_dist=True)

    # ------------------------------------------------------------------ hand-over
    def exported_config(self) -> PipelineConfig:
        s = self.sampling_cfg
        return dataclasses.replace(
            self.pipeline_config,
            mode="bidirectional",
            timesteps=None,
            num_steps=s.num_steps,
            shift=s.shift,
            guidance_scale=s.guidance_scale,
        )

    def export_pipeline(self) -> ARDragPipeline:
        weights = self.ema.module if self.ema is not None else self.transformer
        return self.pipeline_with(weights, self.exported_config())

    @torch.no_grad()
    def sample_videos(self, batch: dict[str, Any]) -> np.ndarray:
        x0, conds = self.conditions(batch)
        cfg = self.exported_config()
        model = self.ema.module if self.ema is not None else self.transformer
        den = Denoiser(model, conds, cfg.guidance_scale)
        noise = randn(x0.shape, torch.Generator().manual_seed(self.seed), self.device)
        return self.decode_videos(sample_bidirectional(den, noise, cfg.schedule()))


def build_pipeline(init: ModelInit) -> ARDragPipeline:
    """The starting pipeline: an export (`init`), a Wan2.1 folder (`base`), or a fresh preset."""
    if init.init is not None:
        pipe = ARDragPipeline.from_pretrained(init.init)
        pipe.transformer.float()  # exports may store bf16 weights; training keeps float32 masters
        return pipe
    cfg_path = Path(init.pipeline_config)
    if not cfg_path.exists():
        raise FileNotFoundError(f"pipeline config {cfg_path} does not exist (see configs/pipeline/)")
    import json

    config = PipelineConfig.from_dict(json.loads(cfg_path.read_text()))
    if init.base is not None:
        return ARDragPipeline.from_base(init.base, config)
    return ARDragPipeline.from_preset(init.preset, config, seed=init.seed, **init.preset_overrides)
