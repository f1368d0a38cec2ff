"""How long the toy recipe took: a table of `bash scripts/toy_recipe.sh`'s stage wall times ($RUNS/walltime.tsv).

    TRAIN_ONLY=1 bash scripts/toy_recipe.sh          # data + teacher + three students + RL, then stop
    python scripts/recipe_report.py --runs runs/recipe --out results/training/recipe_run

The three SFT students train side by side, so the recipe's training time is data + teacher + the slowest student +
RL (each stage's time includes its export and RECIPE.md). Writes <out>.md and <out>.json atomically; nothing is
typed by hand: stage times come from walltime.tsv (written by the recipe), steps from each run's checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ardrag.cli.fit import last_step
from ardrag.hardware import cpu_has_native_bf16, cpu_name, git_commit
from ardrag.video import atomic_write_bytes

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
    """Adds the toy world's time from its toyworld.json when walltime.tsv has no data row (a recipe that predates
    the row): the writer's own seconds, without the command's start-up."""
    if "data" not in walls and (data / "toyworld.json").exists():
        walls = {**walls, "data": float(json.loads((data / "toyworld.json").read_text())["seconds"])}
    return walls


def training_seconds(walls: dict[str, float]) -> float:
    """data + teacher + the slowest of the side-by-side students + RL."""
    missing = [s for s in ("data", "teacher", *STUDENTS, "rl") if s not in walls]
    if missing:
        raise SystemExit(
            f"walltime.tsv has no row for {', '.join(missing)}: did the recipe finish its training?"
        )
    return walls["data"] + walls["teacher"] + max(walls[s] for s in STUDENTS) + walls["rl"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs", default="runs/recipe", help="the recipe's $RUNS (holds walltime.tsv and one run per stage)"
    )
    p.add_argument("--out", default="results/training/recipe_run", help="output path without extension")
    p.add_argument(
        "--data", default="data/toyworld", help="the recipe's $DATA (its toyworld.json, if no data row)"
    )
    p.add_argument(
        "--target-min", type=float, default=90.0, help="issue 12's budget for the recipe's training"
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
        f"`python scripts/recipe_report.py --runs {runs} --out {args.out}` after `bash scripts/toy_recipe.sh` "
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


if __name__ == "__main__":
    raise SystemExit(main())
