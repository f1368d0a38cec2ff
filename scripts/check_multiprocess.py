"""Every stage config through ardrag-fit on 2 gloo CPU processes, under DDP and under per-block FSDP, with the
config's own callbacks: fit 2 steps, checkpoint, resume (`--ckpt_path last`), export; then the checks below. Writes
results/training/multiprocess.md (+ .json).

    .venv/bin/python scripts/check_multiprocess.py [--out /tmp/ardrag_multiprocess] [--only toy/teacher,teacher]

Configs: configs/toy/{teacher,sft,rl}.yaml on a 64 x 64, 9-frame toy world (the SFT and RL stages start from the
committed toy exports), and configs/{teacher,sft,rl}.yaml on stand-in Wan2.1 folders (scripts/wan_standins.py; 32 x
32, 9-frame toy-world shards; the SFT stage starts from this script's single-process teacher export, RL from its
single-process SFT export). Overrides for speed only: float32, batch 1 (toy teacher: 9 frames, 4 sampling steps),
no loader workers. Per config:
  - one process, the datamodule told it is rank 0 of 2 (`--data.init_args.rank=0 --data.init_args.world_size=2`): the
    step-0 loss of rank 0 of a 2-process run must equal it (same weights, batch and noise; later steps differ, as
    the 2-process gradients average two batches);
  - per strategy (ddp: configs/trainer/ddp.yaml on CPU; fsdp: configs/trainer/fsdp_cpu.yaml): fit to step S,
    resume from last.ckpt to step 2S (RL: S = 2 optimizer steps = 1 batch), each ending in an export; then in ONE
    process `ardrag-export --ckpt last.ckpt` and both exports generate a video from the same image, drags and seed;
  - FSDP against DDP (both 2 processes, the same data and noise): the logged losses and the exported weights at
    steps S and 2S, relative difference ||a - b|| / ||a|| over all weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
COMMON = [
    "--trainer.precision=32-true",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
]
STRATEGIES = {
    "ddp": ["--config", "configs/trainer/ddp.yaml", "--trainer.accelerator=cpu", "--trainer.devices=2"],
    "fsdp": ["--config", "configs/trainer/fsdp_cpu.yaml"],
}
COMMIT = ""
"""--commit: the commit a copy of the repository (e.g. `git archive`, no .git) was taken at."""
TIMEOUT = 1200  # seconds per command: a hang fails the cell instead of the run


def _load(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def prepare(out: Path) -> dict[str, list[str]]:
    """Data, stand-ins and each config's argument list (without root dir, steps, strategy)."""
    from datamodules.toy_world import write_toy_world

    toy64, toy32, wan = out / "toy64", out / "toy32", out / "wan"
    if not (toy64 / "toyworld.json").exists():
        write_toy_world(
            toy64, 8, 4, 0, size=64, frames=9, seed=5, samples_per_shard=2, min_shards=2, progress=False
        )
    if not (toy32 / "toyworld.json").exists():
        write_toy_world(
            toy32, 8, 4, 0, size=32, frames=9, seed=3, samples_per_shard=2, min_shards=2, progress=False
        )
    standins = _load(ROOT / "scripts" / "wan_standins.py", "wan_standins")
    if not (wan / "pipeline.json").exists():
        standins.write_standins(wan)
    standins.write_overlays(wan, toy32)
    toy_data = [
        f"--data.init_args.train_shards={toy64 / 'train'}",
        f"--data.init_args.val_shards={toy64 / 'val'}",
        "--data.init_args.batch_size=1",
        "--data.init_args.num_workers=0",
        "--data.init_args.num_frames=9",
    ]
    return {
        "toy/teacher": [
            "--config",
            "configs/toy/teacher.yaml",
            *toy_data,
            "--model.init_args.sampling.num_steps=4",
        ],
        "toy/sft": ["--config", "configs/toy/sft.yaml", *toy_data],
        "toy/rl": ["--config", "configs/toy/rl.yaml", *toy_data],
        "teacher": ["--config", "configs/teacher.yaml", "--config", str(wan / "overlay_teacher.yaml")],
        "sft": [
            "--config",
            "configs/sft.yaml",
            "--config",
            str(wan / "overlay_sft.yaml"),
            f"--model.init_args.teacher={out / 'runs' / 'teacher' / 'one' / 'export'}",
        ],
        "rl": [
            "--config",
            "configs/rl.yaml",
            "--config",
            str(wan / "overlay_rl.yaml"),
            f"--model.init_args.init={out / 'runs' / 'sft' / 'one' / 'export'}",
        ],
    }


