"""One step of every stage at full scale under per-block FSDP, then a streamed clip: memory and speed on a GPU node.

    torchrun --nproc_per_node 8 scripts/gpu_check.py                     # Wan2.1-1.3B architecture, random weights
    torchrun --nproc_per_node 8 scripts/gpu_check.py --wan-dir DIR       # local Wan2.1-T2V-1.3B-Diffusers weights
    python scripts/gpu_check.py --tiny                                   # the same code on a CPU, stand-in sizes

Stages: the teacher (configs/teacher.yaml), SFT (configs/sft.yaml, from the teacher's export) and RL (configs/rl.yaml,
from SFT's export), each trained for `--steps` steps by Lightning with `ardrag.training.fsdp.PerBlockFSDP`: every
CausalWanTransformer of the stage (trained, EMA and frozen copies) sharded one block per unit, activation
checkpointing on the trained ones, bf16 parameters with float32 gradient reduction (configs/trainer/fsdp.yaml), and
the transformers' attention on the FlexAttention backend (`attention_backend: flex`, compiled on CUDA). Each stage
ends with its export (full state dict gathered by every rank, written by rank 0), which the next stage loads. Then
rank 0 loads the RL export and streams a clip (`ARDragPipeline.stream`: frame-wise denoising with the KV cache, the
Wan VAE's causal stream decoder) and times its first frame and its frame rate.

Weights: `--wan-dir DIR` reads DIR/vae, DIR/text_encoder (tokenizer files in it) and DIR/transformer. Without it the
transformer is the `wan2.1-1.3b` preset and the VAE diffusers' `AutoencoderKLWan()` (Wan2.1's architecture), both with
random weights, and the text encoder a one-layer UMT5 of Wan's width (d_model 4096; UMT5-XXL's own cost is not
measured then). The data is one synthetic clip (smooth moving colour blobs, 8 straight drags), 480x832, 81 frames.

`--tiny` runs the same path on a CPU (gloo, float32, the 'sdpa' attention backend: FlexAttention has no backward
on a CPU) with scripts/wan_standins.py's folders (32x32, 9 frames, 2-layer transformer) and RL groups
of 2. It writes the same table.

Output: OUT/gpu_check.md (and .json): per stage, the peak memory of each rank (torch.cuda.max_memory_allocated;
on a CPU: the process's peak RSS) and the seconds of each step; for the stream, time to first frame and frames/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = {"height": 480, "width": 832, "frames": 81}
TINY = {"height": 32, "width": 32, "frames": 9}


def _standins_module():
    spec = importlib.util.spec_from_file_location("wan_standins", ROOT / "scripts" / "wan_standins.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _wait_for(path: Path, timeout: float = 3600.0) -> None:
    """Ranks other than 0 wait for rank 0's file (written before any process group exists)."""
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"rank {_rank()}: {path} did not appear within {timeout:.0f} s")
        time.sleep(0.5)


def write_folders(work: Path, tiny: bool, wan_dir: str | None, size: dict[str, int]) -> dict[str, Any]:
    """The pipeline config (and stand-in weights) the stages start from; rank 0 writes, the others wait."""
    done = work / "folders.json"
    if _rank() != 0:
        _wait_for(done)
        return json.loads(done.read_text())
    pipe = json.loads((ROOT / "configs/pipeline/wan2.1-1.3b.json").read_text())
    pipe.update(height=size["height"], width=size["width"])
    if wan_dir is not None:
        wan = Path(wan_dir)
        for sub in ("vae", "text_encoder", "transformer"):
            if not (wan / sub / "config.json").exists():
                raise FileNotFoundError(
                    f"--wan-dir: {wan / sub} has no config.json (a diffusers Wan2.1 folder)"
                )
        pipe["codec"]["path"] = str(wan / "vae")
        pipe["text_encoder"]["path"] = str(wan / "text_encoder")
        base = str(wan / "transformer")
    else:
        st = _standins_module()
        st.write_standins(work / "wan", size["height"], size["width"])
        if not tiny:
            import torch
            from diffusers import AutoencoderKLWan

            torch.manual_seed(0)
            AutoencoderKLWan().save_pretrained(
                work / "wan" / "vae"
            )  # Wan2.1's VAE architecture, random weights
        pipe["codec"]["path"] = str(work / "wan" / "vae")
        pipe["text_encoder"].update(path=str(work / "wan" / "text_encoder"), max_length=16 if tiny else 512)
        base = str(work / "wan" / "transformer") if tiny else None
    (work / "pipeline.json").write_text(json.dumps(pipe, indent=2) + "\n")
    info = {"pipeline": str(work / "pipeline.json"), "base": base}
    done.write_text(json.dumps(info))
    return info


