"""ardrag-fit's console: the progress bar counts optimizer steps of max_steps with a rate and an ETA, and the
Lightning notices its runs trigger by design are silenced while other warnings still show."""

from __future__ import annotations

import io
import logging
import time
import types
import warnings

from ardrag.training.console import StepProgressBar, quiet_lightning


def _trainer(**kw):
    base = dict(
        max_steps=8,
        global_step=0,
        progress_bar_metrics={},
        callback_metrics={},
        sanity_checking=False,
        is_global_zero=True,
    )
    return types.SimpleNamespace(**{**base, **kw})


def test_bar_counts_optimizer_steps_of_max_steps():
    out = io.StringIO()
    t = _trainer()
    bar = StepProgressBar(refresh_s=0, file=out)
    bar.on_train_start(t, None)
    assert bar.bar.total == 8 and bar.bar.n == 0
    for k in range(4):  # 2 optimizer steps per batch (RL's inner updates): 4 batches reach max_steps
        t.global_step += 2
        t.progress_bar_metrics = {"train/reward/total": 0.5 + k}
        bar.on_train_batch_end(t, None, None, None, k)
        assert bar.bar.n == t.global_step
    bar.on_validation_start(t, None)
    assert "validation" in bar.bar.postfix
    bar.on_validation_end(t, None)
    text = out.getvalue()
    assert "2/8 steps" in text and "8/8 steps" in text
    assert "reward 3.5" in text and ("step/s" in text or "s/step" in text)
    bar.on_train_end(t, None)
    assert bar.bar is None


def test_a_resumed_run_starts_at_its_step_and_the_clock_moves_between_steps():
    out = io.StringIO()
    t = _trainer(max_steps=80, global_step=40)
    bar = StepProgressBar(refresh_s=0.02, file=out)
    bar.on_train_start(t, None)
    assert bar.bar.n == 40 and "40/80 steps" in out.getvalue()
    drawn = len(out.getvalue())
    time.sleep(0.3)  # no step ends: the ticker still redraws (elapsed time moves)
    assert len(out.getvalue()) > drawn
    bar.on_train_end(t, None)
    assert bar._ticker is None


def test_quiet_lightning_drops_only_the_known_notices(caplog):
    from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_lightning()
        rank_zero_warn(
            "Found 131 module(s) in eval mode at the start of training. This may ...",
            category=PossibleUserWarning,
        )
        rank_zero_warn("You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.")
        rank_zero_warn("Using ModelCheckpoint with manual optimization and every_n_train_steps, but no ...")
        rank_zero_warn("Something the user must see")
    assert [str(w.message) for w in seen] == ["Something the user must see"]
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try installing ...")
        rank_zero_info("`Trainer.fit` stopped: `max_steps=80` reached.")
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_steps=80` reached."]
