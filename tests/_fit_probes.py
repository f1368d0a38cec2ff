"""Callbacks the training-frame tests load by class path (tests/ is on sys.path when they run)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning.pytorch as pl


class KillAt(pl.Callback):
    """SIGKILL the process at the start of training step `step` (after earlier periodic checkpoints)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordKeys(pl.Callback):
    """Append each rank's batch keys to `<folder>/rank<r>.jsonl`."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(list(batch["key"])) + "\n")
