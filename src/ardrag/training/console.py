"""What ``ardrag-fit`` prints while it trains: one progress bar in optimizer steps, and no Lightning notices that do
not concern the user.

Lightning's default bar counts the batches of an epoch. The SFT and RL stages take several optimizer steps per
batch (``grpo.inner_updates``, or generator and critic steps), so that bar shows "Epoch 0/-2 ... 40/80" and stops
halfway when ``max_steps`` is reached, with a rate of ``0.00it/s`` and no ETA for batches of 40-60 s.
``StepProgressBar`` counts ``trainer.global_step`` of ``max_steps`` (the unit ``max_steps``, ``checkpoint_every``
and the TensorBoard steps count in), shows seconds per step and the time left, says when validation runs, and
redraws every few seconds so that a long batch shows the clock moving.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from typing import Any, TextIO

from lightning.pytorch.callbacks import ProgressBar

# Lightning notices ardrag-fit's runs trigger by design (message regex, category name or None for a log record).
QUIET_WARNINGS = (
    # SFT and RL optimize manually: their checkpoint at step N holds the weights after N steps, which is what resuming
    # from it needs (tests/test_fit.py resumes to the uninterrupted losses).
    r"Using ModelCheckpoint with manual optimization",
    # The frozen teacher, critic copies and reward models are in eval mode on purpose.
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # SFT and RL have no validation loss: their validation data feeds the sample and reward-probe callbacks.
    r"You passed in a `val_dataloader` but have no `validation_step`",
    # Lightning's own call of a torch API that newer torch deprecates; nothing the user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
QUIET_LOGS = ("💡 Tip:",)  # Lightning's advertisements for its cloud services


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(QUIET_LOGS)


def quiet_lightning() -> None:
    """Silence the notices in ``QUIET_WARNINGS`` and ``QUIET_LOGS``; every other warning still shows."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())


class StepProgressBar(ProgressBar):
    """One bar over the run's optimizer steps: ``trainer.global_step`` of ``max_steps``, seconds per step, the time
    left, the last logged loss or reward, and the phase when it is not training. Redrawn every ``refresh_s``
    seconds between steps."""

    def __init__(self, refresh_s: float = 5.0, file: TextIO | None = None) -> None:
        super().__init__()
        self.refresh_s = refresh_s
        self.file = file
        self._enabled = True
        self.bar: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._phase = ""

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        from tqdm import tqdm

        tqdm.write(" ".join(map(str, args)), file=self.file or sys.stderr)

    def _total(self, trainer: Any) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        est = getattr(trainer, "estimated_stepping_batches", None)
        return int(est) if isinstance(est, (int, float)) and est != float("inf") else None

    def _postfix(self, trainer: Any) -> str:
        metrics = trainer.progress_bar_metrics or {}
        callback = getattr(trainer, "callback_metrics", {}) or {}
        shown = []
        for key in ("train/loss", "train/reward/total", "loss"):
            value = metrics.get(key, callback.get(key))
            if value is not None:
                name = "reward" if key == "train/reward/total" else key.split("/")[-1]
                shown.append(f"{name} {float(value):.4g}")
                break
        if self._phase:
            shown.append(self._phase)
        return ", ".join(shown)

    def _draw(self, trainer: Any) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix_str(self._postfix(trainer), refresh=False)
        self.bar.update(max(0, int(trainer.global_step) - self.bar.n))  # the rate and ETA come from update()
        self.bar.refresh()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.is_enabled:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=self._total(trainer),
            initial=int(trainer.global_step),
            desc="ardrag-fit",
            unit="step",
            file=self.file or sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
            bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| [{elapsed}<{remaining}, {rate_fmt}]{postfix}",
        )
        self._stop.clear()
        if self.refresh_s > 0:
            self._ticker = threading.Thread(target=self._tick, args=(trainer,), daemon=True)
            self._ticker.start()

    def _tick(self, trainer: Any) -> None:
        while not self._stop.wait(self.refresh_s):
            bar = self.bar
            if bar is not None:
                bar.refresh()  # the elapsed clock moves during a long batch

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._draw(trainer)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._phase = "sanity check" if trainer.sanity_checking else "validation"
        self._draw(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._phase = ""
        self._draw(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self.bar is not None:
            self._draw(trainer)
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)