def synthetic_batch(size: dict[str, int], tracks: int = 8) -> dict[str, Any]:
    """One clip of smooth colour blobs moving along straight lines, with those lines as drags."""
    import torch

    t, h, w = size["frames"], size["height"], size["width"]
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    start = torch.rand(tracks, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6]) + torch.tensor(
        [w * 0.2, h * 0.2]
    )
    step = (torch.rand(tracks, 2, generator=g) - 0.5) * min(h, w) * 0.4 / max(t - 1, 1)
    colour = torch.rand(tracks, 3, generator=g) * 2 - 1
    path = start[None] + torch.arange(t).float()[:, None, None] * step[None]  # (T, N, 2) x, y
    rad = max(min(h, w) / 12, 2.0)
    video = torch.full((3, t, h, w), -0.6)
    for i in range(t):
        for n in range(tracks):
            blob = torch.exp(-((xx - path[i, n, 0]) ** 2 + (yy - path[i, n, 1]) ** 2) / (2 * rad**2))
            video[:, i] = video[:, i] * (1 - blob) + colour[n, :, None, None] * blob
    return {
        "video": video[None].clamp(-1, 1),
        "tracks": path[None],
        "visible": torch.ones(1, t, tracks, dtype=torch.bool),
        "prompt": ["a red disc moves to the left"],
        "negative_prompt": [""],
        "key": ["synthetic"],
    }


def _step_timer():
    """A Lightning callback that records the seconds of every training step."""
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self._t = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            _sync()
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _sync()
            self.steps.append(time.perf_counter() - self._t)

    return StepTimer()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )  # KiB -> GiB (process peak, not per stage)


def _gather(value: Any) -> list[Any]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out
    return [value]


def stage_module(stage: str, args: dict[str, Any], backend: str):
    """The stage's LightningModule from its full-scale config's model section with `args` merged in."""
    import yaml

    from ardrag.models.causal_wan import CausalWanTransformer
    from ardrag.training.base import module_from_run_config

    cfg = yaml.safe_load((ROOT / "configs" / f"{stage}.yaml").read_text())
    model = cfg["model"]
    for key, value in args.items():
        if isinstance(value, dict) and isinstance(model["init_args"].get(key), dict):
            model["init_args"][key] = {**model["init_args"][key], **value}
        else:
            model["init_args"][key] = value
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"model": model}, f)
    try:
        module = module_from_run_config(f.name)
    finally:
        os.unlink(f.name)
    for m in module.modules():  # trained, EMA and frozen copies alike (the export keeps the backend)
        if isinstance(m, CausalWanTransformer):
            m.attention_backend = backend
    return module


def run_stage(
    stage: str, module, batch: dict[str, Any], root: Path, tiny: bool, steps: int
) -> dict[str, Any]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from ardrag.training.fsdp import PerBlockFSDP

    if tiny:
        strategy = PerBlockFSDP(activation_checkpointing=True, process_group_backend="gloo")
        kw = {"accelerator": "cpu", "precision": "32-true"}
    else:
        strategy = PerBlockFSDP(activation_checkpointing=True, param_dtype="bfloat16", reduce_dtype="float32")
        kw = {"accelerator": "gpu", "precision": "bf16-mixed"}
    timer = _step_timer()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: processes per node
    trainer = pl.Trainer(
        devices=local,
        num_nodes=max(1, _world() // local),
        strategy=strategy,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root / stage),
        callbacks=[timer],
        **kw,
    )
    loader = DataLoader([batch] * steps, batch_size=None)
    _reset_peak()
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)  # ends with the export (every rank gathers, rank 0 writes)
    total = time.perf_counter() - t0
    _barrier()
    return {
        "stage": stage,
        "peak_gib": _gather(round(_peak_gib(), 3)),
        "step_s": [round(s, 3) for s in timer.steps],
        "fit_with_export_s": round(total, 2),
        "export": str(root / stage / "export"),
    }


