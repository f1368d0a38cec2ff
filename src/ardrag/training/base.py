"""What every training stage shares: batch -> conditions, seeded per-step randomness, EMA, export, samples.

How to write a stage (teacher.py is the smallest example):
  1. subclass `StageModule`; build or load an `ARDragPipeline` and call `self.attach_pipeline(pipe)` (encoders are
     kept out of the module tree and the checkpoint; the trainable transformer(s) are your submodules);
  2. `training_step`: `x0, conds = self.conditions(batch)`; draw every random number from
     `g = self.step_generator(stream)` with `sampling.randn(shape, g, device)`, so resume is exact; log
     `train/loss` (the stage's total) and per-term `train/...` scalars;
  3. `export_pipeline()` returns the `ARDragPipeline` to hand over (EMA weights, the stage's generation settings):
     it is written to `<default_root_dir>/export` at the end of fit and by `ardrag-export --ckpt`;
  4. `sample_videos(batch)` returns uint8 videos (B, T, H, W, 3) for the `SampleVideos` callback.

On several processes (DDP, or per-block FSDP with `ardrag.training.fsdp.PerBlockFSDP`) every rank runs every
forward, export and callback computation (sharded weights are gathered by all ranks together); only rank 0 writes.
`configure_model` shards every `CausalWanTransformer` of the stage under FSDP and does nothing otherwise.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ardrag.conditioning import video_to_uint8
from ardrag.pipeline import ARDragPipeline, PipelineConfig
from ardrag.sampling import Conditions

EXPORT_DIR = "export"
"""Where fit writes the exported pipeline, under trainer.default_root_dir."""


def make_ema(module: torch.nn.Module, decay: float) -> AveragedModel | None:
    """EMA copy of `module` (None when decay is 0); update with `.update_parameters(module)`."""
    if decay <= 0:
        return None
    ema = AveragedModel(module, multi_avg_fn=_ema_update(decay), use_buffers=True)
    return ema.requires_grad_(False)


def _ema_update(decay: float):
    """torch's EMA update, applied separately to sharded parameters (DTensors under FSDP) and plain tensors (the
    buffers), which one foreach call cannot mix; unsharded, exactly torch's single call."""
    ema_fn = get_ema_multi_avg_fn(decay)

    def update(ema_list: list, current_list: list, num_averaged: torch.Tensor) -> None:
        sharded = [hasattr(t, "full_tensor") for t in ema_list]
        if all(sharded) or not any(sharded):
            ema_fn(ema_list, current_list, num_averaged)
            return
        for want in (True, False):
            idx = [i for i, s in enumerate(sharded) if s == want]
            ema_fn([ema_list[i] for i in idx], [current_list[i] for i in idx], num_averaged)

    return update


