"""Callbacks every stage uses: sample videos with the target trajectories drawn, written as GIF and logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from ardrag.video import draw_tracks, write_video


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
            dm = trainer.datamodule
            loader = dm.val_dataloader() if dm is not None else None
            if not loader:
                return None
            batch = next(iter(loader))
            n = min(self.num_videos, len(batch["prompt"]))
            self._batch = {k: (v[:n] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
        return self._batch

    def log_samples(self, trainer: pl.Trainer, module: pl.LightningModule) -> Path | None:
        batch = self._fixed_batch(trainer)
        if batch is None or not trainer.is_global_zero:
            return None
        was_training = module.training
        module.eval()
        try:
            videos = module.sample_videos(batch)
        finally:
            module.train(was_training)
        tracks, visible = batch["tracks"].numpy(), batch["visible"].numpy()
        drawn = [draw_tracks(v, tracks[i], visible[i], self.scale) for i, v in enumerate(videos)]
        grid = np.concatenate(drawn, axis=2)  # videos side by side: (T, H, B * W, 3)
        step = trainer.global_step
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        path = write_video(log_dir / "samples" / f"step_{step:06d}.gif", grid, fps=8.0)
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "add_image"):
            idx = np.linspace(0, len(grid) - 1, self.num_frames_logged).round().astype(int)
            strip = np.concatenate(list(grid[idx]), axis=0)  # frames top to bottom
            logger.experiment.add_image("samples/frames", strip, step, dataformats="HWC")
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.log_samples(trainer, pl_module)
