"""Toy-scale SFT step cost on this CPU: seconds per generator step and per critic step (the toy SFT config's batch
and clip length), and the three exit-gradient routes of the Self-Rollout generator step compared in time and in
autograd memory (bytes saved for backward, peak) at two clip lengths.

Weights do not change the cost: the teacher is the export given by --teacher, or a freshly initialised toy model.
Repeats are interleaved (route A, B, C, A, B, C, ...) so a busy shared CPU slows all of them alike; medians.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_sft_step.py --out results/training --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch

from ardrag import ARDragPipeline
from ardrag.hardware import hardware_string
from ardrag.pipeline import PipelineConfig
from ardrag.sampling import Conditions, Denoiser, iter_rollout, randn
from ardrag.training.self_rollout import sample_exit_steps, student_rollout
from ardrag.training.sft import OptimConfig, SFTModule
from ardrag.video import atomic_write_bytes


class PeakSavedBytes:
    """Peak of the live bytes autograd holds for backward (graph memory)."""

    def __init__(self):
        self.live = self.peak = 0

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda box: box.t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def _pack(self, t):
        box = type("Box", (), {})()
        box.t, n = t, t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._free, n)
        return box

    def _free(self, n):
        self.live -= n


def toy_batch(module: SFTModule, batch: int, frames: int, seed: int = 0) -> tuple[torch.Tensor, Conditions]:
    """A synthetic batch of the toy shapes (values do not change the cost)."""
    g = torch.Generator().manual_seed(seed)
    cfg = module.pipeline_config
    video = torch.rand(batch, 3, frames, cfg.height, cfg.width, generator=g) * 2 - 1
    tracks = torch.rand(batch, frames, 3, 2, generator=g) * cfg.width
    b = {"video": video, "tracks": tracks, "visible": torch.ones(batch, frames, 3, dtype=torch.bool)}
    b["prompt"] = ["a red square"] * batch
    return module.conditions(b)


def route_cost(module: SFTModule, x0, conds, route: str) -> tuple[float, int]:
    """Seconds and peak saved bytes of a student rollout + backward of <w, x> by one exit-gradient route."""
    den = Denoiser(module.student, conds)
    cfg = module.rollout_cfg
    g = torch.Generator().manual_seed(0)
    noise = randn(x0.shape, g, "cpu")
    exits = sample_exit_steps(x0.shape[2], cfg.schedule.steps, g)
    w = torch.randn_like(x0)
    t0 = time.perf_counter()
    with PeakSavedBytes() as mem:
        if route == "in-graph":
            chunks = list(iter_rollout(den, noise, cfg, grad_steps=exits))
            (torch.cat([c.grad_x0 for c in chunks], 2) * w).sum().backward()
        else:
            roll = student_rollout(den, noise, cfg, exits)
            roll.backward(den, w, cfg, through_context=route == "teacher-forcing")
    seconds = time.perf_counter() - t0
    module.student.zero_grad(set_to_none=True)
    return seconds, mem.peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="exported teacher folder (default: fresh toy model)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--generator-every", type=int, default=2, help="k of configs/toy/sft.yaml")
    ap.add_argument("--out", default="results/training")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        teacher = args.teacher
        if teacher is None:
            cfg = PipelineConfig.from_dict(json.loads(Path("configs/pipeline/toy.json").read_text()))
            teacher = ARDragPipeline.from_preset("toy", cfg, seed=0).save_pretrained(Path(tmp) / "t")
        module = SFTModule(str(teacher), optim=OptimConfig(generator_every=args.generator_every))
    n_params = sum(p.numel() for p in module.student.parameters())
    opt = module.configure_optimizers()
    x0, conds = toy_batch(module, args.batch, args.frames)
    steps = {"generator step": [], "critic step (fresh rollout)": [], "critic step (reusing the sample)": []}
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        g = torch.Generator().manual_seed(r)
        noise = randn(x0.shape, g, "cpu")
        t0 = time.perf_counter()
        _, fake = module.generator_step(x0, conds, noise, g)
        t1 = time.perf_counter()
        module.critic_step(x0, conds, noise, g)
        t2 = time.perf_counter()
        module.critic_step(x0, conds, noise, g, fake=fake)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if r:
            for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2)):
                steps[k].append(v)
    step_s = {k: statistics.median(v) for k, v in steps.items()}

    routes = ("in-graph", "replay", "teacher-forcing")
    frames_list = (args.frames, 2 * args.frames - 1)
    cost = {(f, r): [] for f in frames_list for r in routes}
    peak = {}
    for f in frames_list:
        xf, cf = toy_batch(module, 1, f)
        for rep in range(args.repeats + 1):
            for r in routes:
                s, p = route_cost(module, xf, cf, r)
                if rep:
                    cost[f, r].append(s)
                peak[f, r] = p
    k = module.optim_cfg.generator_every
    per_iter = (step_s["generator step"] + step_s["critic step (reusing the sample)"]) / k + step_s[
        "critic step (fresh rollout)"
    ] * (k - 1) / k
    result = {
        "hardware": hardware_string(),
        "batch": args.batch,
        "frames": args.frames,
        "seconds": step_s,
        "seconds_per_training_step_at_k": {"k": k, "seconds": per_iter},
        "routes": {
            f"{r}, {f} frames": {
                "seconds": statistics.median(cost[f, r]),
                "peak_saved_mib": peak[f, r] / 2**20,
            }
            for f in frames_list
            for r in routes
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "sft_step_speed.json", (json.dumps(result, indent=2) + "\n").encode())
    lines = [
        "# Toy SFT step cost on this CPU",
        "",
        f"Command: `OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python {' '.join(sys.argv)}`. "
        f"Machine: {result['hardware']}; "
        "the CPU was shared with other jobs, so read ratios within a table rather than absolute seconds. "
        f"Model: {args.teacher or 'an untrained toy model'} ({n_params / 1e6:.2f}M parameters per model), batch {args.batch}, {args.frames} latent frames of 16x16, "
        f"3 steps per frame, medians of {args.repeats} interleaved repeats.",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k_} | {v:.3f} |" for k_, v in step_s.items()],
        f"| one training step on average (generator every k = {k}) | {per_iter:.3f} |",
        "",
        "Exit-gradient routes of the generator step (batch 1: student rollout + backward of a loss on all exit "
        "predictions; memory = peak bytes autograd holds for backward):",
        "",
        "| route | frames | seconds | peak saved MiB |",
        "|---|---|---|---|",
        *[
            f"| {r} | {f} | {statistics.median(cost[f, r]):.3f} | {peak[f, r] / 2**20:.1f} |"
            for f in frames_list
            for r in routes
        ],
        "",
        "in-graph: `iter_rollout` with grad enabled (every chunk's exit graph alive until backward); replay "
        "(the trainer's default): rollout without graph, then per chunk recompute the exit forward against the "
        "rebuilt KV cache and backpropagate at once; teacher-forcing: one pass over [cached | exit states] "
        "(`grad_through_context: true`, gradient also through the context keys/values).",
        "",
    ]
    atomic_write_bytes(out / "sft_step_speed.md", "\n".join(lines).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
