"""Full-scale SFT memory budget per GPU: three Wan2.1-1.3B models (student, critic, teacher) + EMA, optimizer
states, and the activations of a 21-latent-frame Self-Rollout step, under FSDP on 8 x 80 GB.

Method (written into the result):
  - parameter counts: the `wan2.1-1.3b` preset built on the meta device (no weights, no memory);
  - static memory: FSDP full sharding over the world size, fp32 master weights, fp32 grads, AdamW's two fp32
    states (torch allocates exp_avg even with beta1 = 0), fp32 EMA, bf16 frozen teacher, plus the unsharded bf16
    copies of the blocks FSDP holds at once (the running block and one prefetched);
  - activations: bytes of the tensors autograd saves for backward (saved_tensors_hooks, parameters excluded),
    MEASURED on this CPU in bf16 for models of the real width (dim 1536, ffn 8960, 12 heads, 512 text tokens
    of dim 4096) with 1 and 2 blocks (the difference is one block, the rest embeddings and output head) at two
    small token counts per frame, fitted linearly in the token count
    (attention runs without a dense mask here, as FlexAttention/flash do on CUDA: no tokens^2 term) and scaled
    to 1560 tokens per latent frame (480x832 -> 60x104 latents -> 30x52 patches) and 30 layers. KV cache and
    checkpointed block inputs are exact products of shapes.

    .venv/bin/python scripts/bench_sft_memory.py --out results/training
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ardrag.hardware import hardware_string
from ardrag.models import CausalConfig, CausalWanTransformer, preset_config
from ardrag.video import atomic_write_bytes

GiB = 2**30
PRESET = "wan2.1-1.3b"
COND = 2 * 16 + 1  # trajectory + reference latents + mask (Wan VAE: 16 channels)


class SavedBytes:
    """Sum of the bytes autograd saves for backward, parameters (and views of them) excluded."""

    def __init__(self, params):
        self.params = {id(p) for p in params}
        self.total = 0

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def _pack(self, t):
        base = t._base if t._base is not None else t
        if id(t) not in self.params and id(base) not in self.params:
            self.total += t.numel() * t.element_size()
        return t


def real_width_model(layers: int) -> CausalWanTransformer:
    torch.manual_seed(0)
    cfg = preset_config(PRESET, cond_in_channels=COND, num_layers=layers)
    return CausalWanTransformer(**cfg).to(torch.bfloat16)


def measure_chunk(model, tpf_hw: tuple[int, int], cached_frames: int, chunk: int) -> int:
    """Saved bytes of one chunk's exit forward attending to `cached_frames` cached frames (the replay route)."""
    h, w = 2 * tpf_hw[0], 2 * tpf_hw[1]
    ctx = torch.randn(1, 512, 4096)
    causal = CausalConfig(chunk_size=chunk, cache_frames=max(cached_frames, 1))
    cache = model.new_cache(causal, h, w)
    with torch.no_grad():
        for f in range(0, cached_frames, chunk):
            x = torch.randn(1, 16, chunk, h, w)
            model.forward_cached(
                x, torch.zeros(1, chunk), ctx, cache, f, cond=torch.randn(1, COND, chunk, h, w), write=True
            )
    x = torch.randn(1, 16, chunk, h, w)
    start = cache.next_frame
    with SavedBytes(model.parameters()) as sb:
        model.forward_cached(
            x, torch.full((1, chunk), 500.0), ctx, cache, start, cond=torch.randn(1, COND, chunk, h, w)
        )
    return sb.total


def measure_full(model, tpf_hw: tuple[int, int], frames: int) -> int:
    """Saved bytes of a bidirectional forward over `frames` frames (one block, no checkpointing)."""
    h, w = 2 * tpf_hw[0], 2 * tpf_hw[1]
    x = torch.randn(1, 16, frames, h, w)
    with SavedBytes(model.parameters()) as sb:
        model(
            x,
            torch.full((1, frames), 500.0),
            torch.randn(1, 512, 4096),
            cond=torch.randn(1, COND, frames, h, w),
        )
    return sb.total


