"""Per-frame latency versus frame index for the frame-wise AR pipeline.

Compares, on the same untrained toy-size model and inputs:
  - rolling KV cache (window `--window` latent frames): cost per frame should stay flat;
  - unbounded KV cache (window = all frames): grows slowly (attention over the whole history);
  - no cache (`use_kv_cache=False`, the masked full-sequence recompute): grows with the history length.
Time to first frame includes conditioning and decoding. One warm-up run per mode is excluded; each frame's latency is the median over --repeats runs.

    python scripts/bench_latency.py --frames 64 --out results/latency
writes results/latency/frame_latency.{csv,md,png} and meta.json (hardware, versions, command, seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ardrag import ARDragPipeline
from ardrag.hardware import cpu_name, provenance
from ardrag.pipeline import PipelineConfig
from ardrag.video import atomic_write_bytes


def time_stream(pipe: ARDragPipeline, image, tracks, use_kv_cache: bool, seed: int) -> list[float]:
    """Seconds from the call to each yielded frame, as per-frame deltas (frame 0: time to first frame)."""
    t0 = time.perf_counter()
    stamps = []
    for _ in pipe.stream(image, tracks, prompt="a red square", seed=seed, use_kv_cache=use_kv_cache):
        stamps.append(time.perf_counter())
    return list(np.diff([t0, *stamps]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--frames", type=int, default=64, help="latent frames to generate (pixel codec: = video frames)"
    )
    ap.add_argument("--window", type=int, default=7, help="rolling cache window in latent frames")
    ap.add_argument(
        "--preset", default="toy", help="untrained model of this preset (ignored with --checkpoint)"
    )
    ap.add_argument("--checkpoint", help="an exported pipeline folder instead of an untrained preset")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs per mode; per-frame median is reported"
    )
    ap.add_argument("--out", default="results/latency")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    modes = {
        f"rolling cache (window {args.window})": ({"cache_frames": args.window}, True),
        "unbounded cache": ({"cache_frames": args.frames}, True),
        "no cache (masked recompute)": ({"cache_frames": args.frames}, False),
    }
    rng = np.random.default_rng(args.seed)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    tracks = np.linspace([8, 8], [args.size - 8, args.size - 8], args.frames, dtype=np.float32)[:, None]
    rows, summary = [], []
    trained = ARDragPipeline.from_pretrained(args.checkpoint) if args.checkpoint else None
    for name, (cfg, use_cache) in modes.items():
        if trained is not None:
            pipe = trained
            pipe.config = dataclasses.replace(trained.config, **cfg)
        else:
            config = PipelineConfig(height=args.size, width=args.size, **cfg)
            pipe = ARDragPipeline.from_preset(args.preset, config, seed=args.seed)
        time_stream(pipe, image, tracks[:4], use_cache, args.seed)  # warm-up, excluded
        runs = [time_stream(pipe, image, tracks, use_cache, args.seed) for _ in range(args.repeats)]
        deltas = list(np.median(np.array(runs), axis=0))
        rows += [{"mode": name, "frame": i, "seconds": d} for i, d in enumerate(deltas)]
        d = np.array(deltas)
        summary.append(
            {
                "mode": name,
                "time_to_first_frame_s": d[0],
                "frames_1_8_mean_s": d[1:9].mean(),
                f"frames_{args.frames - 8}_{args.frames - 1}_mean_s": d[-8:].mean(),
                "last_over_early": d[-8:].mean() / d[1:9].mean(),
                "fps": (len(d) - 1) / d[1:].sum(),
            }
        )
        print(
            f"{name}: first {d[0] * 1e3:.1f} ms, early {d[1:9].mean() * 1e3:.1f} ms, late {d[-8:].mean() * 1e3:.1f} ms"
        )

    out = Path(args.out)
    df, sm = pd.DataFrame(rows), pd.DataFrame(summary)
    atomic_write_bytes(out / "frame_latency.csv", df.to_csv(index=False).encode())
    atomic_write_bytes(out / "frame_latency_summary.csv", sm.to_csv(index=False).encode())
    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    model_name = f"`{args.checkpoint}`" if args.checkpoint else f"untrained preset `{args.preset}`"
    cmd = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    md = [
        f"# Per-frame latency versus frame index (frame-wise AR, {model_name})",
        "",
        f"Command: `{cmd}`  ",
        f"Model: {model_name} ({n_params:,} parameters), {pipe.config.height}x{pipe.config.width} pixels, "
        f"{pipe.config.codec.get('type', 'pixel')} codec, "
        f"{pipe.config.schedule().steps} denoising steps per frame, then 1 cache write (run once the frame is out, so not in its "
        f"latency), {args.frames} frames, seed {args.seed}.  ",
        f"Hardware: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}.  ",
        "Per-frame latency = time between consecutive yielded (decoded) frames; frame 0 = time to first frame "
        f"(conditioning + denoising + decode). One warm-up run per mode excluded; median of {args.repeats} runs.",
        "",
        sm.to_markdown(index=False, floatfmt=".4f"),
        "",
        "![latency vs frame](frame_latency.png)",
        "",
    ]
    atomic_write_bytes(out / "frame_latency.md", "\n".join(md).encode())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, g in df.groupby("mode", sort=False):
        ax.plot(g["frame"][1:], g["seconds"][1:] * 1e3, label=name)
    ax.set_xlabel("latent frame index")
    ax.set_ylabel("latency per frame (ms, log scale)")
    ax.set_yscale("log")  # the recompute curve would flatten the two cached ones on a linear axis
    ax.set_title(f"Frame-wise AR latency ({model_name.strip('`')}, {pipe.config.height}px, CPU)")
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
        "torch": torch.__version__,
        "python": platform.python_version(),
        "parameters": n_params,
        **provenance(),
    }
    atomic_write_bytes(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
