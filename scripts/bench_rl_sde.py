"""Does the RL stage's stochastic step keep its rollouts on the deployed sampler's path?

For an exported AR student, on toy validation clips (the RL config's frames and tracks), rolls out every clip with
the deployed sampler (all steps ODE) and with one stochastic step per frame at step n (every frame's step n), for
each SDE form (`ardrag.sampling.sde_step`: 'flow_grpo', 'cps'), and scores the videos with the RL reward
(`ardrag.training.rewards.compute_rewards`, the config's reward terms). Reports the paired difference of the mean
motion and quality reward against the ODE rollout of the same clip and noise, with a 95% interval over
(clip, seed) pairs. A form whose rollouts score like the ODE ones trains the policy on the states it meets when
deployed. The last step (to sigma 0) uses `grpo.last_step_std` for both forms: its row is the cost of the noise
left in the clean frame.

    python scripts/bench_rl_sde.py --checkpoint results/toy/checkpoints/sft --clips 16 --seeds 0 1 2 \\
        --out results/training/rl_sde
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
import yaml

from ardrag import ARDragPipeline
from ardrag.hardware import git_commit, hardware_string
from ardrag.sampling import Denoiser, iter_rollout, randn
from ardrag.training.rewards import RewardConfig, compute_rewards
from ardrag.video import atomic_write_bytes
from benchmark.suites import Suite


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="results/toy/checkpoints/sft")
    ap.add_argument(
        "--config", default="configs/toy/rl.yaml", help="RL config: reward terms, noise level, frames"
    )
    ap.add_argument("--suite", default="data/toyworld/val")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="results/training/rl_sde")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = yaml.safe_load(Path(args.config).read_text())
    grpo = cfg["model"]["init_args"].get("grpo", {})
    data = cfg["data"]["init_args"]
    reward_cfg = RewardConfig(**cfg["model"]["init_args"].get("reward", {}))
    a = float(grpo.get("noise_level", 0.7))
    last_std = float(grpo.get("last_step_std", 0.02))
    pipe = ARDragPipeline.from_pretrained(args.checkpoint)
    pipe.transformer.float()
    suite = Suite(
        {
            "name": "val",
            "path": args.suite,
            "max_items": args.clips,
            "max_tracks": int(data.get("max_tracks", 3)),
            "num_frames": int(data.get("num_frames", 9)),
            "min_motion": 1.0,
            "seed": 0,
        }
    )
    items = suite.items()
    n_steps = pipe.config.schedule().steps
    variants = [("ODE (deployed)", None, None)] + [
        (f"{kind}, step {n}", kind, n) for kind in ("flow_grpo", "cps") for n in range(n_steps)
    ]
    scores: dict[str, list[tuple[float, float]]] = {v[0]: [] for v in variants}
    for it in items:
        prep = pipe._prepare(it["image"], it["tracks"], it["visible"], it.get("prompt", ""), None, 0)
        tracks = it["tracks"][None] * np.array(
            [pipe.width / it["size"][1], pipe.height / it["size"][0]], np.float32
        )
        for seed in args.seeds:
            noise = randn(prep.noise.shape, torch.Generator().manual_seed(seed), prep.noise.device)
            f = noise.shape[2]
            for name, kind, n in variants:
                roll = dataclasses.replace(
                    pipe.config.rollout(), noise_level=a, sde_type=kind or "flow_grpo", last_step_std=last_std
                )
                with torch.no_grad():
                    chunks = list(
                        iter_rollout(
                            Denoiser(pipe.transformer, prep.conditions),
                            noise,
                            roll,
                            sde_steps=None if kind is None else [n] * f,
                            generator=torch.Generator().manual_seed(1000 + seed),
                        )
                    )
                    video = pipe.codec.decode(torch.cat([c.clean for c in chunks], 2))
                frames = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
                r = compute_rewards(reward_cfg, frames, tracks, it["visible"][None])
                scores[name].append((float(r["motion"].mean()), float(r["quality"].mean())))
    base = np.array(scores["ODE (deployed)"])
    rows = []
    for name, _, _ in variants:
        s = np.array(scores[name])
        d = s - base
        half = 1.96 * d.std(0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.zeros(2)
        rows.append((name, s[:, 0].mean(), d[:, 0].mean(), half[0], s[:, 1].mean(), d[:, 1].mean(), half[1]))
    lines = [
        "# RL rollouts against the deployed sampler",
        "",
        f"`python scripts/bench_rl_sde.py --checkpoint {args.checkpoint} --clips {args.clips} --seeds "
        f"{' '.join(map(str, args.seeds))} --out {args.out}` (noise level a = {a}, last_step_std = {last_std}; "
        f"{len(items)} validation clips x {len(args.seeds)} seeds, {suite.config.num_frames} frames, up to "
        f"{suite.config.max_tracks} drags; commit {git_commit()}, {hardware_string()}).",
        "",
        "One stochastic step per frame at step n of every frame, the rest ODE; difference to the ODE rollout of the "
        "same clip and noise, mean and 95% interval over (clip, seed) pairs. The step to sigma 0 uses "
        "last_step_std in both forms.",
        "",
        "| rollout | motion reward | vs ODE | quality reward | vs ODE |",
        "|---|---|---|---|---|",
    ]
    for name, m, dm, hm, q, dq, hq in rows:
        lines.append(f"| {name} | {m:.4f} | {dm:+.4f} ± {hm:.4f} | {q:.4f} | {dq:+.4f} ± {hq:.4f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