def run(cmd: list[str], log: Path) -> tuple[bool, float]:
    """Run a command (cwd: the repository), output to `log`; (succeeded, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT
            ).returncode
        except subprocess.TimeoutExpired:
            f.write(f"TIMEOUT after {TIMEOUT} s\n")
            rc = -1
    return rc == 0, time.perf_counter() - t


def fit(args: list[str], root: Path, steps: int, log: Path, *extra: str) -> tuple[bool, float]:
    cmd = [PY, "-m", "ardrag.cli.fit", *args, *COMMON, f"--trainer.default_root_dir={root}"]
    return run([*cmd, f"--trainer.max_steps={steps}", *extra], log)


def losses(root: Path, tag: str = "train/loss") -> dict[int, float]:
    from ardrag.training.tblog import read_run_scalars

    return read_run_scalars(root)[0].get(tag, {})


def step0_tag(name: str) -> str:
    """The scalar compared at step 0 with the single-process run: the loss, except for RL, whose logged loss
    averages inner updates made after the first (rank-averaged) gradient step: there the first rollouts' mean
    reward, computed before any update."""
    return "train/reward/total" if name.endswith("rl") else "train/loss"


def weights(export: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(export / "transformer" / "diffusion_pytorch_model.safetensors"))


def max_rel(a: dict, b: dict) -> float:
    """Relative difference of two weight sets: ||a - b|| / ||a|| over all tensors."""
    if a.keys() != b.keys():
        return float("inf")
    num = sum(float((a[k].double() - b[k].double()).square().sum()) for k in a)
    den = sum(float(a[k].double().square().sum()) for k in a)
    return (num / max(den, 1e-300)) ** 0.5


def worst_tensor(a: dict, b: dict) -> list:
    """[name, max |a - b| / max |a| of that tensor, max |a|] for the tensor where that ratio is largest."""
    rows = [
        (float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)), k, float(a[k].abs().max()))
        for k in a
    ]
    r, k, m = max(rows)
    return [k, r, m]


def loss_rel(a: dict[int, float], b: dict[int, float]) -> float:
    if not a or a.keys() != b.keys():
        return float("inf")
    return max(abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in a)


def video(export: Path) -> np.ndarray:
    from ardrag import ARDragPipeline

    pipe = ARDragPipeline.from_pretrained(export)
    h, w = pipe.config.height, pipe.config.width
    tracks = np.linspace([h * 0.25, w * 0.25], [h * 0.75, w * 0.6], 9, dtype=np.float32)[:, None, ::-1].copy()
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return pipe(image, tracks, prompt="a red square moves right", seed=0)


def check(name: str, args: list[str], out: Path, results: dict) -> None:
    s1 = 2
    s2 = 4 if name.endswith("rl") else 3
    base = out / "runs" / name.replace("/", "_") if name.startswith("toy") else out / "runs" / name
    log = out / "logs" / f"{name.replace('/', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    one = base / "one"
    shutil.rmtree(one, ignore_errors=True)
    ok, wall = fit(
        args,
        one,
        s1,
        log,
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--data.init_args.rank=0",
        "--data.init_args.world_size=2",
    )
    ref = losses(one, step0_tag(name)) if ok else {}
    results[f"{name}|one"] = {"ok": ok, "wall": wall, "losses": ref}
    for strat, sargs in STRATEGIES.items():
        root = base / strat
        shutil.rmtree(root, ignore_errors=True)
        ok1, w1 = fit(args + sargs, root, s1, log, "--ckpt_path=last")
        ok1 = ok1 and (root / "export").exists()
        if ok1:
            shutil.copytree(root / "export", root / f"export_step{s1}")
            shutil.rmtree(root / "export")
        ok2, w2 = fit(args + sargs, root, s2, log, "--ckpt_path=last") if ok1 else (False, 0.0)
        ok2 = ok2 and (root / "export").exists()
        ckpt = root / "checkpoints" / "last.ckpt"
        ok3, w3 = (
            run(
                [PY, "-m", "ardrag.cli.export", "--ckpt", str(ckpt), "--out", str(root / "export_from_ckpt")],
                log,
            )
            if ok2
            else (False, 0.0)
        )
        r = {"ok": ok1 and ok2 and ok3, "wall": w1 + w2 + w3, "wall_fit": w1, "wall_resume": w2}
        if r["ok"]:
            got = losses(root)
            r["losses"] = got
            got0 = losses(root, step0_tag(name))
            r["step0_vs_one"] = abs(got0[0] - ref[0]) / abs(ref[0]) if ref and 0 in got0 else float("inf")
            r["ckpt_export_weights"] = max_rel(weights(root / "export"), weights(root / "export_from_ckpt"))
            r["video_diff"] = int(
                np.abs(video(root / "export").astype(int) - video(root / "export_from_ckpt")).max()
            )
        results[f"{name}|{strat}"] = r
    d, f = results.get(f"{name}|ddp", {}), results.get(f"{name}|fsdp", {})
    if d.get("ok") and f.get("ok"):
        dr, fr = base / "ddp", base / "fsdp"
        f["loss_vs_ddp"] = loss_rel(d["losses"], f["losses"])
        f["weights_vs_ddp"] = max(
            max_rel(weights(dr / f"export_step{s1}"), weights(fr / f"export_step{s1}")),
            max_rel(weights(dr / "export"), weights(fr / "export")),
        )
        f["worst_tensor_vs_ddp"] = worst_tensor(weights(dr / "export"), weights(fr / "export"))


def fmt(x: float | None, spec: str = ".1e") -> str:
    return "-" if x is None else format(x, spec)


def loss_cell(d: dict, f: dict) -> str:
    """FSDP's losses vs DDP's: the relative difference, and the absolute one when the losses are near 0 (RL's
    policy loss, a mean of normalised advantages, is ~1e-5: its relative difference measures cancellation)."""
    if "loss_vs_ddp" not in f:
        return "-"
    cell = fmt(f["loss_vs_ddp"])
    a, b = d.get("losses", {}), f.get("losses", {})
    scale = max((abs(v) for v in a.values()), default=0.0)
    if a and a.keys() == b.keys() and scale < 1e-3:
        cell += f" (abs {max(abs(a[k] - b[k]) for k in a):.1e}, losses <= {scale:.0e})"
    return cell


def worst(w: list | None) -> str:
    return "-" if not w else f"{w[0]}: {w[1]:.1e} (max {w[2]:.1e})"


def write_report(results: dict, path: Path, names: list[str], seconds: float) -> None:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
        "unknown CPU",
    )
    total = sum(v.get("wall", 0.0) for k, v in results.items() if "|" in k and not k.endswith("|one"))
    commit = (
        COMMIT
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    )
    lines = [
        "# Stage configs on 2 processes: DDP and per-block FSDP, to checkpoint, resume and export",
        "",
        f"`.venv/bin/python scripts/check_multiprocess.py` at commit {commit.strip()} on {os.cpu_count()} cores of "
        f"{cpu}, gloo, float32, OMP_NUM_THREADS=1 per process (load average at the start "
        f"{results.get('_load', '?')}: wall times are of a shared CPU). Sum of the 2-process cells' wall times: {total / 60:.1f} min. The script's "
        "docstring says what each check does; seeds are the configs' (seed_everything 0).",
        "",
        "Columns: *export*: fit to step S (an export), `--ckpt_path last` resume to 2S (an export), one-process "
        "`ardrag-export --ckpt last.ckpt` all succeeded; *wall*: those three commands; *step 0 vs 1 process*: "
        "relative difference of rank 0's step-0 loss and the single-process run's (rank-0 data, same noise); "
        "(RL: the first rollouts' mean reward, before any update); *loss vs DDP*: FSDP's logged losses, every step, "
        "max relative difference to the DDP run's; *weights vs DDP*: ||a - b|| / ||a|| over all exported weights "
        "(steps S and 2S, the larger); *worst tensor*: the tensor with the largest max|a - b| / max|a| at step 2S, "
        "that ratio and its max|a| (zero-initialised tensors, ~1e-5 after a few steps, move by Adam's normalised "
        "steps, where rounding-level gradient differences flip signs); *ckpt export*: the end-of-fit export "
        "(gathered by the 2 processes) vs the one-process export of last.ckpt, ||a - b|| / ||a||; *video*: max "
        "|difference| in uint8 levels of the videos those two exports generate (same image, drags, seed) in one "
        "process.",
        "",
        "| config | strategy | export | wall s | step 0 vs 1 process | loss vs DDP | weights vs DDP | worst tensor "
        "| ckpt export | video |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for strat in STRATEGIES:
            r = results.get(f"{name}|{strat}", {})
            lines.append(
                f"| {name} | {strat} | {'yes' if r.get('ok') else 'NO'} | {r.get('wall', 0):.0f} | "
                f"{fmt(r.get('step0_vs_one'))} | {loss_cell(results.get(f'{name}|ddp', {}), r)} | {fmt(r.get('weights_vs_ddp'))} | "
                f"{worst(r.get('worst_tensor_vs_ddp'))} | "
                f"{fmt(r.get('ckpt_export_weights'))} | {r.get('video_diff', '-')} |"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    results["_commit"], results["_seconds"] = commit.strip(), seconds
    path.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", default="/tmp/ardrag_multiprocess", help="work folder (data, stand-ins, runs, logs)"
    )
    p.add_argument(
        "--only",
        default="",
        help="comma-separated subset of the configs (the SFT/RL stand-in runs need "
        "the teacher/SFT single-process exports of an earlier run in --out)",
    )
    p.add_argument("--report", default=str(ROOT / "results" / "training" / "multiprocess.md"))
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the other configs' results from the report's .json (re-run only --only's configs)",
    )
    p.add_argument("--commit", default="", help="commit of this copy of the repository, when it has no .git")
    p.add_argument(
        "--rewrite", action="store_true", help="only rewrite the report's .md from its .json (no runs)"
    )
    a = p.parse_args(argv)
    if a.rewrite:
        results = json.loads(Path(a.report).with_suffix(".json").read_text())
        names = list(dict.fromkeys(k.split("|")[0] for k in results if "|" in k))
        globals()["COMMIT"] = a.commit or results.get("_commit", "")
        write_report(results, Path(a.report), names, float(results.get("_seconds", 0.0)))
        return 0
    global COMMIT
    COMMIT = a.commit
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    configs = prepare(out)
    names = [n for n in configs if not a.only or n in a.only.split(",")]
    results: dict = {"_load": open("/proc/loadavg").read().split()[0]}
    previous = Path(a.report).with_suffix(".json")
    if a.merge and previous.exists():
        old = json.loads(previous.read_text())
        results = {**{k: v for k, v in old.items() if k.split("|")[0] not in names}, **results}
        results["_load"] = f"{old.get('_load', '?')}, re-run of {', '.join(names)}: {results['_load']}"
        names = [n for n in configs if n in names or any(k.startswith(n + "|") for k in old)]
    todo = [n for n in configs if not a.only or n in a.only.split(",")]
    for name in todo:
        check(name, configs[name], out, results)
        write_report(results, Path(a.report), names, time.perf_counter() - t0)
        print(
            f"{name}: "
            + ", ".join(f"{s} {'ok' if results[f'{name}|{s}']['ok'] else 'FAILED'}" for s in STRATEGIES)
        )
    bad = [k for k, v in results.items() if isinstance(v, dict) and not v.get("ok")]
    print(f"report: {a.report}" + (f"; failed: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