def linear_fit(x1: int, y1: int, x2: int, y2: int):
    b = (y2 - y1) / (x2 - x1)
    return y1 - b * x1, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/training")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--latent-frames", type=int, default=21)
    ap.add_argument("--tokens-hw", type=int, nargs=2, default=[30, 52], help="patch grid per latent frame")
    ap.add_argument("--cache-frames", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    # 1. parameters, from the meta device
    with torch.device("meta"):
        meta = CausalWanTransformer(**preset_config(PRESET, cond_in_channels=COND))
    p_total = sum(p.numel() for p in meta.parameters())
    p_block = sum(p.numel() for p in meta.blocks[0].parameters())
    n_layers = len(meta.blocks)
    world = args.gpus

    # 2. static memory per GPU under full sharding
    static = {
        "student fp32 params": 4 * p_total / world,
        "student fp32 grads": 4 * p_total / world,
        "student AdamW states (2 x fp32)": 8 * p_total / world,
        "critic fp32 params": 4 * p_total / world,
        "critic fp32 grads": 4 * p_total / world,
        "critic AdamW states (2 x fp32)": 8 * p_total / world,
        "student EMA fp32": 4 * p_total / world,
        "teacher bf16 (frozen)": 2 * p_total / world,
        "unsharded bf16 blocks in flight (2 blocks)": 2 * 2 * p_block,
    }

    # 3. activations: measured at the real width with 1 and 2 blocks (difference = one block, rest = embeddings and
    # output head) at two token counts per frame, linear in the token count, then scaled to the full shape
    models = {n: real_width_model(n) for n in (1, 2)}
    small = [(2, 4), (4, 4)]  # patch grids (8, 16 tokens per frame)
    tpf_small = [a * b for a, b in small]
    tpf = args.tokens_hw[0] * args.tokens_hw[1]
    f, d = args.latent_frames, models[1].inner_dim
    measured = {}

    def scaled(measure) -> tuple[float, float]:
        """(bytes of one block, bytes outside the blocks) at the full token count."""
        m = {(n, t): measure(models[n], hw) for n in (1, 2) for t, hw in zip(tpf_small, small)}
        measured[measure.__name__] = {f"{n} blocks, {t} tokens/frame": v for (n, t), v in m.items()}
        blk = [m[2, t] - m[1, t] for t in tpf_small]
        rest = [m[1, t] - b for t, b in zip(tpf_small, blk)]
        a_b, b_b = linear_fit(tpf_small[0], blk[0], tpf_small[1], blk[1])
        a_r, b_r = linear_fit(tpf_small[0], rest[0], tpf_small[1], rest[1])
        return a_b + b_b * tpf, a_r + b_r * tpf

    def chunk_exit_forward(model, hw):
        return measure_chunk(model, hw, args.cache_frames, 1)

    def full_forward(model, hw):
        return measure_full(model, hw, f)

    blk_c, rest_c = scaled(chunk_exit_forward)
    blk_f, rest_f = scaled(full_forward)
    chunk_graph = n_layers * blk_c + rest_c  # one chunk's exit forward, all layers
    block_full = blk_f + rest_f  # one block over all F frames (recomputed inside checkpointing) + head
    kv_cache = 2 * n_layers * (args.cache_frames + 1) * tpf * d * 2  # K and V, bf16, window + current chunk
    ckpt_inputs = n_layers * f * tpf * d * 2  # one bf16 block input per layer
    routes = {
        "generator, replay route (default): KV cache + one chunk graph": kv_cache + chunk_graph,
        "generator, in-graph route (all 21 chunk graphs alive)": kv_cache + f * chunk_graph,
        "generator, teacher-forcing route (checkpointed, 2F frames)": 2 * ckpt_inputs + 2 * block_full,
        "critic step (bidirectional, checkpointed)": ckpt_inputs + block_full,
        "critic step without checkpointing": n_layers * blk_f + rest_f,
    }
    static_total = sum(static.values())
    rows = {k: v / GiB for k, v in static.items()}
    result = {
        "method": __doc__.split("Method (written into the result):")[1].split(".venv")[0].strip(),
        "hardware": hardware_string(),
        "parameters": p_total,
        "parameters_per_block": p_block,
        "gpus": world,
        "latent_frames": f,
        "tokens_per_frame": tpf,
        "measured_saved_bytes": measured,
        "static_gib": rows,
        "static_total_gib": static_total / GiB,
        "activation_gib": {k: v / GiB for k, v in routes.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "sft_memory.json", (json.dumps(result, indent=2) + "\n").encode())
    lines = [
        "# SFT memory budget per GPU (full scale: Wan2.1 1.3B student + critic + teacher, FSDP)",
        "",
        "Command: `.venv/bin/python scripts/bench_sft_memory.py --out results/training`",
        "",
        f"Setting: {world} GPUs x {args.gpu_gb:.0f} GB, batch 1 video per GPU, {f} latent frames x {tpf} tokens "
        f"(480x832, 81 frames), cache window {args.cache_frames} frames, bf16 compute. "
        f"Parameters (meta device): {p_total:,} per model ({p_block:,} per block, {n_layers} blocks).",
        "",
        f"Method: {result['method']}",
        "",
        f"Measured on: {result['hardware']}.",
        "",
        "| static (per GPU) | GiB |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in rows.items()],
        f"| **total static** | **{static_total / GiB:.2f}** |",
        "",
        "| activations of one step (per GPU) | GiB | peak = static + this |",
        "|---|---|---|",
        *[f"| {k} | {v / GiB:.2f} | {(static_total + v) / GiB:.1f} |" for k, v in routes.items()],
        "",
        "Plan: FSDP full shard of all three models (target: `fully_shard` per transformer block, then the root; "
        "configs/trainer/fsdp.yaml today shards the whole module as one unit, which gathers student, critic, "
        "teacher and EMA at once in bf16, +~11 GiB, still inside the budget), bf16 compute with fp32 master weights, activation "
        "checkpointing per block for the critic step (`activation_checkpointing: true`); the teacher/critic DMD "
        "forwards run without grad; the generator uses the replay route (one chunk graph alive, never "
        "checkpointed). The in-graph route is what "
        "`iter_rollout` with grad enabled costs; the teacher-forcing route is the `grad_through_context` option. "
        "No-grad DMD forwards of teacher (CFG: batch 2) and critic keep only one layer's transient activations.",
        "",
    ]
    atomic_write_bytes(out / "sft_memory.md", "\n".join(lines).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
