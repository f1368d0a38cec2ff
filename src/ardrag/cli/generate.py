"""`ardrag-generate`: image + trajectory JSON -> MP4 (and GIF on request) with an exported pipeline folder.

Input is validated before any model loads; a malformed input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ardrag.trajectory import TrajectoryError, load_trajectory
from ardrag.video import VideoReadError, read_image, write_video


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ardrag-generate", description="Generate a video that follows dragged trajectories on an image."
    )
    p.add_argument(
        "--checkpoint", required=True, help="exported pipeline folder (transformer/ + ardrag_pipeline.json)"
    )
    p.add_argument("--image", required=True, help="first frame (any image OpenCV reads)")
    p.add_argument(
        "--trajectory", required=True, help="trajectory JSON: {'tracks': N lists of T [x, y] pixels, ...}"
    )
    p.add_argument("--out", required=True, help="output video, .mp4 or .gif")
    p.add_argument("--gif", action="store_true", help="also write a GIF next to the MP4")
    p.add_argument("--prompt", default="", help="text prompt")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the pipeline's)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return p


def fail(msg: str) -> int:
    print(f"ardrag-generate: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ardrag.pipeline import PipelineConfig  # light: no model code runs

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        return fail(f"--out must end in .mp4 or .gif, got {out.name}")
    try:
        config = PipelineConfig.load(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        return fail(str(e))
    try:
        image = read_image(args.image)
    except VideoReadError as e:
        return fail(str(e))
    try:
        tracks, visible = load_trajectory(args.trajectory, image.shape[1], image.shape[0], config.limits())
    except TrajectoryError as e:
        return fail(str(e))

    import torch

    from ardrag.pipeline import ARDragPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = ARDragPipeline.from_pretrained(args.checkpoint, device=device)
    t0 = time.perf_counter()
    frames, first = [], None
    for frame in pipe.stream(
        image, tracks, visible, prompt=args.prompt, seed=args.seed, negative_prompt=args.negative_prompt
    ):
        if first is None:
            first = time.perf_counter() - t0
        frames.append(frame)
    total = time.perf_counter() - t0
    import numpy as np

    video = np.stack(frames)
    fps = args.fps or config.fps
    write_video(out, video, fps)
    if args.gif and out.suffix.lower() != ".gif":
        write_video(out.with_suffix(".gif"), video, fps)
    print(
        f"wrote {out} ({len(video)} frames {video.shape[2]}x{video.shape[1]}; first frame {first:.3f} s, "
        f"total {total:.2f} s on {device})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
