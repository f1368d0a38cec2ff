"""Masked-attention backends on this CPU: seconds of a teacher-forcing forward + backward (the RL stage's re-scoring
pass) of a toy student with attention_backend 'dense' (one SDPA call with the dense token mask) and 'sdpa' (one
unmasked SDPA call per run of query frames over the key frames they see), and how far their outputs differ.

Runs alternate (dense, sdpa, dense, ...) so a busy CPU slows both alike; medians. Inputs are random with the toy
RL shapes (values do not change the cost); the model is the exported student given by --student.

    python scripts/bench_attention.py --student results/toy/checkpoints/sft --out results/training
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ardrag import ARDragPipeline
from ardrag.hardware import hardware_string, provenance
from ardrag.models.attention import expand_frame_mask, frame_attention, frame_plan, teacher_forcing_frame_mask
from ardrag.video import atomic_write_bytes

BACKENDS = ("dense", "sdpa")


def step_seconds(model, inputs: dict, backend: str) -> tuple[float, torch.Tensor]:
    """One forward + backward of the teacher-forcing layout with `backend`: (seconds, output)."""
    model.attention_backend = backend
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    out = model.forward_teacher_forcing(**inputs)
    out.square().mean().backward()
    return time.perf_counter() - t0, out.detach()


def attention_only(plan_mask: torch.Tensor, tpf: int, batch: int, heads: int, dim: int, seed: int):
    """The attention op alone, forward + backward: (seconds dense, seconds per-run, max abs difference)."""
    g = torch.Generator().manual_seed(seed)
    n = plan_mask.shape[0] * tpf
    qkv = [torch.randn(batch, heads, n, dim, generator=g, requires_grad=True) for _ in range(3)]
    dense_mask, plan = expand_frame_mask(plan_mask, tpf), frame_plan(plan_mask, tpf)
    res = {}
    for name, fn in (
        ("dense", lambda: F.scaled_dot_product_attention(*qkv, attn_mask=dense_mask)),
        ("sdpa", lambda: frame_attention(*qkv, plan)),
    ):
        t0 = time.perf_counter()
        out = fn()
        out.square().sum().backward()
        res[name] = (time.perf_counter() - t0, out.detach())
    return res["dense"][0], res["sdpa"][0], float((res["dense"][1] - res["sdpa"][1]).abs().max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="results/toy/checkpoints/sft", help="exported AR pipeline folder")
    ap.add_argument("--batch", type=int, default=8, help="videos (the toy RL batch: 2 conditions x G = 4)")
    ap.add_argument("--frames", type=int, nargs="+", default=[9, 17], help="latent frames per video")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/training")
    args = ap.parse_args(argv)

    pipe = ARDragPipeline.from_pretrained(args.student)
    model = pipe.transformer.float().train()
    causal = pipe.config.causal()
    c = model.config.in_channels
    h, w = pipe.config.height // pipe.codec.spatial_factor, pipe.config.width // pipe.codec.spatial_factor
    rows = []
    for f in args.frames:
        g = torch.Generator().manual_seed(args.seed)
        inputs = dict(
            clean=torch.randn(args.batch, c, f, h, w, generator=g),
            noisy=torch.randn(args.batch, c, f, h, w, generator=g),
            timestep=torch.rand(args.batch, f, generator=g) * 1000,
            encoder_hidden_states=torch.randn(args.batch, 8, model.config.text_dim, generator=g),
            causal=causal,
            cond=torch.randn(args.batch, model.config.cond_in_channels, f, h, w, generator=g),
        )
        times: dict[str, list[float]] = {b: [] for b in BACKENDS}
        outs = {}
        for b in BACKENDS:  # warm-up (plans, allocator)
            step_seconds(model, inputs, b)
        for _ in range(args.repeats):
            for b in BACKENDS:
                sec, outs[b] = step_seconds(model, inputs, b)
                times[b].append(sec)
        med = {b: statistics.median(v) for b, v in times.items()}
        # the attention op alone, at the model's heads and head size and this layout's frame mask
        heads, dim = model.config.num_attention_heads, model.config.attention_head_dim
        mask = teacher_forcing_frame_mask(f, causal)
        alone = [
            attention_only(mask, model.tokens_per_frame(h, w), args.batch, heads, dim, args.seed)
            for _ in range(args.repeats + 1)
        ][1:]  # the first is a warm-up
        rows.append(
            {
                "frames": f,
                "tokens": 2 * f * model.tokens_per_frame(h, w),
                "dense_s": med["dense"],
                "sdpa_s": med["sdpa"],
                "speedup": med["dense"] / med["sdpa"],
                "attention_only_dense_s": statistics.median(a[0] for a in alone),
                "attention_only_sdpa_s": statistics.median(a[1] for a in alone),
                "attention_only_max_abs_diff": max(a[2] for a in alone),
                "max_abs_diff": float((outs["dense"] - outs["sdpa"]).abs().max()),
                "output_std": float(outs["dense"].std()),
                "runs": times,
            }
        )
        r = rows[-1]
        print(
            f"{f} frames: dense {med['dense']:.3f} s, sdpa {med['sdpa']:.3f} s; attention alone "
            f"{r['attention_only_dense_s']:.3f} vs {r['attention_only_sdpa_s']:.3f} s",
            flush=True,
        )

    command = "python scripts/bench_attention.py " + " ".join(
        [f"--student {args.student}", f"--batch {args.batch}", "--frames", *map(str, args.frames)]
        + [f"--repeats {args.repeats}", f"--seed {args.seed}", f"--out {args.out}"]
    )
    meta = {"command": command, "hardware": hardware_string()}
    meta.update(provenance())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "attention_speed.json", json.dumps({**meta, "rows": rows}, indent=1).encode())
    lines = [
        "# Masked attention: dense token mask vs per-frame-run SDPA",
        "",
        f"command: `{command}`  ",
        f"machine: {meta['hardware']}; commit {meta['git_commit']}  ",
        f"Teacher-forcing forward + backward ([clean | noisy] layout, the RL re-scoring pass) of `{args.student}`, "
        f"batch {args.batch}, causal {causal}; median of {args.repeats} alternating runs.",
        "",
        "| latent frames | tokens per video | dense (s) | sdpa (s) | dense / sdpa | max abs output difference | output std |",
        "|---|---|---|---|---|---|---|",
    ]
    tail = [
        "",
        "The attention op alone (forward + backward of q, k, v with the model's heads and head size, the same frame "
        "mask; the layers around it are the same in both backends), median of the same number of runs after a "
        "warm-up:",
        "",
        "| latent frames | dense (s) | per-run SDPA (s) | dense / per-run | max abs difference |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['frames']} | {r['tokens']} | {r['dense_s']:.3f} | {r['sdpa_s']:.3f} | {r['speedup']:.2f} "
            f"| {r['max_abs_diff']:.1e} | {r['output_std']:.2f} |"
        )
        tail.append(
            f"| {r['frames']} | {r['attention_only_dense_s']:.3f} | {r['attention_only_sdpa_s']:.3f} "
            f"| {r['attention_only_dense_s'] / r['attention_only_sdpa_s']:.2f} | {r['attention_only_max_abs_diff']:.1e} |"
        )
    atomic_write_bytes(out / "attention_speed.md", ("\n".join(lines + tail) + "\n").encode())
    print(f"wrote {out / 'attention_speed.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
