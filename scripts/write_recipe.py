"""Write the RECIPE.md of a committed toy checkpoint from its training run: command, config, seed, steps, wall time
and the logged losses/rewards, all read from the run folder (nothing typed by hand).

    python scripts/write_recipe.py --run runs/recipe/sft --out results/toy/checkpoints/sft \
        --command "ardrag-fit --config configs/toy/sft.yaml ..." --title "sft: the AR-Drag toy student"

Wall time is the span of the run's TensorBoard events (first to last logged step, over resumed segments: the sum
of each segment's span), so pauses between segments are not counted.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from ardrag.cli.fit import cpu_precision, last_step
from ardrag.hardware import cpu_name
from ardrag.training.tblog import read_run_scalars
from ardrag.video import atomic_write_bytes

TAGS = (
    "train/loss",
    "val/loss",
    "train/critic",
    "train/dmd",
    "train/reward/motion",
    "train/reward/quality",
    "train/reward/total",
    "train/kl",
)


def summary(points: list[tuple[int, float]], k: int = 5) -> str:
    """'a (steps s0-s1) -> b (steps s2-s3)': means of the first and last k logged values."""
    if not points:
        return "n/a"
    k = max(1, min(k, len(points) // 2 or 1))
    first, last = points[:k], points[-k:]

    def mean(p):
        return sum(v for _, v in p) / len(p)

    return f"{mean(first):.4g} (steps {first[0][0]}-{first[-1][0]}) -> {mean(last):.4g} (steps {last[0][0]}-{last[-1][0]})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the run's trainer.default_root_dir")
    p.add_argument(
        "--out", required=True, help="the exported checkpoint folder (RECIPE.md is written into it)"
    )
    p.add_argument("--command", required=True, help="the command that made it (shown verbatim)")
    p.add_argument("--title", required=True, help="first line: what this checkpoint is")
    p.add_argument("--note", default="", help="an extra paragraph (e.g. what it is for)")
    args = p.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    cfg = yaml.safe_load((run / "tb" / "config.yaml").read_text())
    steps = last_step(run)
    merged, wall = read_run_scalars(run)
    scal = {tag: sorted(v.items()) for tag, v in merged.items()}
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    model = cfg.get("model", {})
    trainer = cfg.get("trainer", {})
    configured = trainer.get("precision") or "32-true"
    # what ardrag-fit trained in on this machine (the recipe writes RECIPE.md right after training, on the same CPU)
    ran = cpu_precision(
        trainer.get("precision"), trainer.get("accelerator"), cfg.get("cpu_bf16", "auto"), True
    )
    precision = (
        configured
        if ran is None
        else f"{ran} (the config's {configured} needs native bf16, which this CPU lacks)"
    )
    lines = [
        f"# {args.title}",
        "",
        *([args.note, ""] if args.note else []),
        "Command (from the repository root, after `ardrag-toyworld data/toyworld`):",
        "```bash",
        args.command,
        "```",
        f"- Model class: `{model.get('class_path')}`; config as run: `{run}/tb/config.yaml` (from the command's "
        "configs); seed "
        f"{cfg.get('seed_everything')} (`seed_everything`), model seed {model.get('init_args', {}).get('seed')}.",
        f"- Steps: {steps} (`trainer.max_steps` {trainer.get('max_steps')}); precision {precision}; batch {cfg.get('data', {}).get('init_args', {}).get('batch_size')}"
        f" clips of {cfg.get('data', {}).get('init_args', {}).get('num_frames')} frames.",
        f"- Wall time: {wall / 60:.1f} min of training (TensorBoard event span) on CPU {cpu_name()} x{os.cpu_count()} "
        "(torch threads as in the command; `OMP_NUM_THREADS` unset = all cores).",
        f"- Exported folder: {size / 1e6:.1f} MB (bf16 transformer weights; training stages upcast to float32).",
        "- Logged (mean of the first and last logged values):",
        *[f"  - `{t}`: {summary(scal[t])}" for t in TAGS if t in scal],
    ]
    atomic_write_bytes(out / "RECIPE.md", ("\n".join(lines) + "\n").encode())
    print(f"wrote {out / 'RECIPE.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
