"""Seconds per video of each benchmark metric on this machine -> results/metrics/motion_speed.{csv,md,json}.

    python scripts/bench_eval.py --suite data/toyworld/test --n 8 --sizes 64 256

Videos are the suite's ground-truth clips (resized to each size). FID/FVD are timed as their per-video part
(feature extraction of one video's frames / one 16-frame clip; the Fréchet distance itself is per set and
negligible). The aesthetic predictor is timed with a CLIP ViT-L/14-*shaped* vision tower with random weights
(the cost depends on the architecture, not the weights; scores from it are meaningless and not reported).
The machine is shared, so the 1-minute load average is recorded next to every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ardrag.video import atomic_write_bytes
from benchmark.metrics.latency import hardware_string
from benchmark.metrics.motion import motion_sums
from benchmark.metrics.smoothness import motion_smoothness
from benchmark.suites import Suite, SuiteConfig


def _vit_l14_scorer():
    """AestheticScorer-equivalent with a ViT-L/14-shaped random CLIP (timing only) and a LAION-shaped head."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from benchmark.metrics.aesthetic import AestheticHead, AestheticScorer

    cfg = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
        patch_size=14, projection_dim=768,
    )  # fmt: skip
    scorer = AestheticScorer.__new__(AestheticScorer)
    scorer.model = CLIPVisionModelWithProjection(cfg).eval()
    dims = [768, 1024, 128, 64, 16, 1]
    sd = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        sd[f"layers.{2 * i}.weight"], sd[f"layers.{2 * i}.bias"] = torch.randn(b, a) * 0.01, torch.zeros(b)
    scorer.head = AestheticHead(sd).eval()
    scorer.image_size, scorer.device, scorer.batch_size = 224, "cpu", 16
    return scorer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="data/toyworld/test")
    ap.add_argument("--n", type=int, default=8, help="videos timed per metric and size")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument(
        "--metrics", nargs="+", default=["objmc_lk", "objmc_flow", "smoothness", "fid", "fvd", "aesthetic"]
    )
    ap.add_argument("--aesthetic_stride", type=int, default=4)
    ap.add_argument("--out", default="results/metrics/motion_speed")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)  # the random ViT-L/14 and head (timing only); the suite rule is seeded

    items = Suite(
        SuiteConfig(name="speed", path=args.suite, max_items=args.n, num_frames=args.frames, seed=args.seed)
    ).items()
    fns = {}
    if "fid" in args.metrics:
        from benchmark.metrics.fid import inception_features, load_inception

        load_inception()
        fns["fid"] = lambda v, it: inception_features(v)
    if "fvd" in args.metrics:
        from benchmark.metrics.fvd import i3d_features, load_i3d

        load_i3d()
        fns["fvd"] = lambda v, it: i3d_features(v[None])
    if "aesthetic" in args.metrics:
        scorer = _vit_l14_scorer()
        fns["aesthetic"] = lambda v, it: scorer(v[:: args.aesthetic_stride])
    for inst in ("lk", "flow"):
        if f"objmc_{inst}" in args.metrics:
            fns[f"objmc_{inst}"] = lambda v, it, inst=inst: motion_sums(
                v, it["tracks"], it["visible"], inst, it["size"]
            )
    if "smoothness" in args.metrics:
        fns["smoothness"] = lambda v, it: motion_smoothness(v)

    rows = []
    for size in args.sizes:
        videos = [
            np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in it["video"]])
            for it in items
        ]
        for name in args.metrics:
            fn = fns[name]
            fn(videos[0], items[0])  # warm-up (model load, allocator), excluded
            secs = []
            load = os.getloadavg()[0]
            for v, it in zip(videos, items):
                t0 = time.perf_counter()
                fn(v, it)
                secs.append(time.perf_counter() - t0)
            rows.append(
                {
                    "metric": name,
                    "size": f"{size}x{size}",
                    "frames": int(videos[0].shape[0]),
                    "n_videos": len(videos),
                    "sec_per_video_mean": float(np.mean(secs)),
                    "sec_per_video_sd": float(np.std(secs, ddof=1)) if len(secs) > 1 else 0.0,
                    "load_avg_1min": round(load, 2),
                }
            )
            print(f"{name:12s} {size:4d}px  {rows[-1]['sec_per_video_mean']:.4f} s/video", flush=True)

    out = Path(args.out)
    command = " ".join(["python", *sys.argv])
    meta = {"command": command, "seed": args.seed, "hardware": hardware_string(), "torch": torch.__version__}
    header = list(rows[0])
    csv = ",".join(header) + "\n" + "".join(",".join(str(r[k]) for k in header) + "\n" for r in rows)
    atomic_write_bytes(out.with_suffix(".csv"), csv.encode())
    atomic_write_bytes(
        out.with_suffix(".json"), (json.dumps({**meta, "rows": rows}, indent=2) + "\n").encode()
    )
    md = [
        "# Seconds per video of each benchmark metric (CPU)",
        "",
        f"Command: `{command}` (seed {args.seed}). Hardware: {meta['hardware']}.",
        "",
        "| metric | size | frames | videos | s/video (mean ± sd) | load avg |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['metric']} | {r['size']} | {r['frames']} | {r['n_videos']} | "
        f"{r['sec_per_video_mean']:.4f} ± {r['sec_per_video_sd']:.4f} | {r['load_avg_1min']} |"
        for r in rows
    ]
    md += [
        "",
        "- fid / fvd: per-video feature extraction (Inception on every frame / I3D on the first 16-frame clip).",
        f"- aesthetic: ViT-L/14-shaped CLIP with random weights (timing only), every {args.aesthetic_stride}th "
        "frame.",
        "- The machine is shared with other jobs; the load average shows how busy it was.",
    ]
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(md) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
