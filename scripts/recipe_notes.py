"""The toy recipe's notes, read from its runs (nothing typed by hand); ``scripts/toy_recipe.sh`` calls both.

    python scripts/recipe_notes.py checkpoint --run runs/recipe/sft --out results/toy/checkpoints/sft \
        --command "ardrag-fit --config configs/toy/sft.yaml ..." --title "sft: the AR-Drag toy student"
    TRAIN_ONLY=1 bash scripts/toy_recipe.sh          # data + teacher + three students + RL, then stop
    python scripts/recipe_notes.py walltime --runs runs/recipe --out results/training/recipe_run

``checkpoint`` writes the RECIPE.md of a committed toy checkpoint from its training run: command, config, seed,
steps, wall time and the logged losses/rewards. Wall time is the span of the run's TensorBoard events (first to
last logged step, over resumed segments: the sum of each segment's span), so pauses between segments are not
counted.

``walltime`` tabulates how long the recipe took from ``$RUNS/walltime.tsv`` (written by the recipe). The three SFT
students train side by side, so the recipe's training time is data + teacher + the slowest student + RL (each
stage's time includes its export and RECIPE.md). Writes <out>.md and <out>.json atomically; steps come from each
run's checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from ardrag.cli.fit import cpu_precision, last_step
from ardrag.hardware import cpu_has_native_bf16, cpu_name, git_commit
from ardrag.training.tblog import read_run_scalars
from ardrag.video import atomic_write_bytes

CHECKPOINT = "Write the RECIPE.md of a committed toy checkpoint from its training run."
WALLTIME = (
    "How long the toy recipe took: a table of scripts/toy_recipe.sh's stage wall times ($RUNS/walltime.tsv)."
)

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


def checkpoint_notes(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recipe_notes.py checkpoint", description=CHECKPOINT)
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


STUDENTS = ("sft", "sft_no_rollout", "sft_chunk3")
ORDER = ("data", "teacher", *STUDENTS, "rl", "benchmark")


def read_walltimes(path: Path) -> dict[str, float]:
    """stage -> seconds; a stage listed twice (a resumed recipe) counts each time it ran."""
    out: dict[str, float] = {}
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1].strip():
            out[parts[0]] = out.get(parts[0], 0.0) + float(parts[1])
    return out


def data_seconds(walls: dict[str, float], data: Path) -> dict[str, float]:
    """The toy world's time: the writer's own seconds from its toyworld.json (without the command's start-up) when
    walltime.tsv has no data row (a recipe that predates the row) or a shorter one (the world was already written,
    which a recipe from scratch does not find)."""
    if (data / "toyworld.json").exists():
        written = float(json.loads((data / "toyworld.json").read_text())["seconds"])
        walls = {**walls, "data": max(walls.get("data", 0.0), written)}
    return walls


def training_seconds(walls: dict[str, float]) -> float:
    """data + teacher + the slowest of the side-by-side students + RL."""
    missing = [s for s in ("data", "teacher", *STUDENTS, "rl") if s not in walls]
    if missing:
        raise SystemExit(
            f"walltime.tsv has no row for {', '.join(missing)}: did the recipe finish its training?"
        )
    return walls["data"] + walls["teacher"] + max(walls[s] for s in STUDENTS) + walls["rl"]


def walltime_report(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recipe_notes.py walltime", description=WALLTIME)
    p.add_argument(
        "--runs", default="runs/recipe", help="the recipe's $RUNS (holds walltime.tsv and one run per stage)"
    )
    p.add_argument("--out", default="results/training/recipe_run", help="output path without extension")
    p.add_argument(
        "--data", default="data/toyworld", help="the recipe's $DATA (its toyworld.json, if no data row)"
    )
    p.add_argument("--target-min", type=float, default=90.0, help="the recipe's training budget, minutes")
    p.add_argument(
        "--recipe",
        default="bash scripts/toy_recipe.sh",
        help="the recipe command that was run (shown verbatim)",
    )
    args = p.parse_args(argv)
    runs = Path(args.runs)
    walls = data_seconds(read_walltimes(runs / "walltime.tsv"), Path(args.data))
    train = training_seconds(walls)
    commit = (git_commit() or "unknown")[:7]
    load = os.getloadavg()
    rows = [
        {
            "stage": s,
            "seconds": round(walls[s], 1),
            "steps": last_step(runs / s) if s not in ("data", "benchmark") else None,
        }
        for s in ORDER
        if s in walls
    ]
    record = {
        "runs": str(runs),
        "commit": commit,
        "cpu": f"{cpu_name()} x{os.cpu_count()}",
        "native_bf16": cpu_has_native_bf16(),
        "stages": rows,
        "training_seconds": round(train, 1),
        "target_minutes": args.target_min,
        "within_target": train / 60 <= args.target_min,
        "load_average_at_report": [round(x, 2) for x in load],
    }
    verdict = "within" if record["within_target"] else "OVER"
    lines = [
        "# Toy recipe: measured wall time",
        "",
        f"`python scripts/recipe_notes.py walltime --runs {runs} --out {args.out}` after `{args.recipe}` "
        f"(code at {commit}) on {record['cpu']} (native bf16: {'yes' if record['native_bf16'] else 'no'}).",
        "",
        "| stage | steps | wall (min) |",
        "|---|---|---|",
        *[
            f"| {r['stage']} | {r['steps'] if r['steps'] is not None else ''} | {r['seconds'] / 60:.1f} |"
            for r in rows
        ],
        "",
        f"Training (data + teacher + the slowest of the three students, which train side by side + RL): "
        f"**{train / 60:.1f} min**, {verdict} the {args.target_min:g}-minute budget. Each stage's time includes its "
        "export and RECIPE.md; the benchmark (if listed) is not training. Load average when this report was written: "
        f"{', '.join(f'{x:.2f}' for x in load)}.",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(record, indent=2) + "\n").encode())
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"checkpoint": checkpoint_notes, "walltime": walltime_report}
    if not argv or argv[0] not in commands:
        print(
            "usage: recipe_notes.py {checkpoint,walltime} ... (-h after either for its options)",
            file=sys.stderr,
        )
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
