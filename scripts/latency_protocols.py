"""Why two latency protocols disagree: the student's first frame and the teacher's clip timed under the settings
that differ between them, interleaved in one process (eager models, no compile).

Factors, each toggled alone against a base (2 threads, 2 drags, the current pipeline):
  - threads: torch's 2 threads vs 1 on a 2-core CPU shared with other processes;
  - drags: 8 drags (the benchmark suite's items) vs 2;
  - conditions: every frame's conditions before frame 0 (the training-side sampler's order) vs lazily per chunk.
Every round runs every setting once (round-robin), medians over rounds; the CPU other processes used is recorded.

    python scripts/latency_protocols.py --repeats 5 --out results/latency/protocols.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ardrag import ARDragPipeline
from ardrag.hardware import cpu_name, provenance
from ardrag.video import atomic_write_bytes
from benchmark.metrics.latency import OtherCpu, toy_stream_inputs


def drags(n: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    a, b = rng.uniform(8, 56, (n, 2)), rng.uniform(8, 56, (n, 2))
    return np.stack([np.linspace(a[i], b[i], frames) for i in range(n)], 1).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="results/toy/checkpoints/rl")
    ap.add_argument("--teacher", default="results/toy/checkpoints/teacher")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("results/latency/protocols.md"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    student = ARDragPipeline.from_pretrained(args.student)
    teacher = ARDragPipeline.from_pretrained(args.teacher)
    image, _ = toy_stream_inputs(args.frames)
    settings = {
        "base: 2 threads, 2 drags, lazy conditions": (2, 2, True),
        "1 thread": (1, 2, True),
        "8 drags": (2, 8, True),
        "all conditions before frame 0": (2, 2, False),
        "8 drags, all conditions first": (2, 8, False),
    }

    def ttff(threads: int, n: int, lazy: bool) -> float:
        torch.set_num_threads(threads)
        student.fast = True
        tr = drags(n, args.frames)
        t0 = time.perf_counter()
        if lazy:
            st = student.stream(image, tr, seed=0)
            next(st)
            st.close()
        else:  # conditions of every frame, then the stream (the order the training-side sampler uses)
            prep = student._prepare(image, tr, None, "", None, 0)
            eng = student._engine(prep)
            clean = next(eng.run(prep.noise, lambda a, b: student._cond_frames(prep, a, b), prep.generator))
            student.codec.stream_decoder()(clean)
        return time.perf_counter() - t0

    def clip(threads: int, n: int) -> float:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        teacher(image, drags(n, args.frames), seed=0)
        return time.perf_counter() - t0

    for th, n, lazy in settings.values():  # warm-up per setting, excluded
        ttff(th, n, lazy)
        clip(th, n)
    res = {name: ([], []) for name in settings}
    loads = [os.getloadavg()[0]]
    with OtherCpu() as other:
        for _ in range(args.repeats):
            for name, (th, n, lazy) in settings.items():
                res[name][0].append(ttff(th, n, lazy))
                res[name][1].append(clip(th, n))
            loads.append(os.getloadavg()[0])
    lines = [
        "# Latency protocols: what moves the first frame and the teacher's clip",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Student `{args.student}`, teacher `{args.teacher}`, {args.frames}-frame clips, the demo's toy-0 image, "
        f"seed 0, eager; {cpu_name()}, torch {torch.__version__}, commit {provenance().get('git_commit', '?')}.  ",
        f"{args.repeats} round-robin rounds after one warm-up per setting; medians [min, max]. Other processes used "
        f"{other.cores if other.cores is None else round(other.cores, 2)} cores meanwhile; 1-minute load average "
        f"{min(loads):.2f} - {max(loads):.2f}.",
        "",
        "| setting | student TTFF (ms) | teacher clip (s) | TTFF / clip |",
        "|---|---|---|---|",
    ]
    for name, (a, b) in res.items():
        ta, tb = np.median(a), np.median(b)
        lines.append(
            f"| {name} | {ta * 1e3:.1f} [{min(a) * 1e3:.1f}, {max(a) * 1e3:.1f}] | {tb:.2f} [{min(b):.2f}, "
            f"{max(b):.2f}] | 1/{tb / ta:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(args.out, text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