class StageModule(pl.LightningModule):
    """Base of the teacher, SFT and RL stages (see the module docstring for the recipe)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self._encoders: dict[str, torch.nn.Module] = {}
        self._t_last: float | None = None

    # ------------------------------------------------------------------ pipeline pieces
    def attach_pipeline(self, pipe: ARDragPipeline) -> None:
        """Keep the fixed encoders (codec, text) outside the module tree; remember the pipeline config."""
        self._encoders = {
            "codec": pipe.codec.requires_grad_(False),
            "text": pipe.text_encoder.requires_grad_(False),
        }
        # the pipeline's own conditioner: training conditions are what inference builds
        self.conditioner = pipe.conditioner
        self.pipeline_config = pipe.config

    @property
    def codec(self) -> torch.nn.Module:
        return self._encoders["codec"]

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self._encoders["text"]

    def on_fit_start(self) -> None:
        for enc in self._encoders.values():
            enc.to(self.device)

    def configure_model(self) -> None:
        """Under `PerBlockFSDP`: shard every transformer of the stage (trained and frozen) one block per unit
        (`ardrag.training.fsdp.shard_stage`); other strategies keep the module as built."""
        from ardrag.training.fsdp import PerBlockFSDP, shard_stage

        strategy = self._trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, PerBlockFSDP):
            return
        shard_stage(
            self,
            strategy.device_mesh["data_parallel"],
            strategy.activation_checkpointing,
            strategy.param_dtype,
            strategy.reduce_dtype,
            strategy.reshard_after_forward,
        )

    # ------------------------------------------------------------------ frozen submodules
    frozen_modules: tuple[str, ...] = ()
    """Submodules re-read from their export at construction (a teacher, a KL reference): never stored in
    checkpoints, and filled back in from the live module when a checkpoint is loaded."""

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        skip = tuple(f"{name}." for name in self.frozen_modules)
        return type(sd)((k, v) for k, v in sd.items() if not (skip and k.startswith(skip)))

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        full = dict(state_dict)
        for name in self.frozen_modules:
            full.update({f"{name}.{k}": v for k, v in getattr(self, name).state_dict().items()})
        return super().load_state_dict(full, strict=strict, **kwargs)

    # ------------------------------------------------------------------ exact resume
    batches_seen: int = 0
    """Training batches consumed so far (saved in checkpoints; the step-indexed data stream resumes there)."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.batches_seen += 1  # before any checkpoint of this step is written

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ardrag_batches_seen"] = self.batches_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batches_seen = int(checkpoint.get("ardrag_batches_seen", 0))

    def step_generator(self, stream: int = 0) -> torch.Generator:
        """The random stream `stream` of this step: a function of (seed, global step, rank, stream) only."""
        key = zlib.crc32(
            np.array([self.seed, self.global_step, self.global_rank, stream], np.int64).tobytes()
        )
        return torch.Generator().manual_seed(key)

    @torch.no_grad()
    def conditions(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Conditions]:
        """Batch -> data latents x0 (B, C, F, h, w) and the backbone's conditions (with the negative prompt).

        A batch with precomputed clip latents and prompt embeddings (`ardrag-prepare --encode`, checked against
        this stage's encoders by `ardrag.precomputed`) uses them instead of encoding the clip and prompts; the
        drags (trajectory latents) and the reference latent are always encoded here."""
        from ardrag.precomputed import precomputed_inputs

        video = batch["video"].to(self.device)
        stored = precomputed_inputs(batch, self.codec, self.text_encoder, self.device)
        x0 = self.codec.encode(video) if stored is None else stored[0]
        cond = self.conditioner(
            video[:, :, 0], batch["tracks"].to(self.device), batch["visible"].to(self.device)
        )
        if stored is not None:
            return x0, Conditions(stored[1], cond, stored[2])
        neg = batch.get("negative_prompt") or [""] * video.shape[0]
        ctx = self.text_encoder.encode(list(batch["prompt"]))
        return x0, Conditions(ctx.to(self.device), cond, self.text_encoder.encode(list(neg)).to(self.device))

    def trajectory_channels(self) -> list[int]:
        """Channels of `Conditions.cond` that carry the drags (trajectory latent, motion preview when on; the rest:
        reference latent and mask)."""
        return self.conditioner.trajectory_channel_index()

    # ------------------------------------------------------------------ logging helpers
    def log_throughput(self, batch_size: int) -> None:
        """`train/samples_per_s` from the wall time between consecutive training steps."""
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/samples_per_s", batch_size / max(now - self._t_last, 1e-9), batch_size=batch_size)
        self._t_last = now

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = [
            _full(p.grad.detach().norm())
            for g in optimizer.param_groups
            for p in g["params"]
            if p.grad is not None
        ]
        if norms:
            self.log("train/grad_norm", torch.stack(norms).norm(), on_step=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True)

    # ------------------------------------------------------------------ hand-over
    def export_pipeline(self) -> ARDragPipeline:
        raise NotImplementedError

    def sample_videos(self, batch: dict[str, Any]) -> np.ndarray:
        """uint8 (B, T, H, W, 3) videos generated for the batch's conditions (for the sample logger)."""
        raise NotImplementedError

    def decode_videos(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (B, C, F, h, w) -> uint8 videos (B, T, H, W, 3) (sample logs, rewards)."""
        return np.stack([video_to_uint8(v) for v in self.codec.decode(latents)])

    def pipeline_with(self, weights: torch.nn.Module, config: PipelineConfig) -> ARDragPipeline:
        """A pipeline around a fresh, unsharded copy of `weights` (training keeps its own modules) and this stage's
        encoders. Call it on every rank: sharded weights are gathered by all ranks, and only global rank 0 gets
        them (the other ranks' pipelines hold a placeholder transformer on the meta device, never to be used)."""
        state = full_state_dict(weights)  # a collective when sharded
        on_rank0 = self._trainer is None or self.trainer.is_global_zero
        cls = plain_class(weights)
        if not on_rank0:
            with torch.device("meta"):
                model = cls.from_config(model_config(weights))
            return ARDragPipeline(model.eval(), self.codec, self.text_encoder, config)
        model = cls.from_config(model_config(weights)).to(self.device)
        model.load_state_dict(state)
        return ARDragPipeline(model.eval(), self.codec, self.text_encoder, config)

    def export_to(self, path: str | Path, dtype: torch.dtype | None = None) -> Path | None:
        """Write the exported pipeline; `dtype` (e.g. torch.bfloat16) stores the transformer weights smaller
        (stages that load an export for training upcast it to float32). Call on every rank; rank 0 writes (the
        path there, None elsewhere)."""
        pipe = self.export_pipeline()
        if self._trainer is not None and not self.trainer.is_global_zero:
            return None
        if dtype is not None:
            pipe.transformer.to(dtype)
        pipe.save_pretrained(path)
        return Path(path)

    def on_fit_end(self) -> None:
        out = self.export_to(Path(self.trainer.default_root_dir) / EXPORT_DIR)  # every rank: gathers shards
        if out is not None:
            print(f"exported pipeline: {out}")


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (a sharded parameter's value or statistic) as a plain tensor; other tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def plain_class(module: torch.nn.Module) -> type:
    """The model class of `module` (FSDP2 re-classes a sharded module to a subclass `FSDP<name>`)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


def model_config(weights: torch.nn.Module) -> dict[str, Any]:
    """A diffusers model's constructor arguments: its config without diffusers' bookkeeping keys. (A model loaded
    from a folder lists in `_use_default_values` the keys its config.json lacked, and `from_config` drops those:
    a Wan2.1 base given condition channels would come back without them.)"""
    return {k: v for k, v in weights.config.items() if not k.startswith("_")}


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s unsharded state dict. Sharded (FSDP2): a collective of every rank, gathered to CPU on global rank 0
    (empty on the others); otherwise the plain state dict."""
    from ardrag.training.fsdp import is_sharded

    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def module_from_run_config(config_path: str | Path) -> StageModule:
    """Instantiate a run's stage module from the config.yaml that ardrag-fit saved (no weights loaded)."""
    import yaml
    from jsonargparse import ArgumentParser

    cfg = yaml.safe_load(Path(config_path).read_text())
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(StageModule, "model")
    ns = parser.parse_object({"model": cfg["model"]})
    init = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return init(ns).model


def export_checkpoint(
    ckpt: str | Path, out: str | Path, config: str | Path | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Export the pipeline of a Lightning checkpoint of an ardrag-fit run (e.g. one that was stopped).

    `config` defaults to the run's saved `<root>/tb/config.yaml` (ckpt in `<root>/checkpoints/`).
    """
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    config = Path(config) if config is not None else ckpt.parent.parent / "tb" / "config.yaml"
    if not config.exists():
        raise FileNotFoundError(f"run config {config} not found: pass the run's config.yaml")
    module = module_from_run_config(config)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors and plain containers only
    module.load_state_dict(state["state_dict"])
    return module.export_to(out, dtype)
