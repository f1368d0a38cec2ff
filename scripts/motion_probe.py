"""Quick motion probe of an exported pipeline during training: sample a few toy test clips (one noise seed) and
report the benchmark's penalised ObjMC (LK, `benchmark.metrics.motion.motion_metrics`) against the static video's,
plus a PNG grid
(ground truth | sample, frames 0, 8, 16 per clip). A fast look between checkpoints; the benchmark's numbers come
from `ardrag-eval` (e.g. configs/eval/teacher_check.yaml).

    ardrag-export --ckpt RUN/checkpoints/step0000400.ckpt --out RUN/export400
    python scripts/motion_probe.py RUN/export400 --items 6 --png probe.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ardrag import ARDragPipeline  # noqa: E402
from benchmark.metrics.motion import motion_metrics  # noqa: E402
from benchmark.suites import Suite  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipeline", help="exported pipeline folder")
    ap.add_argument("--suite", default="data/toyworld/test", help="toy test shards")
    ap.add_argument("--items", type=int, default=6, help="clips to sample")
    ap.add_argument("--tracks", type=int, default=8, help="target tracks per clip (suite rule)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed")
    ap.add_argument("--png", default=None, help="write a ground truth | sample grid here")
    args = ap.parse_args(argv)
    pipe = ARDragPipeline.from_pretrained(args.pipeline)
    spec = dict(name="probe", path=args.suite, max_items=args.items, num_frames=17, max_tracks=args.tracks)
    pen, static, cover, rows = [], [], [], []
    for item in Suite({**spec, "min_motion": 1.0}).items():
        video = pipe(item["video"][0], item["tracks"], item["visible"], prompt=item["prompt"], seed=args.seed)
        m = motion_metrics(video, item["tracks"], item["visible"])
        still = np.repeat(item["video"][:1], len(item["video"]), 0)
        pen.append(m["objmc_penalised"])
        static.append(motion_metrics(still, item["tracks"], item["visible"])["objmc_penalised"])
        cover.append(m["coverage"])
        pick = [0, len(video) // 2, len(video) - 1]
        rows.append(np.concatenate([np.concatenate(list(v[pick]), 0) for v in (item["video"], video)], 1))
    print(
        f"{args.pipeline}: {len(pen)} clips, penalised ObjMC-LK {np.mean(pen):.2f} px "
        f"(static {np.mean(static):.2f} px), coverage {np.mean(cover):.2f}"
    )
    if args.png:
        img = np.concatenate(rows, 1)
        img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(args.png, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
