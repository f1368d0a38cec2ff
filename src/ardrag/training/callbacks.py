"""Training callbacks: sample videos with the target trajectories drawn (every stage), and the RL stage's reward
probe on fixed validation conditions.

One rule for every callback, on any number of ranks (`on_every_rank_write_on_rank0`): the inputs come from rank 0
and are broadcast, every rank runs the computation (its forwards gather sharded weights under FSDP, so a rank that
skips them would leave the others waiting) and reads `trainer.log_dir` (a broadcast), then rank 0 alone writes
files and logs. A callback that returned early on ranks other than 0 would desynchronise the ranks' collectives.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import numpy as np
import torch

from ardrag.video import draw_tracks, write_video


@contextmanager
def eval_mode(module: pl.LightningModule):
    """`module` in eval mode for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def due(step: int, every: int) -> bool:
    """A periodic callback's turn: every `every` steps after the first (0: never)."""
    return every > 0 and step > 0 and step % every == 0


T = TypeVar("T")
R = TypeVar("R")


def on_every_rank_write_on_rank0(
    trainer: pl.Trainer, compute: Callable[[], T], write: Callable[[T, Path], R]
) -> R | None:
    """The rule of every callback here: `compute()` runs on every rank (collectives, forwards of sharded weights),
    `trainer.log_dir` (a broadcast under a multi-process strategy) is read on every rank, then rank 0 alone calls
    `write(result, log_dir)` and its value is returned there (None on the other ranks)."""
    result = compute()
    log_dir = Path(trainer.log_dir or trainer.default_root_dir)
    if not trainer.is_global_zero:
        return None
    return write(result, log_dir)


def rank0_batch(trainer: pl.Trainer, n: int) -> dict[str, Any] | None:
    """`fixed_val_batch` of rank 0, broadcast to every rank (ranks read disjoint validation shards, and a rank
    without one would otherwise skip the computation the others wait in). Call on every rank."""
    batch = fixed_val_batch(trainer, n) if trainer.is_global_zero else None
    if trainer.world_size > 1:
        batch = trainer.strategy.broadcast(batch, src=0)
    return batch


def fixed_val_batch(trainer: pl.Trainer, n: int) -> dict[str, Any] | None:
    """The first `n` conditions of the datamodule's validation stream as one batch (None without one)."""
    dm = trainer.datamodule
    loader = dm.val_dataloader() if dm is not None else None
    if not loader:
        return None
    parts: list[dict[str, Any]] = []
    for batch in loader:
        parts.append(batch)
        if sum(len(b["prompt"]) for b in parts) >= n:
            break
    if not parts:
        return None

    def join(key: str, vals: list[Any]) -> Any:
        if isinstance(vals[0], torch.Tensor):
            return torch.cat(vals)[:n]
        if isinstance(vals[0], list):
            return [x for v in vals for x in v][:n]
        return vals[0]

    return {k: join(k, [b[k] for b in parts]) for k in parts[0]}


class SampleVideos(pl.Callback):
    """Every `every_n_steps` (and at the end of fit), generate videos for a fixed validation batch.

    The videos, with the target trajectories drawn, are written as GIFs to `<log_dir>/samples/step_XXXXXX.gif`
    (an encoder that works; torch's add_video needs moviepy < 2) and a strip of frames goes to TensorBoard as an
    image (`samples/frames`).

    Args:
        every_n_steps: interval in training steps (0: only at the end of fit).
        num_videos: videos from the batch.
        num_frames_logged: frames per video in the TensorBoard strip.
        scale: upscale of each frame before drawing (toy frames are 64 x 64).
    """

    def __init__(
        self, every_n_steps: int = 500, num_videos: int = 4, num_frames_logged: int = 6, scale: int = 2
    ):
        self.every_n_steps = every_n_steps
        self.num_videos = num_videos
        self.num_frames_logged = num_frames_logged
        self.scale = scale
        self._batch: dict[str, Any] | None = None

    def _fixed_batch(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        if self._batch is None:
            self._batch = rank0_batch(trainer, self.num_videos)
        return self._batch

    def log_samples(self, trainer: pl.Trainer, module: pl.LightningModule) -> Path | None:
        """Generate on every rank, write the GIF and the TensorBoard strip on rank 0 (its path; None elsewhere)."""
        batch = self._fixed_batch(trainer)  # the same on every rank, so all ranks agree to skip or to sample
        if batch is None:
            return None
        step = trainer.global_step

        def compute() -> np.ndarray:
            with eval_mode(module):
                return module.sample_videos(batch)

        def write(videos: np.ndarray, log_dir: Path) -> Path:
            tracks, visible = batch["tracks"].numpy(), batch["visible"].numpy()
            drawn = [draw_tracks(v, tracks[i], visible[i], self.scale) for i, v in enumerate(videos)]
            grid = np.concatenate(drawn, axis=2)  # videos side by side: (T, H, B * W, 3)
            path = write_video(log_dir / "samples" / f"step_{step:06d}.gif", grid, fps=8.0)
            logger = trainer.logger
            if logger is not None and hasattr(logger.experiment, "add_image"):
                idx = np.linspace(0, len(grid) - 1, self.num_frames_logged).round().astype(int)
                strip = np.concatenate(list(grid[idx]), axis=0)  # frames top to bottom
                logger.experiment.add_image("samples/frames", strip, step, dataformats="HWC")
            return path

        return on_every_rank_write_on_rank0(trainer, compute, write)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if due(trainer.global_step, self.every_n_steps):
            self.log_samples(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.log_samples(trainer, pl_module)


class RewardProbe(pl.Callback):
    """The RL stage's rewards on FIXED validation conditions and noise, with the deployed (deterministic) sampler,
    before the first step and every `every_n_steps` optimizer steps: logged as `val/reward/<term>`.

    The per-batch training reward (`train/reward/*`) mostly follows which conditions a batch happens to hold (0.6-1.0
    on the toy world for the same policy), so a small improvement of the policy is invisible in it; this probe holds
    conditions and noise fixed, so its change is the policy's. Cost: `num_conditions` x `len(seeds)` generated
    videos per probe.

    Args:
        every_n_steps: interval in optimizer steps (the RL stage makes `inner_updates` per batch of rollouts).
        num_conditions: validation conditions (the first of the validation stream).
        seeds: noise seeds; each condition is generated once per seed.
    """

    def __init__(self, every_n_steps: int = 40, num_conditions: int = 16, seeds: tuple[int, ...] = (0, 1)):
        self.every_n_steps = every_n_steps
        self.num_conditions = num_conditions
        self.seeds = tuple(seeds)
        self._batch: dict[str, Any] | None = None
        self._last_step = -1

    def probe(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, float] | None:
        """Rewards computed on every rank, logged on rank 0 (the metrics there; None elsewhere)."""
        step = trainer.global_step
        if step == self._last_step:  # the same on every rank
            return None
        if self._batch is None:
            self._batch = rank0_batch(trainer, self.num_conditions)
        if self._batch is None:
            return None
        self._last_step = step

        def compute() -> dict[str, float]:
            with eval_mode(module):
                return module.probe_rewards(self._batch, self.seeds)

        def write(means: dict[str, float], log_dir: Path) -> dict[str, float]:
            metrics = {f"val/reward/{k}": v for k, v in means.items()}
            if trainer.logger is not None:
                trainer.logger.log_metrics(metrics, step=step)
            return metrics

        return on_every_rank_write_on_rank0(trainer, compute, write)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:  # a resumed run logged its starting point already
            self.probe(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if due(trainer.global_step, self.every_n_steps):
            self.probe(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.probe(trainer, pl_module)
