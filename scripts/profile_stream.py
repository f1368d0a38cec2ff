"""Where a streamed frame's time goes, before and after each inference change: torch.profiler op summaries and
interleaved wall-clock timings of the same stream run four ways in one process.

  1. sampler   : the training-side sampler (`sampling.iter_rollout` over the concatenating `KVCache`, module
                 forwards that recompute the text/timestep embeddings every forward) with the conditions of every
                 frame built before frame 0;
  2. engine    : `ardrag.streaming.StreamEngine` with per-stream constants, the preallocated ring-buffer cache and
                 lazy per-chunk conditions, the cache write as its own forward;
  3. +fold     : the same with each chunk's cache write folded into the next chunk's first step (the default);
  4. +compile  : the same with the transformer forward under plain `torch.compile` (weights as graph inputs;
                 compiled in a warm-up run, reported apart);
  5. +frozen   : compiled as the engine does it (`compile=True`): inductor `freezing` (weights as constants,
                 pre-packed linears) and the C++ wrapper.
Variants run round-robin (`--repeats` rounds), so a change in CPU load hits all of them alike; the 1-minute load
average is recorded. Each variant's videos are compared with the sampler's (max uint8 difference).

A second table times the first frame alone (frozen compile) with the per-stream setup done three ways: as before
the per-model caches (context keys/values recomputed, ring buffers allocated, frame 0's motion preview rendered),
with the context keys/values and ring buffers kept per model, and as the engine runs it (frame 0's conditions
from the reference too), with the pieces of the first frame timed apart.

    python scripts/profile_stream.py --checkpoint results/toy/checkpoints/rl --frames 32 --threads 2 \
        --out results/latency/profile.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from ardrag import ARDragPipeline
from ardrag.conditioning import video_to_uint8
from ardrag.hardware import cpu_name, provenance
from ardrag.sampling import Denoiser, iter_rollout
from ardrag.streaming import StreamEngine, _model_constants
from ardrag.video import atomic_write_bytes
from benchmark.metrics.latency import toy_stream_inputs


def sampler_stream(pipe: ARDragPipeline, image, tracks, seed: int):
    """The pre-engine stream: all conditions first, iter_rollout, per-chunk decode."""
    prep = pipe._prepare(image, tracks, None, "", None, seed)
    den = Denoiser(pipe.transformer, prep.conditions, pipe.config.guidance_scale)
    decode = pipe.codec.stream_decoder()
    for ch in iter_rollout(den, prep.noise, pipe.config.rollout(), generator=prep.generator):
        yield from video_to_uint8(decode(ch.clean)[0])


def engine_stream(pipe: ARDragPipeline, image, tracks, seed: int, fold: bool, compile: bool):
    prep = pipe._prepare(image, tracks, None, "", None, seed, lazy=True)
    eng = StreamEngine(
        pipe.transformer, prep.conditions, pipe.config.rollout(), compile=compile, fold_write=fold
    )
    decode = pipe.codec.stream_decoder()
    for clean in eng.run(prep.noise, lambda a, b: pipe._cond_frames(prep, a, b), prep.generator):
        yield from video_to_uint8(decode(clean)[0])


def plain_compile(pipe: ARDragPipeline) -> None:
    """Give this pipeline's model a plain `torch.compile` of its forward (no freezing, Python wrapper)."""
    consts = _model_constants(pipe.transformer)
    if consts["blocks"] is None:
        StreamEngine(
            pipe.transformer,
            pipe._prepare(*toy_stream_inputs(3), None, "", None, 0, True).conditions,
            pipe.config.rollout(),
        )
    blocks = consts["blocks"]
    # compiled through a function of its own: graphs with the weights as inputs fit any model of the same shapes,
    # so they must not sit in the cache of `_Blocks.forward` that the frozen variant's calls look up first
    consts["compiled"] = torch.compile(lambda *a: blocks(*a), dynamic=False, fullgraph=True)


