"""Toy recipe cost on this CPU: seconds per training step of each stage of scripts/toy_recipe.sh, run as the recipe
runs it, and the recipe's training time projected from them at the committed step counts.

    python scripts/bench_recipe.py --out results/training            # ~8 min on a 2-core CPU

Method (written into the result): each stage is `ardrag-fit` with its committed config(s) and `--trainer.max_steps`
set to a few steps, into a temporary folder, with the thread count the recipe gives it: the teacher alone on 2
threads; the three SFT students side by side on 1 thread each (as the recipe trains them); RL on 2 threads from the
committed SFT student. Seconds per step = the span of the logged `train/*` scalars from the first logged step to the
last over the steps between (start-up, the first steps and the export excluded); RL's scalars are logged per batch
of rollouts, so its step is a batch (`max_steps` / `grpo.inner_updates` of them). The projection multiplies by the
config's length in those steps; callbacks that run every few hundred steps (sample videos, RL's reward probe, validation),
checkpoints and exports are not in it, so it is a lower bound for the recipe's training time (without the toy
world, 1-2 min, and the benchmark). Nothing is asserted: a CPU shared with other jobs gives larger numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ardrag.hardware import cpu_flags, cpu_name
from ardrag.training.tblog import step_wall_times
from ardrag.video import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]

STAGES = {  # name: (configs, threads, group); a group's stages run side by side
    "teacher": (["configs/toy/teacher.yaml"], 2, "teacher"),
    "sft": (["configs/toy/sft.yaml"], 1, "students"),
    "sft_no_rollout": (["configs/toy/sft.yaml", "configs/toy/sft_no_rollout.yaml"], 1, "students"),
    "sft_chunk3": (["configs/toy/sft.yaml", "configs/toy/sft_chunk3.yaml"], 1, "students"),
    "rl": (["configs/toy/rl.yaml"], 2, "rl"),
}


def logged_steps(configs: list[str]) -> int:
    """The run's length in the unit its train/* scalars are logged in: optimizer steps, except for RL, whose
    scalars are logged per batch of rollouts (each batch makes `grpo.inner_updates` optimizer steps)."""
    steps, inner = None, 1
    for c in configs:
        cfg = yaml.safe_load((ROOT / c).read_text())
        steps = (cfg.get("trainer") or {}).get("max_steps", steps)
        grpo = ((cfg.get("model") or {}).get("init_args") or {}).get("grpo") or {}
        inner = grpo.get("inner_updates", inner)
    return int(steps) // int(inner)


def step_seconds(run: Path) -> tuple[float, int]:
    """(seconds per step, steps spanned) from the wall times of the run's logged train/* scalars."""
    stamps = step_wall_times(run, "train/")
    steps = sorted(stamps)
    if len(steps) < 2:
        raise RuntimeError(f"bench_recipe: fewer than 2 logged steps in {run}")
    span = steps[-1] - steps[0]
    return (stamps[steps[-1]] - stamps[steps[0]]) / span, span


def launch(name: str, steps: int, tmp: Path, log_every: int) -> subprocess.Popen:
    configs, threads, _ = STAGES[name]
    cmd = [str(Path(sys.executable).parent / "ardrag-fit")]
    for c in configs:
        cmd += ["--config", c]
    cmd += [
        f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={tmp / name}",
        f"--trainer.log_every_n_steps={log_every}",
        "--trainer.enable_progress_bar=false",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/training", help="folder for recipe_cost.{md,json}")
    ap.add_argument("--steps", type=int, default=25, help="steps per teacher/SFT stage (RL: --rl-steps)")
    ap.add_argument("--rl-steps", type=int, default=12, help="RL optimizer steps (2 per batch of rollouts)")
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_recipe_") as d:
        tmp = Path(d)
        for group in ("teacher", "students", "rl"):
            names = [n for n, s in STAGES.items() if s[2] == group]
            t0 = time.perf_counter()
            steps = args.rl_steps if group == "rl" else args.steps
            procs = {n: launch(n, steps, tmp, 1 if group == "rl" else 5) for n in names}
            for n, p in procs.items():
                if p.wait() != 0:
                    print((tmp / f"{n}.log").read_text()[-3000:], file=sys.stderr)
                    raise SystemExit(f"bench_recipe: stage {n} failed")
            print(f"{group}: {time.perf_counter() - t0:.0f} s", flush=True)
            for n in names:
                sps, span = step_seconds(tmp / n / "tb")
                configs, threads, _ = STAGES[n]
                full = logged_steps(configs)
                log = (tmp / f"{n}.log").read_text()
                rows.append(
                    {
                        "stage": n,
                        "group": group,
                        "threads": threads,
                        "steps_timed": span,
                        "seconds_per_step": round(sps, 2),
                        "config_steps": full,
                        "projected_min": round(sps * full / 60, 1),
                        "fp32_fallback": "training in 32-true" in log,
                    }
                )

    by_group: dict[str, float] = {}
    for r in rows:
        by_group[r["group"]] = max(by_group.get(r["group"], 0.0), r["projected_min"])
    flags = cpu_flags() or set()
    result = {
        "command": "python scripts/bench_recipe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": f"{cpu_name()} x{os.cpu_count()}",
        "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "load_average_after": os.getloadavg(),
        "stages": rows,
        "projected_training_min": round(sum(by_group.values()), 1),
        "projected_by_group_min": by_group,
    }
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "recipe_cost.json", (json.dumps(result, indent=2) + "\n").encode())
    lines = [
        "# Toy recipe cost on this CPU",
        "",
        f"`{result['command']}` on {result['cpu']} (native bf16: {'yes' if result['native_bf16'] else 'no'}; "
        f"load average after the run {', '.join(f'{x:.2f}' for x in result['load_average_after'])}).",
        "",
        "| stage | threads | steps timed | s / step | config steps | projected (min) | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        prec = "fp32 (no native bf16)" if r["fp32_fallback"] else "as configured"
        lines.append(
            f"| {r['stage']} | {r['threads']} | {r['steps_timed']} | {r['seconds_per_step']:.2f} | "
            f"{r['config_steps']} | {r['projected_min']:.1f} | {prec} |"
        )
    lines += [
        "",
        "RL's step here is one batch of rollouts (its `train/*` scalars are logged per batch; each batch makes "
        "`grpo.inner_updates` optimizer steps, so its config steps are `max_steps` / `inner_updates`).",
        "",
        f"Projected training time of `bash scripts/toy_recipe.sh` at the committed step counts: "
        f"{result['projected_training_min']:.0f} min (teacher {by_group['teacher']:.0f}, the three students side by "
        f"side {by_group['students']:.0f}, RL {by_group['rl']:.0f}), without the toy world, callbacks, checkpoints, "
        "exports and the benchmark.",
        "",
        "Method: " + " ".join(__doc__.split("Method (written into the result): ")[1].split()),
        "",
    ]
    atomic_write_bytes(out / "recipe_cost.md", "\n".join(lines).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