def stream_clip(export: str, batch: dict[str, Any], tiny: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from ardrag.conditioning import video_to_uint8
    from ardrag.pipeline import ARDragPipeline

    pipe = ARDragPipeline.from_pretrained(export)
    if torch.cuda.is_available() and not tiny:
        pipe = pipe.to("cuda")  # float32 weights, bf16 compute under autocast
    image = video_to_uint8(batch["video"][0])[0]
    tracks = batch["tracks"][0].numpy().astype(np.float32)
    _reset_peak()
    _sync()
    t0 = time.perf_counter()
    first, n = None, 0
    with torch.autocast("cuda", torch.bfloat16, enabled=torch.cuda.is_available() and not tiny):
        for _ in pipe.stream(image, tracks, prompt=batch["prompt"][0], seed=0):
            _sync()
            n += 1
            if first is None:
                first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {
        "frames": n,
        "time_to_first_frame_s": round(first or 0.0, 3),
        "frames_per_s": round(n / total, 3),
        "total_s": round(total, 2),
        "peak_gib": round(_peak_gib(), 3),
    }


def write_table(out: Path, result: dict[str, Any]) -> Path:
    m = result["meta"]
    unit = "GiB allocated (torch.cuda.max_memory_allocated)" if m["cuda"] else "GiB peak RSS of the process"
    lines = [
        "# gpu_check",
        "",
        f"`{m['command']}` at {m['commit']}; {m['device']}, {m['world_size']} process(es); {m['size']['height']}x"
        f"{m['size']['width']}, {m['size']['frames']} frames; weights: {m['weights']}; attention: {m['attention']}; "
        f"{m['precision']}.",
        "",
        f"| stage | peak memory per rank ({unit}) | seconds per step | fit incl. export (s) |",
        "|---|---|---|---|",
    ]
    for r in result["stages"]:
        mem = ", ".join(f"{v:.2f}" for v in r["peak_gib"])
        lines.append(
            f"| {r['stage']} | {mem} | {', '.join(f'{s:.2f}' for s in r['step_s'])} | {r['fit_with_export_s']} |"
        )
    s = result["stream"]
    lines += [
        "",
        "| stream (rank 0, RL export) | frames | time to first frame (s) | frames/s | peak memory (GiB) |",
        "|---|---|---|---|---|",
        f"| Wan VAE stream decoding, KV cache | {s['frames']} | {s['time_to_first_frame_s']:.3f} | "
        f"{s['frames_per_s']:.2f} | {s['peak_gib']:.2f} |",
        "",
        "The first step of a stage includes compiling FlexAttention's kernels (CUDA); the later ones are the "
        "steady state.",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    path = out / "gpu_check.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, stand-in sizes (the CI check of this script)")
    ap.add_argument(
        "--wan-dir", help="local Wan2.1-T2V-1.3B-Diffusers folder (vae/, text_encoder/, transformer/)"
    )
    ap.add_argument(
        "--out", default="runs/gpu_check", help="folder for gpu_check.md/.json and the stage runs"
    )
    ap.add_argument("--steps", type=int, default=2, help="training steps per stage (the first compiles)")
    ap.add_argument(
        "--attention", default=None, help="attention backend (default: flex on CUDA, sdpa on a CPU)"
    )
    a = ap.parse_args(argv)
    import torch

    from ardrag.hardware import git_commit

    if a.steps < 1:
        ap.error("--steps must be >= 1")
    if not a.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device: run with --tiny on a CPU", file=sys.stderr)
        return 2
    backend = a.attention or ("sdpa" if a.tiny else "flex")
    size = TINY if a.tiny else FULL
    out = Path(a.out)
    work = out / "work"
    if _rank() == 0:
        work.mkdir(parents=True, exist_ok=True)
        (work / "folders.json").unlink(missing_ok=True)
    else:
        time.sleep(1.0)  # rank 0 clears the previous run's marker first
    torch.manual_seed(0)
    folders = write_folders(work, a.tiny, a.wan_dir, size)
    batch = synthetic_batch(size)
    teacher_args: dict[str, Any] = {
        "model": {"pipeline_config": folders["pipeline"], "base": folders["base"]}
    }
    if folders["base"] is None:
        teacher_args["model"].update(preset="wan2.1-1.3b")
    if a.tiny:
        teacher_args["sampling"] = {"num_steps": 2}
    stages = []
    m = stage_module("teacher", teacher_args, backend)
    stages.append(run_stage("teacher", m, batch, work, a.tiny, a.steps))
    del m
    m = stage_module("sft", {"teacher": stages[-1]["export"]}, backend)
    stages.append(run_stage("sft", m, batch, work, a.tiny, a.steps))
    del m
    rl_args: dict[str, Any] = {"init": stages[-1]["export"]}
    if a.tiny:
        rl_args["grpo"] = {"group_size": 2, "inner_updates": 1}
    m = stage_module("rl", rl_args, backend)
    stages.append(run_stage("rl", m, batch, work, a.tiny, a.steps))
    del m
    if _rank() != 0:
        _barrier()
        return 0
    stream = stream_clip(stages[-1]["export"], batch, a.tiny)
    cuda = torch.cuda.is_available() and not a.tiny
    result = {
        "meta": {
            "command": "scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": git_commit(),
            "device": torch.cuda.get_device_name(0) if cuda else "CPU",
            "cuda": cuda,
            "world_size": _world(),
            "size": size,
            "weights": a.wan_dir
            or ("stand-ins (scripts/wan_standins.py)" if a.tiny else "random (Wan2.1-1.3B)"),
            "attention": backend,
            "precision": "float32" if a.tiny else "bf16 parameters, float32 reduce, bf16-mixed",
        },
        "stages": stages,
        "stream": stream,
    }
    path = write_table(out, result)
    print(path.read_text())
    _barrier()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
