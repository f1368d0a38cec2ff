"""Time to first frame and FPS of `ardrag-demo` as a user sees them: measured in the browser page.

Serves the demo for a checkpoint on localhost, drives Debian's headless Chromium (Selenium), draws one fixed drag
on the first bundled toy-world image, presses Generate and reads the page's own clock (performance.now()):
  - first frame: Generate pressed -> first frame decoded, drawn on the canvas and past the next animation frame;
  - FPS: (frames - 1) / (last painted - first painted);
  - model ms/frame: the server's time inside `ARDragPipeline.stream` per frame (the rest is PNG + WebSocket + paint).
One warm-up run is excluded; the table gives the median and range over --repeats runs. A last, unmeasured run
steers the drag mid-stream and its page is saved as the README screenshot.

    python scripts/bench_demo.py --checkpoint results/toy/checkpoints/sft --frames 17 --repeats 5 --out results/demo
writes results/demo/demo_latency.{md,json} and results/demo/screenshot.png.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ardrag import ARDragPipeline
from ardrag.demo.app import create_app
from ardrag.demo.browser import (
    chromium_missing,
    drag,
    launch_chromium,
    open_page,
    page_state,
    quit_chromium,
    wait_for,
)
from ardrag.demo.cli import start_server
from ardrag.hardware import hardware_string, provenance
from ardrag.video import atomic_write_bytes

DRAG = [(60, 70), (110, 110), (170, 150), (230, 180)]  # CSS pixels on the 320 x 320 canvas
STEER = [(250, 250), (200, 220), (150, 190)]


def set_field(driver, element_id: str, value) -> None:
    from selenium.webdriver.common.by import By

    el = driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(str(value))


def run_once(driver, frames: int, steer: bool = False) -> dict:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "generate").click()
    if steer:
        wait_for(driver, f"window.ardragDemo.received.length >= {max(1, frames // 4)}", timeout=120)
        drag(driver, STEER)
    wait_for(driver, "window.ardragDemo.stats.done === true", timeout=300)
    state = page_state(driver)
    if state["errors"] or len(state["received"]) != frames:
        raise RuntimeError(f"run failed: {state['errors']} ({len(state['received'])} of {frames} frames)")
    painted = np.array([r["painted_ms"] for r in state["received"]])
    gen = np.array([r["gen_ms"] for r in state["received"]])
    return {
        "first_frame_ms": float(painted[0]),
        "fps": float((len(painted) - 1) * 1000 / (painted[-1] - painted[0])),
        "model_ms_per_frame": float(np.median(gen[1:])),
        "model_first_frame_ms": float(gen[0]),
    }


def small_png(png: bytes) -> bytes:
    """A screenshot as a 128-colour PNG (a few tens of kB for the README)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="results/toy/checkpoints/sft")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--out", type=Path, default=Path("results/demo"))
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks (compiled before timing)")
    args = p.parse_args()
    if chromium_missing():
        print(f"bench_demo: {chromium_missing()}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    torch.manual_seed(args.seed)
    pipe = ARDragPipeline.from_pretrained(args.checkpoint)
    warmup_s = None
    if args.compile:
        pipe.config.compile = True
        warmup_s = pipe.warmup(args.frames)
    server = start_server(create_app(pipe))
    driver = launch_chromium(900, 740)
    try:
        browser_version = driver.capabilities.get("browserVersion", "?")
        open_page(driver, server.url)
        image = driver.execute_script("return window.ardragDemo.imageId")
        set_field(driver, "frames", args.frames)
        set_field(driver, "seed", args.seed)
        drag(driver, DRAG)
        run_once(driver, args.frames)  # warm-up (allocations, first PNG decode), excluded
        runs = [run_once(driver, args.frames) for _ in range(args.repeats)]
        run_once(driver, args.frames, steer=True)
        driver.execute_script("window.scrollTo(0, 0)")
        shot = small_png(driver.get_screenshot_as_png())
    finally:
        quit_chromium(driver)
        server.stop()

    for r in runs:  # the page against the model's own rate and first frame, per run
        r["model_fps"] = 1000.0 / r["model_ms_per_frame"]
        r["painted_over_model_fps"] = r["fps"] / r["model_fps"]
        r["first_painted_over_model_first"] = r["first_frame_ms"] / r["model_first_frame_ms"]
    keys = [
        "first_frame_ms",
        "fps",
        "model_ms_per_frame",
        "model_first_frame_ms",
        "model_fps",
        "painted_over_model_fps",
        "first_painted_over_model_first",
    ]
    summary = {
        k: {
            "median": float(np.median([r[k] for r in runs])),
            "min": min(r[k] for r in runs),
            "max": max(r[k] for r in runs),
        }
        for k in keys
    }
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "checkpoint": args.checkpoint,
        "image": image,
        "frames": args.frames,
        "seed": args.seed,
        "repeats": args.repeats,
        "hardware": hardware_string(),
        "browser": f"Chromium {browser_version} (headless, Selenium)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "torch_threads": torch.get_num_threads(),
        "compile": args.compile,
        "compile_warmup_s": warmup_s,
        "date": time.strftime("%Y-%m-%d"),
        **provenance(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        args.out / "demo_latency.json",
        (json.dumps({**meta, "summary": summary, "runs": runs}, indent=2) + "\n").encode(),
    )
    names = {
        "first_frame_ms": "Generate -> first frame painted (ms)",
        "fps": "frames per second, painted",
        "model_ms_per_frame": "model time per frame after the first (ms)",
        "model_first_frame_ms": "model time of the first frame (ms)",
        "model_fps": "model frames per second (1000 / model ms per frame)",
        "painted_over_model_fps": "painted frames/s over the model's frames/s",
        "first_painted_over_model_first": "first frame painted over the model's first frame",
    }
    lines = [
        "# ardrag-demo: time to first frame and FPS in the browser",
        "",
        f"Command: `{meta['command']}`  ",
        f"Checkpoint `{args.checkpoint}`, bundled image `{image}`, {args.frames} frames, seed {args.seed}, "
        f"one fixed drag; {args.repeats} runs after one warm-up, median [min, max]; {torch.get_num_threads()} torch "
        f"threads; {'compiled blocks (compile warm-up ' + f'{warmup_s:.1f} s, not timed)' if args.compile else 'eager'}.  ",
        f"Hardware: {meta['hardware']}; {meta['browser']}; torch {meta['torch']}; {meta['date']}; "
        f"commit {meta['git_commit']}.  ",
        "Server and browser share the machine over localhost; 1-minute load average before/after: "
        f"{meta['load_average_1min'][0]} / {meta['load_average_1min'][1]} (the browser and any other jobs included).",
        "",
        "| measure | median | range |",
        "|---|---|---|",
    ]
    for k in keys:
        s = summary[k]
        fmt = ".2f" if k.endswith(("_fps", "_first")) and k.startswith(("painted", "first")) else ".1f"
        lines.append(f"| {names[k]} | {s['median']:{fmt}} | {s['min']:{fmt}} - {s['max']:{fmt}} |")
    atomic_write_bytes(args.out / "demo_latency.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(args.out / "screenshot.png", shot)
    print("\n".join(lines))
    print(f"screenshot: {args.out / 'screenshot.png'} ({len(shot) // 1024} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
