"""Real-time latency of the streamed student beside the teacher's clip, eager and compiled, in one process.

Protocol (what every figure below obeys):
  - fixed torch threads (`--threads`, default 2) for both models; the thread count is in the table;
  - warm-up excluded and reported: each pipeline runs one full-length generation first (it compiles the graphs
    with `compile`), timed apart;
  - side by side and interleaved: each round runs, for every variant (eager, compiled), the student's
    `--frames`-frame stream and then the teacher's `--clip-frames`-frame clip, so load changes hit all alike;
  - medians over `--repeats` rounds; per-frame latency = time between consecutive yielded (decoded) frames,
    frame 0 = time to first frame (TTFF: inputs, conditions, denoising, decode);
  - load recorded: the CPU other processes used during the rounds (cores, from /proc) and the 1-minute load
    average;
  - no guidance on either model (both checkpoints have guidance_scale 1), the same inputs (the demo's toy-0
    image, two fixed drags) and seed.
FLOPs are counted once per model on the training-side sampler (useful work: attention over the visible keys only)
with torch's FlopCounterMode; GFLOP/s = FLOPs / median seconds, against this CPU's fp32 matmul rate measured
here on the same threads right after the timed rounds (2048^3 matmul, median of 5).

    python scripts/bench_latency.py --frames 64 --repeats 5 --out results/latency
writes results/latency/frame_latency.{md,csv,png} and meta.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from ardrag import ARDragPipeline
from ardrag.hardware import cpu_name, provenance
from ardrag.sampling import Denoiser, iter_rollout, sample_bidirectional
from ardrag.video import atomic_write_bytes
from benchmark.metrics.latency import OtherCpu, toy_stream_inputs


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of CPU flash attention: QK^T and PV, 2 multiply-adds each (FlopCounterMode lacks this op)."""
    b, h, lq, d = q
    lk, dv = k[-2], v[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(
        display=False,
        custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops},
    )


@torch.no_grad()
def student_flops(pipe: ARDragPipeline, image, tracks) -> list[float]:
    """FLOPs of each streamed frame (frame m: its denoising steps + the cache write of frame m - 1, which the
    stream runs before it), on the training-side sampler over the visible keys only."""
    prep = pipe._prepare(image, tracks, None, "", None, 0)
    den = Denoiser(pipe.transformer, prep.conditions, pipe.config.guidance_scale)
    out, counter = [], flop_counter()
    with counter:
        last = 0
        for _ in iter_rollout(den, prep.noise, pipe.config.rollout(), generator=prep.generator):
            total = counter.get_total_flops()
            out.append(float(total - last))
            last = total
    return out


@torch.no_grad()
def teacher_flops(pipe: ARDragPipeline, image, tracks) -> float:
    prep = pipe._prepare(image, tracks, None, "", None, 0)
    den = Denoiser(pipe.transformer, prep.conditions, pipe.config.guidance_scale)
    counter = flop_counter()
    with counter:
        sample_bidirectional(den, prep.noise, pipe.config.schedule())
    return float(counter.get_total_flops())


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an n^3 matmul on the current threads (median)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def time_stream(pipe: ARDragPipeline, image, tracks, seed: int) -> list[float]:
    t0 = time.perf_counter()
    stamps = []
    for _ in pipe.stream(image, tracks, seed=seed):
        stamps.append(time.perf_counter())
    return list(np.diff([t0, *stamps]))


