"""ardrag-fit: train one stage (teacher, sft, rl) from a config. LightningCLI without subcommand.

    ardrag-fit --config configs/toy/teacher.yaml [--config overlay.yaml ...] [--ckpt_path last|PATH] \
        [--trainer.max_steps=2000 --model.init_args.optim.lr=3e-4 ...]

Everything a run writes lives under `trainer.default_root_dir`: TensorBoard logs (`tb/`), checkpoints
(`checkpoints/`: one every `--checkpoint_every` steps, all kept, and `last.ckpt`, also when the run ends at
max_steps), sample GIFs and, at the end of fit, the exported pipeline (`export/`). `--ckpt_path last` resumes the
run in that folder (and starts it when there is no checkpoint yet), so the same command both starts and resumes a
run. Progress is one bar in optimizer steps of `max_steps` (`ardrag.training.console`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

DEFAULT_ROOT = "runs/default"
"""Where a run writes when its config sets no trainer.default_root_dir."""


def _build_cli_class():
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import TensorBoardLogger

    class FitCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--ckpt_path",
                type=str | None,
                default=None,
                help="'last' (resume the run in trainer.default_root_dir, or start it) or a .ckpt path",
            )
            parser.add_argument(
                "--checkpoint_every",
                type=int,
                default=500,
                help="training steps between periodic checkpoints (checkpoints/stepNNNNNNN.ckpt, every one kept; "
                "last.ckpt too)",
            )
            parser.add_argument(
                "--cpu_bf16",
                type=Literal["auto", "keep"],
                default="auto",
                help="'auto': a bf16 precision on a CPU without native bf16 (no AVX-512 BF16 / AMX) trains in "
                "32-true instead, since emulated bf16 is many times slower; 'keep': use the config's precision",
            )

        def root(self) -> Path:
            return Path(
                self._get(self.config_init, "trainer", default={}).get("default_root_dir") or DEFAULT_ROOT
            )

        def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
            tcfg = self._get(self.config_init, "trainer", default={})
            root = self.root()
            kwargs.setdefault("default_root_dir", str(root))
            if tcfg.get("logger") in (None, True):
                kwargs["logger"] = TensorBoardLogger(str(root), name="tb", version="")
            user_cbs = tcfg.get("callbacks") or []
            user_cbs = user_cbs if isinstance(user_cbs, list) else [user_cbs]
            ours: list[pl.Callback] = []
            if (
                not any(isinstance(c, ModelCheckpoint) for c in user_cbs)
                and tcfg.get("enable_checkpointing") is not False
            ):
                ours.append(
                    ModelCheckpoint(
                        dirpath=str(root / "checkpoints"),
                        filename="step{step:07d}",
                        auto_insert_metric_name=False,
                        every_n_train_steps=self._get(self.config_init, "checkpoint_every"),
                        save_top_k=-1,  # every periodic checkpoint stays
                        monitor=None,
                        save_last=True,
                    )
                )
            if tcfg.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in user_cbs
            ):
                from ardrag.training.console import StepProgressBar

                # steps of max_steps with a rate and an ETA, not the batches of an epoch
                ours.append(StepProgressBar())
            kwargs["callbacks"] = list(user_cbs) + ours
            precision = cpu_precision(
                tcfg.get("precision"), tcfg.get("accelerator"), self._get(self.config_init, "cpu_bf16")
            )
            if precision is not None:
                kwargs["precision"] = precision
            return super().instantiate_trainer(**kwargs)

    return FitCLI


def cpu_precision(precision: Any, accelerator: Any, mode: str = "auto", quiet: bool = False) -> str | None:
    """The precision to train in instead of the config's, or None to keep it: a bf16 precision on a CPU run
    becomes "32-true" when the CPU has no native bf16 (``ardrag.hardware.cpu_has_native_bf16`` is False), unless
    ``mode`` is "keep". Says so on stderr unless ``quiet`` (scripts/recipe_notes.py asks what a run trained in)."""
    import torch

    from ardrag.hardware import cpu_has_native_bf16

    if mode == "keep" or not str(precision or "").startswith("bf16"):
        return None
    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if not on_cpu or cpu_has_native_bf16() is not False:
        return None
    if quiet:
        return "32-true"
    print(
        f"ardrag-fit: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag), so precision {precision} would "
        "emulate bf16 matmuls many times slower than fp32; training in 32-true (--cpu_bf16 keep to force it)",
        file=sys.stderr,
    )
    return "32-true"


def last_step(root: str | Path) -> int | None:
    """The step of the newest periodic checkpoint a run wrote (`<root>/checkpoints/step0000360.ckpt` -> 360), None
    when there is none (RECIPE.md and the recipe's report read a run's length this way)."""
    ckpts = sorted((Path(root) / "checkpoints").glob("step*.ckpt"))
    return int(ckpts[-1].stem.removeprefix("step")) if ckpts else None


def resolve_ckpt(ckpt: str | None, root: Path) -> str | None:
    """'last' -> <root>/checkpoints/last.ckpt when it exists (None: start fresh); a path must exist."""
    if ckpt is None:
        return None
    if ckpt == "last":
        last = root / "checkpoints" / "last.ckpt"
        if last.exists():
            print(f"ardrag-fit: resuming from {last}", file=sys.stderr)
            return str(last)
        print(f"ardrag-fit: no checkpoint in {root / 'checkpoints'} yet, starting the run", file=sys.stderr)
        return None
    if not os.path.exists(ckpt):
        raise FileNotFoundError(f"--ckpt_path {ckpt} does not exist")
    return ckpt


def _one_line(e: BaseException) -> str:
    """The most specific line of an error: the root cause a config value raised (e.g. a missing weights folder),
    else jsonargparse's first listed sub-error, else its headline."""
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    lines = str(root).strip().splitlines()
    if root is e:
        detail = [
            ln.strip()[2:] for ln in lines if ln.strip().startswith("- ") and "Expected a <class" not in ln
        ]
        lines = detail or lines
    return lines[0] if lines else type(root).__name__


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import ArgumentError

    from ardrag.training.base import StageModule
    from ardrag.training.console import quiet_lightning

    quiet_lightning()
    FitCLI = _build_cli_class()
    import lightning.pytorch as pl

    try:
        cli = FitCLI(
            model_class=StageModule,
            subclass_mode_model=True,
            datamodule_class=pl.LightningDataModule,
            subclass_mode_data=True,
            run=False,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False, "prog": "ardrag-fit"},
            args=argv,
        )
        ckpt = resolve_ckpt(cli.config.get("ckpt_path"), cli.root())
    except ArgumentError as e:
        print(f"ardrag-fit: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"ardrag-fit: error: {_one_line(e)}", file=sys.stderr)
        return 2
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
