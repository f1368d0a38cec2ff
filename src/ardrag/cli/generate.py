"""`ardrag-generate`: image + trajectory JSON -> MP4 (and GIF on request) with an exported pipeline folder.

Input is validated before any model loads; a malformed input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument(
        "--negative-prompt",
        "--negative_prompt",
        dest="negative_prompt",
        default=None,
        help="negative prompt (default: the pipeline's)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same video)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the pipeline's)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer blocks (a warm-up run compiles first; its time is printed apart)",
    )
    return p


def fail(msg: str) -> int:
    print(f"ardrag-generate: error: {msg}", file=sys.stderr)
    return 2


def check_output(out: Path) -> str | None:
    """Why ``out`` cannot be written (None when it can): checked before any model runs."""
    if out.suffix.lower() not in (".mp4", ".gif"):
        return f"--out must end in .mp4 or .gif, got {out.name}"
    if out.is_dir():
        return f"--out {out} is a folder; give a file name ending in .mp4 or .gif"
    folder = out.absolute().parent
    while not folder.exists():  # the folder is created later, after every input is checked
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot create the output folder {out.parent}: {folder} is a file"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write to the output folder {out.parent}: {folder} is not writable"
    return None


def check_device(device: str | None) -> tuple[str, str | None]:
    """(device, error): the default is cuda when available; an unusable device is an error, not a traceback."""
    import torch

    if device is None:
        return ("cuda" if torch.cuda.is_available() else "cpu"), None
    try:
        kind = torch.device(device).type
    except RuntimeError:
        return device, f"--device {device!r} is not a torch device (use cpu, cuda or cuda:N)"
    if kind == "cuda" and not torch.cuda.is_available():
        return (
            device,
            f"--device {device}: this torch has no usable CUDA ({torch.__version__}); use --device cpu",
        )
    return device, None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    problem = check_output(out)
    if problem:
        return fail(problem)
    try:  # before the pipeline code is imported, so a wrong path fails in a fraction of a second
        image = read_image(args.image)
    except VideoReadError as e:
        return fail(str(e))
    from ardrag.pipeline import PipelineConfig  # light: no model code runs

    try:
        config = PipelineConfig.load(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        return fail(str(e))
    try:
        tracks, visible = load_trajectory(args.trajectory, image.shape[1], image.shape[0], config.limits())
    except TrajectoryError as e:
        return fail(str(e))
    device, problem = check_device(args.device)
    if problem:
        return fail(problem)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return fail(f"cannot create the output folder {out.parent}: {e.strerror or e}")

    from ardrag.pipeline import ARDragPipeline

    pipe = ARDragPipeline.from_pretrained(args.checkpoint, device=device)
    warm = ""
    if args.compile:
        pipe.config.compile = True
        warm = f", compile warm-up {pipe.warmup(len(tracks)):.1f} s before it"
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
    written = [str(out)]
    if args.gif and out.suffix.lower() != ".gif":
        write_video(out.with_suffix(".gif"), video, fps)
        written.append(str(out.with_suffix(".gif")))
    print(
        f"wrote {' and '.join(written)} ({len(video)} frames {video.shape[2]}x{video.shape[1]}; first frame {first:.3f} s, "
        f"total {total:.2f} s on {device}{warm})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