def time_clip(pipe: ARDragPipeline, image, tracks, seed: int) -> float:
    t0 = time.perf_counter()
    pipe(image, tracks, seed=seed)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="results/toy/checkpoints/rl")
    ap.add_argument("--teacher", default="results/toy/checkpoints/teacher")
    ap.add_argument("--frames", type=int, default=64, help="frames of the student's stream")
    ap.add_argument("--clip-frames", type=int, default=17, help="frames of the teacher's clip")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians are reported")
    ap.add_argument("--variants", default="eager,compiled", help="comma list of eager, compiled")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/latency")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    variants = [v.strip() for v in args.variants.split(",")]
    if not variants or any(v not in ("eager", "compiled") for v in variants):
        sys.exit(f"bench_latency: --variants takes eager and/or compiled, got {args.variants!r}")
    image, tracks = toy_stream_inputs(max(args.frames, args.clip_frames))
    s_tracks, t_tracks = tracks[: args.frames], tracks[: args.clip_frames]

    students, teachers, warm = {}, {}, {}
    for v in variants:
        students[v] = ARDragPipeline.from_pretrained(args.student)
        teachers[v] = ARDragPipeline.from_pretrained(args.teacher)
        students[v].config.compile = teachers[v].config.compile = v == "compiled"
        warm[v] = {
            "student_s": students[v].warmup(args.frames),
            "teacher_s": teachers[v].warmup(args.clip_frames),
        }
        print(f"{v}: warm-up student {warm[v]['student_s']:.1f} s, teacher {warm[v]['teacher_s']:.1f} s")
    fl_student = student_flops(students[variants[0]], image, s_tracks)
    fl_teacher = teacher_flops(teachers[variants[0]], image, t_tracks)

    streams = {v: [] for v in variants}
    clips = {v: [] for v in variants}
    load0 = os.getloadavg()[0]
    with OtherCpu() as other:
        for r in range(args.repeats):
            for v in variants:
                streams[v].append(time_stream(students[v], image, s_tracks, args.seed))
                clips[v].append(time_clip(teachers[v], image, t_tracks, args.seed))
                d = streams[v][-1]
                print(
                    f"round {r} {v}: TTFF {d[0] * 1e3:.1f} ms, steady {1 / np.mean(d[1:]):.1f} frames/s, "
                    f"teacher {clips[v][-1]:.2f} s"
                )
    load1 = os.getloadavg()[0]
    peak = matmul_peak()  # right after the rounds, under the load they ran with

    n = args.frames
    e0, e1, l0, l1 = 1, min(9, n), max(1, n - 8), n
    rows, curve = [], []
    for v in variants:
        per = np.median(np.array(streams[v]), axis=0)  # per-frame medians
        curve += [{"variant": v, "frame": i, "seconds": float(s)} for i, s in enumerate(per)]
        run_steady = [np.mean(d[1:]) for d in streams[v]]
        ttff = float(np.median([d[0] for d in streams[v]]))
        clip = float(np.median(clips[v]))
        steady = float(np.median(run_steady))
        steady_flops = float(np.mean(fl_student[1:]))
        rows.append(
            {
                "variant": v,
                "steady frames/s": 1 / steady,
                f"frames {e0}-{e1 - 1} (ms)": per[e0:e1].mean() * 1e3,
                f"frames {l0}-{l1 - 1} (ms)": per[l0:l1].mean() * 1e3,
                "late / early": per[l0:l1].mean() / per[e0:e1].mean(),
                "TTFF (ms)": ttff * 1e3,
                f"teacher {args.clip_frames}-frame clip (s)": clip,
                "TTFF / clip": f"1/{clip / ttff:.0f}",
                "steady GFLOP/s": steady_flops / steady / 1e9,
                "TTFF GFLOP/s": fl_student[0] / ttff / 1e9,
                "teacher GFLOP/s": fl_teacher / clip / 1e9,
                "warm-up student / teacher (s)": f"{warm[v]['student_s']:.1f} / {warm[v]['teacher_s']:.1f}",
            }
        )
    out = Path(args.out)
    df = pd.DataFrame(rows)
    atomic_write_bytes(out / "frame_latency.csv", pd.DataFrame(curve).to_csv(index=False).encode())
    atomic_write_bytes(out / "frame_latency_summary.csv", df.to_csv(index=False).encode())
    st = students[variants[0]]
    n_params = sum(p.numel() for p in st.transformer.parameters())
    cmd = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    others = "n/a" if other.cores is None else f"{other.cores:.2f}"
    md = [
        "# Real-time latency: the streamed student beside the teacher's clip (one process, interleaved)",
        "",
        f"Command: `{cmd}`  ",
        f"Student `{args.student}` ({n_params:,} parameters, {st.config.schedule().steps} steps per frame, "
        f"chunk {st.config.chunk_size}, cache {st.config.cache_frames} frames), {args.frames}-frame stream; teacher "
        f"`{args.teacher}` ({teachers[variants[0]].config.schedule().steps}-step bidirectional), "
        f"{args.clip_frames}-frame clip; {st.config.height}x{st.config.width} pixels, the demo's toy-0 image with "
        f"two fixed drags, seed {args.seed}, no guidance.  ",
        f"Hardware: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; fp32 matmul "
        f"rate measured here: {peak:.0f} GFLOP/s (2048^3, {torch.get_num_threads()} threads).  ",
        f"Load while timing: other processes used {others} cores on average (from /proc); 1-minute load average "
        f"{load0:.2f} before, {load1:.2f} after (this process's threads included).  ",
        f"{args.repeats} interleaved rounds after one warm-up generation per pipeline (its time in the last "
        "column); medians. FLOPs (FlopCounterMode on the training-side sampler: useful work only): "
        f"{np.mean(fl_student[1:]) / 1e9:.2f} GFLOP per steady frame, {fl_student[0] / 1e9:.2f} for the first "
        f"frame, {fl_teacher / 1e9:.1f} for the teacher's clip ({fl_teacher / fl_student[0]:.0f}x the first "
        "frame).",
        "",
        df.to_markdown(index=False, floatfmt=".3g"),
        "",
        "![latency vs frame](frame_latency.png)",
        "",
    ]
    atomic_write_bytes(out / "frame_latency.md", "\n".join(md).encode())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    cv = pd.DataFrame(curve)
    for v, g in cv.groupby("variant", sort=False):
        ax.plot(g["frame"], g["seconds"] * 1e3, marker=".", label=f"student, {v}")
    ax.axhline(1e3 / 30, color="grey", ls="--", lw=1, label="30 frames/s")
    ax.set_xlabel("frame index (0: time to first frame)")
    ax.set_ylabel("latency per frame (ms)")
    ax.set_title(f"Streamed student, {torch.get_num_threads()} threads, {cpu_name()[:40]}")
    ax.legend()
    fig.tight_layout()
    tmp = out / ".frame_latency.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, out / "frame_latency.png")
    meta = {
        "command": cmd,
        "seed": args.seed,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "matmul_gflops": peak,
        "other_cpu_cores": other.cores,
        "load_average": [load0, load1],
        "warmup_s": warm,
        "flops_student_per_frame": fl_student,
        "flops_teacher_clip": fl_teacher,
        "streams_s": streams,
        "clips_s": clips,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "parameters": n_params,
        **provenance(),
    }
    atomic_write_bytes(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
