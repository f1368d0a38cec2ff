"""Teacher training cost: the toy teacher step on this CPU (fp32 vs bf16 autocast, against the measured matmul peak)
and the full-scale Wan2.1-1.3B teacher's memory per GPU under FSDP.
Method (written into the result):
  - toy step: configs/toy/teacher.yaml's model (preset toy, attention_head_dim 64, ffn_dim 512, prediction_type
    sample, sample_base [25, 37]: the motion preview) with the toy pipeline (configs/pipeline/toy.json: 12-channel PCA codec, motion
    preview), batch 8 x 17 frames x 64x64, 5 tracks; one step = conditions from a synthetic
    batch (codec, heatmaps, text) + condition dropout + flow-matching loss forward + backward + AdamW step (no EMA,
    no logging, no data loading). Median of a few timed steps after one warm-up step;
  - FLOPs: torch.utils.flop_counter.FlopCounterMode over one fp32 step (matmuls, convolutions and attention; the
    elementwise work it does not count is cheap next to them). Achieved GFLOP/s = those FLOPs / median CPU seconds
    of the step (process time: with one thread it excludes the time other jobs held the core; wall seconds are
    reported too);
  - matmul peak: median GFLOP/s (CPU time) of square torch.mm (fp32 and bf16) at the same thread count;
  - full scale: the `wan2.1-1.3b` preset with 33 condition channels (Wan VAE 16 x 2 + mask) built on the meta
    device; FSDP full sharding of fp32 master weights, fp32 grads, AdamW's two fp32 states and an fp32 EMA over
    the GPUs, plus two unsharded bf16 blocks in flight; activations of one bidirectional step (batch 1 video per
    GPU, 21 latent frames x 1560 tokens = 480x832 x 81 frames, 512 text tokens) MEASURED as the bytes autograd saves
    (scripts/bench_sft_memory.py's SavedBytes, bf16, real width, 1 and 2 blocks at two small token counts, fitted
    linearly in tokens and scaled), with and without per-block activation checkpointing. The frozen text encoder
    and VAE are not counted (conditions and latents precomputed, or the encoders offloaded).
The CPU is shared with other jobs: timings are medians of few steps and vary by tens of percent between runs.
    .venv/bin/python scripts/bench_teacher.py --out results/training
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sft_memory import GiB, linear_fit, measure_full, real_width_model  # noqa: E402

from ardrag.hardware import cpu_has_native_bf16, hardware_string  # noqa: E402
from ardrag.models import CausalWanTransformer, preset_config  # noqa: E402
from ardrag.training.teacher import ModelInit, TeacherModule  # noqa: E402
from ardrag.video import atomic_write_bytes  # noqa: E402

TOY = ModelInit(
    pipeline_config="configs/pipeline/toy.json",
    preset="toy",
    preset_overrides={
        "attention_head_dim": 64,
        "ffn_dim": 512,
        "prediction_type": "sample",
        "sample_base": [25, 37],
    },
)
BATCH, FRAMES, TRACKS = 8, 17, 5


def toy_batch(module: TeacherModule, g: torch.Generator) -> dict:
    h, w = module.pipeline_config.height, module.pipeline_config.width
    return {
        "video": torch.rand(BATCH, 3, FRAMES, h, w, generator=g) * 2 - 1,
        "tracks": torch.rand(BATCH, FRAMES, TRACKS, 2, generator=g) * w,
        "visible": torch.ones(BATCH, FRAMES, TRACKS, dtype=torch.bool),
        "prompt": ["a red square moves right"] * BATCH,
    }


def toy_step(module: TeacherModule, opt: torch.optim.Optimizer, batch: dict, bf16: bool, g: torch.Generator):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        x0, conds = module.conditions(batch)
        loss = module.flow_matching_loss(x0, module.drop_conditions(conds, g), g)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def time_toy(steps: int) -> dict:
    torch.manual_seed(0)
    module = TeacherModule(model=TOY, seed=0)
    opt = module.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(0)
    batch = toy_batch(module, g)
    with FlopCounterMode(display=False) as fc:
        toy_step(module, opt, batch, False, g)
    flops = fc.get_total_flops()
    out = {"parameters": sum(p.numel() for p in module.transformer.parameters()), "flops_per_step": flops}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        toy_step(module, opt, batch, bf16, g)  # warm-up
        secs, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            toy_step(module, opt, batch, bf16, g)
            secs.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        # CPU seconds of this process: on a shared CPU the wall time also counts the time other jobs ran
        out[name] = {
            "seconds": secs,
            "median_s": statistics.median(secs),
            "median_cpu_s": statistics.median(cpu),
        }
    return out


def matmul_peak(n: int = 1024, reps: int = 5) -> dict[str, float]:
    """Median GFLOP/s of an (n x n) @ (n x n) matmul per dtype."""
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        secs = []
        for _ in range(reps):
            t0 = time.process_time()  # CPU time, as the step's: robust to other jobs on a shared CPU
            a @ b
            secs.append(time.process_time() - t0)
        peak[name] = 2 * n**3 / statistics.median(secs) / 1e9
    return peak


def full_scale_memory(gpus: int, frames: int, tokens_hw: tuple[int, int]) -> dict:
    with torch.device("meta"):
        meta = CausalWanTransformer(**preset_config("wan2.1-1.3b", cond_in_channels=33))
    p = sum(x.numel() for x in meta.parameters())
    p_block = sum(x.numel() for x in meta.blocks[0].parameters())
    layers = len(meta.blocks)
    static = {
        "fp32 parameters (sharded)": 4 * p / gpus,
        "fp32 gradients (sharded)": 4 * p / gpus,
        "AdamW exp_avg + exp_avg_sq fp32 (sharded)": 8 * p / gpus,
        "EMA fp32 (sharded)": 4 * p / gpus,
        "unsharded bf16 blocks in flight (2)": 2 * 2 * p_block,
    }
    models = {n: real_width_model(n) for n in (1, 2)}
    small = [(2, 4), (4, 4)]
    tpf_small = [a * b for a, b in small]
    m = {(n, t): measure_full(models[n], hw, frames) for n in (1, 2) for t, hw in zip(tpf_small, small)}
    blk = [m[2, t] - m[1, t] for t in tpf_small]
    rest = [m[1, t] - b for t, b in zip(tpf_small, blk)]
    tpf = tokens_hw[0] * tokens_hw[1]
    a_b, b_b = linear_fit(tpf_small[0], blk[0], tpf_small[1], blk[1])
    a_r, b_r = linear_fit(tpf_small[0], rest[0], tpf_small[1], rest[1])
    block_bytes, rest_bytes = a_b + b_b * tpf, a_r + b_r * tpf
    d = models[1].inner_dim
    activations = {
        "per-block activation checkpointing": layers * frames * tpf * d * 2 + block_bytes + rest_bytes,
        "no checkpointing": layers * block_bytes + rest_bytes,
    }
    total_static = sum(static.values())
    return {
        "parameters": p,
        "parameters_per_block": p_block,
        "layers": layers,
        "gpus": gpus,
        "latent_frames": frames,
        "tokens_per_frame": tpf,
        "measured_saved_bytes": {f"{n} blocks, {t} tokens/frame": v for (n, t), v in m.items()},
        "static_gib": {k: v / GiB for k, v in static.items()},
        "static_total_gib": total_static / GiB,
        "activation_gib": {k: v / GiB for k, v in activations.items()},
        "peak_gib": {k: (total_static + v) / GiB for k, v in activations.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/training")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per precision (after one warm-up)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--latent-frames", type=int, default=21)
    ap.add_argument("--tokens-hw", type=int, nargs=2, default=[30, 52], help="patch grid per latent frame")
    args = ap.parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")

    peak = matmul_peak()
    toy = time_toy(args.steps)
    mem = full_scale_memory(args.gpus, args.latent_frames, tuple(args.tokens_hw))
    rows = []
    for name in ("fp32", "bf16"):
        s, cpu_s = toy[name]["median_s"], toy[name]["median_cpu_s"]
        achieved = toy["flops_per_step"] / cpu_s / 1e9
        rows.append(
            {
                "precision": name,
                "median_s_per_step": round(s, 4),
                "median_cpu_s_per_step": round(cpu_s, 4),
                "steps_timed": args.steps,
                "gflop_per_step": round(toy["flops_per_step"] / 1e9, 3),
                "achieved_gflops": round(achieved, 2),
                "matmul_peak_gflops": round(peak[name], 2),
                "fraction_of_peak": round(achieved / peak[name], 3),
                "fraction_of_bf16_peak": round(achieved / peak["bf16"], 3),
            }
        )
    native = {True: "yes", False: "no (bf16 is emulated)", None: "unknown"}[cpu_has_native_bf16()]
    hw = (
        f"{hardware_string()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"native bf16 (AVX-512 BF16 / AMX) {native}"
    )
    threads = os.environ.get("OMP_NUM_THREADS")
    command = " ".join(
        ([f"OMP_NUM_THREADS={threads}"] if threads else [])
        + [".venv/bin/python", "scripts/bench_teacher.py"]
        + sys.argv[1:]
    )
    method = __doc__.split("Method (written into the result):")[1].split(".venv")[0].strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "teacher_step.csv", buf.getvalue().encode())
    result = {
        "hardware": hw,
        "command": command,
        "method": method,
        "toy": toy,
        "toy_rows": rows,
        "matmul_peak": peak,
        "full": mem,
    }
    atomic_write_bytes(out / "teacher_cost.json", (json.dumps(result, indent=2) + "\n").encode())
    lines = [
        "# Teacher training cost",
        "",
        f"Command: `{command}`",
        "",
        f"Measured on: {hw}. The CPU was shared with other jobs while measuring: seconds are medians of "
        f"{args.steps} steps and can vary by tens of percent between runs.",
        "",
        f"Method: {method}",
        "",
        f"## Toy teacher step ({toy['parameters']:,} parameters, batch {BATCH} x {FRAMES} frames x 64x64)",
        "",
        "| precision | wall s / step | CPU s / step | GFLOP / step | achieved GFLOP/s | matmul peak GFLOP/s "
        "| of own peak | of bf16 peak |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['precision']} | {r['median_s_per_step']:.3f} | {r['median_cpu_s_per_step']:.3f} | "
            f"{r['gflop_per_step']:.1f} | "
            f"{r['achieved_gflops']:.1f} | {r['matmul_peak_gflops']:.1f} | {100 * r['fraction_of_peak']:.1f}% | "
            f"{100 * r['fraction_of_bf16_peak']:.1f}% |"
            for r in rows
        ],
        "",
        f"## Full scale: Wan2.1-1.3B teacher, FSDP on {args.gpus} x {args.gpu_gb:.0f} GB",
        "",
        f"Parameters (meta device): {mem['parameters']:,} ({mem['parameters_per_block']:,} per block, "
        f"{mem['layers']} blocks); batch 1 video per GPU, {mem['latent_frames']} latent frames x "
        f"{mem['tokens_per_frame']} tokens, bf16 compute.",
        "",
        "| static (per GPU) | GiB |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in mem["static_gib"].items()],
        f"| **total static** | **{mem['static_total_gib']:.2f}** |",
        "",
        "| activations of one step (per GPU) | GiB | peak = static + activations (GiB) |",
        "|---|---|---|",
        *[f"| {k} | {v:.2f} | {mem['peak_gib'][k]:.1f} |" for k, v in mem["activation_gib"].items()],
        "",
    ]
    atomic_write_bytes(out / "teacher_cost.md", "\n".join(lines).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