def first_frame(pipe: ARDragPipeline, image, tracks, seed: int, setup: str) -> dict[str, float]:
    """Wall ms of a stream's first frame and its pieces under one of the setups of the second table."""
    consts = _model_constants(pipe.transformer)
    cond = pipe.conditioner
    if setup == "before":
        consts["contexts"].clear()
        consts["rings"].clear()
    t = [time.perf_counter()]
    prep = pipe._prepare(image, tracks, None, "", None, seed, lazy=True)
    t.append(time.perf_counter())
    eng = StreamEngine(pipe.transformer, prep.conditions, pipe.config.rollout(), compile=True)
    t.append(time.perf_counter())
    if setup in ("before", "kept"):  # frame 0's conditions through the preview renderer, as before
        cond._first_frame = lambda r, tr, v: type(cond).__call__(cond, r, tr, v)[:, :, :-1]
    try:
        pipe._cond_frames(prep, 0, 1)
    finally:
        cond.__dict__.pop("_first_frame", None)
    t.append(time.perf_counter())
    run = eng.run(prep.noise, lambda a, b: pipe._cond_frames(prep, a, b), prep.generator)
    clean = next(run)
    t.append(time.perf_counter())
    video_to_uint8(pipe.codec.stream_decoder()(clean)[0])
    t.append(time.perf_counter())
    run.close()
    d = np.diff(t) * 1e3
    return {
        "prepare": d[0],
        "engine": d[1],
        "cond0": d[2],
        "forwards": d[3],
        "decode": d[4],
        "total": float(d.sum()),
    }


def timed(stream) -> tuple[list[float], np.ndarray, float]:
    """Per-frame wall deltas, the frames, and the process CPU seconds of the whole stream."""
    c0, t0 = time.process_time(), time.perf_counter()
    stamps, frames = [], []
    for fr in stream:
        stamps.append(time.perf_counter())
        frames.append(fr)
    return list(np.diff([t0, *stamps])), np.stack(frames), time.process_time() - c0


def pieces(pipe: ARDragPipeline, image, tracks) -> dict[str, float]:
    """CPU ms of the per-stream and per-frame work around the transformer."""

    def cpu_ms(f, n: int = 20) -> float:
        f()
        out = []
        for _ in range(n):
            c0 = time.process_time()
            f()
            out.append(time.process_time() - c0)
        return float(np.median(out)) * 1e3

    prep = pipe._prepare(image, tracks, None, "", None, 0, lazy=True)
    cond = pipe.conditioner
    z = torch.randn(
        1,
        pipe.codec.latent_channels,
        1,
        pipe.height // pipe.codec.spatial_factor,
        pipe.width // pipe.codec.spatial_factor,
    )
    dec = pipe.codec.stream_decoder()
    return {
        "inputs, text and noise (lazy _prepare)": cpu_ms(
            lambda: pipe._prepare(image, tracks, None, "", None, 0, True)
        ),
        f"conditions of all {len(tracks)} frames (before frame 0 without lazy conditions)": cpu_ms(
            lambda: cond(prep.reference, prep.tracks, prep.visible), 5
        ),
        "conditions of frame 0 alone": cpu_ms(
            lambda: cond.frames(prep.reference, prep.tracks, prep.visible, 0, 1)
        ),
        "conditions of a block of 8 later frames": cpu_ms(
            lambda: cond.frames(prep.reference, prep.tracks, prep.visible, 8, 16)
        ),
        "decode of one latent frame + uint8": cpu_ms(lambda: video_to_uint8(dec(z)[0]), 100),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="results/toy/checkpoints/rl")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/latency/profile.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    pipe = ARDragPipeline.from_pretrained(args.checkpoint)
    plain = ARDragPipeline.from_pretrained(args.checkpoint)  # its own model, so its own compiled forward
    plain_compile(plain)
    image, tracks = toy_stream_inputs(args.frames)
    variants = {
        "sampler": lambda: sampler_stream(pipe, image, tracks, args.seed),
        "engine": lambda: engine_stream(pipe, image, tracks, args.seed, False, False),
        "+fold": lambda: engine_stream(pipe, image, tracks, args.seed, True, False),
        "+compile": lambda: engine_stream(plain, image, tracks, args.seed, True, True),
        "+frozen": lambda: engine_stream(pipe, image, tracks, args.seed, True, True),
    }
    warm = {}
    for name, make in variants.items():  # warm-up (compiles the last variant), excluded and reported
        t0 = time.perf_counter()
        timed(make())
        warm[name] = time.perf_counter() - t0
    reference = timed(variants["sampler"]())[1]
    runs = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    loads = [os.getloadavg()[0]]
    diffs = {}
    for _ in range(args.repeats):
        for name, make in variants.items():
            d, video, c = timed(make())
            runs[name].append(d)
            cpu[name].append(c)
            diffs[name] = int(np.abs(video.astype(int) - reference).max())
        loads.append(os.getloadavg()[0])
    summaries = {}
    for name, make in variants.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(make())
        events = prof.key_averages()
        calls = sum(e.count for e in events if e.key.startswith("aten::"))
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
        summaries[name] = (calls, top)

    lines = [
        f"# Per-frame overhead of the streamed toy model, before and after each change ({args.frames} frames)",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Checkpoint `{args.checkpoint}`, the demo's toy-0 image with two fixed drags, seed {args.seed}; "
        f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, commit "
        f"{provenance().get('git_commit', '?')}.  ",
        f"Variants run round-robin, {args.repeats} rounds after one warm-up each; medians. 1-minute load average "
        f"over the rounds: {min(loads):.2f} - {max(loads):.2f} (other jobs shared the CPU when above ~0.5).",
        "",
        "| variant | TTFF (ms) | steady ms/frame (frames 1-end) | frames/s | CPU ms/frame (process time) | "
        "aten calls per frame | max uint8 diff to sampler | warm-up run (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in variants:
        r = np.array(runs[name])
        ttff = np.median(r[:, 0]) * 1e3
        steady = np.median(r[:, 1:].mean(1)) * 1e3
        lines.append(
            f"| {name} | {ttff:.1f} | {steady:.1f} | {1e3 / steady:.1f} | "
            f"{np.median(cpu[name]) * 1e3 / args.frames:.1f} | "
            f"{summaries[name][0] / args.frames:.0f} | {diffs[name]} | {warm[name]:.1f} |"
        )
    lines += [
        "",
        "Top operators by self CPU time (one profiled run per variant, profiler overhead included):",
        "",
    ]
    for name in variants:
        calls, top = summaries[name]
        cells = ", ".join(
            f"{e.key.replace('aten::', '')} {e.self_cpu_time_total / 1e3 / args.frames:.2f} ms ({e.count})"
            for e in top
        )
        lines.append(f"- **{name}** (ms per frame, calls per run): {cells}")
    setups = {
        "before": "setup as before the per-model caches (context keys/values, ring buffers, frame-0 preview)",
        "kept": "+ context keys/values and ring buffers kept per model",
        "now": "+ frame 0's conditions from the reference (the engine as it runs)",
    }
    ff = {k: [] for k in setups}
    for _ in range(5 * args.repeats):
        for k in setups:
            ff[k].append(first_frame(pipe, image, tracks, args.seed, k))
    lines += [
        "",
        f"The first frame alone (frozen compile; {5 * args.repeats} round-robin rounds, wall ms, medians):",
        "",
        "| setup | inputs, text, noise | engine (context keys/values, cache) | conditions of frame 0 | "
        "3 denoising steps | decode | first frame |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, label in setups.items():
        med = {p: float(np.median([r[p] for r in ff[k]])) for p in ff[k][0]}
        lines.append(
            f"| {label} | {med['prepare']:.2f} | {med['engine']:.2f} | {med['cond0']:.2f} | "
            f"{med['forwards']:.2f} | {med['decode']:.2f} | {med['total']:.2f} |"
        )
    lines += ["", "Pieces of a frame outside the transformer (process CPU ms per call, median of 20):", ""]
    for name, ms in pieces(pipe, image, tracks).items():
        lines.append(f"- {name}: {ms:.2f} ms")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(args.out, text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
