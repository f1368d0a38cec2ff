"""Does selectivity pay? Cost of one toy RL (GRPO) step with ONE SDE step per frame vs one where EVERY denoising
step of a frame is an SDE step (Flow-GRPO's default), same group size G and batch.

What differs between the two: the rollout does the same forwards either way (an SDE step costs what an ODE step
costs), and so do the rewards; but the update must re-score every SDE step it trains on. With one SDE step per
frame, all frames of a video are re-scored in ONE teacher-forcing pass per inner update (plus one reference pass
for the KL); with K SDE steps per frame it takes K passes each (the states of different steps cannot share a pass:
a frame appears once per pass). This script runs the real RL module's pieces on the toy shapes: a rollout
(`RLModule.rollout`), the rewards (`RLModule.rewards`), and the update with K = 1 and K = all eligible steps
re-scoring passes actually executed (forward + backward + optimizer step) on the recorded states. Repeats are
interleaved and medians reported (the CPU may be shared).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_rl_selectivity.py --init results/toy/checkpoints/sft \
        --out results/training --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from ardrag.hardware import hardware_string
from ardrag.sampling import Conditions, Denoiser
from ardrag.training.grpo import GRPOConfig, clipped_objective, gaussian_kl, group_advantages, rescore
from ardrag.training.rl import RLModule, _repeat
from ardrag.video import atomic_write_bytes


def toy_batch(data: str, batch: int, frames: int, tracks: int) -> dict:
    from datamodules import ARDragDataModule

    dm = ARDragDataModule(
        train_shards=data,
        val_shards=None,
        batch_size=batch,
        num_workers=0,
        num_frames=frames,
        max_tracks=tracks,
    )
    return next(iter(dm.train_dataloader()))


def update(module: RLModule, opt, ro, conds, adv, passes: int) -> None:
    """`inner_updates` optimizer steps, each re-scoring the rollout `passes` times (one pass per SDE step index)."""
    cfg, a = module.rollout_cfg, module.grpo.noise_level
    with torch.no_grad():
        ref = [rescore(Denoiser(module.reference, conds), ro, cfg, a)[1] for _ in range(passes)]
    for _ in range(module.grpo.inner_updates):
        opt.zero_grad(set_to_none=True)
        for k in range(passes):
            logp, means, scales = rescore(Denoiser(module.policy, conds), ro, cfg, a)
            pg, _ = clipped_objective(logp, ro.old_log_prob, adv, module.grpo.clip_range)
            loss = (pg + module.grpo.kl_weight * gaussian_kl(means, ref[k], scales).mean()) / passes
            loss.backward()
        opt.step()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", default="results/toy/checkpoints/sft", help="exported AR student")
    p.add_argument("--data", default="data/toyworld/train", help="toy-world training shards")
    p.add_argument("--config", default="configs/toy/rl.yaml", help="RL config whose batch/G/frames are used")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="results/training")
    args = p.parse_args(argv)

    import yaml

    cfg = yaml.safe_load(Path(args.config).read_text())
    margs, dargs = cfg["model"]["init_args"], cfg["data"]["init_args"]
    grpo = GRPOConfig(**margs.get("grpo", {}))
    module = RLModule(init=args.init, grpo=grpo, seed=0)
    opt = module.configure_optimizers()
    batch = toy_batch(args.data, dargs["batch_size"], dargs["num_frames"], dargs["max_tracks"])
    n_steps = module.rollout_cfg.schedule.steps
    k_all = n_steps  # Flow-GRPO's default: every denoising step stochastic (ours never picks the last one)
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"rollout": [], "reward": [], "update_1": [], f"update_{k_all}": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        x0, conds = module.conditions(batch)
        conds = Conditions(
            *(_repeat(getattr(conds, f.name), grpo.group_size) for f in dataclasses.fields(conds))
        )
        shape = (x0.shape[0] * grpo.group_size, *x0.shape[1:])
        ro, frames = module.rollout(conds, shape, g)
        t1 = time.perf_counter()
        rew = module.rewards(frames, batch, ro.old_log_prob.shape[1] * module.rollout_cfg.causal.chunk_size)
        adv = group_advantages(torch.from_numpy(rew["total"]), grpo.group_size, grpo.adv_clip)
        t2 = time.perf_counter()
        times["rollout"].append(t1 - t0)
        times["reward"].append(t2 - t1)
        for k in (1, k_all):
            t = time.perf_counter()
            update(module, opt, ro, conds, adv, k)
            times[f"update_{k}"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    one = med["rollout"] + med["reward"] + med["update_1"]
    every = med["rollout"] + med["reward"] + med[f"update_{k_all}"]
    rows = [
        {
            "sde_steps_per_frame": 1,
            "step_s": one,
            **{f"{k}_s": v for k, v in med.items() if k != f"update_{k_all}"},
        },
        {
            "sde_steps_per_frame": k_all,
            "step_s": every,
            "rollout_s": med["rollout"],
            "reward_s": med["reward"],
            "update_s": med[f"update_{k_all}"],
        },
    ]
    rows[0]["update_s"] = rows[0].pop("update_1_s")
    hw = hardware_string()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = "sde_steps_per_frame,step_s,rollout_s,reward_s,update_s"
    lines = [header] + [
        f"{r['sde_steps_per_frame']},{r['step_s']:.3f},{r['rollout_s']:.3f},{r['reward_s']:.3f},{r['update_s']:.3f}"
        for r in rows
    ]
    atomic_write_bytes(out / "rl_selectivity.csv", ("\n".join(lines) + "\n").encode())
    ratio = one / every
    md = [
        "# RL step cost: one SDE step per frame vs every step",
        "",
        f"`OMP_NUM_THREADS=1 python scripts/bench_rl_selectivity.py --init {args.init} --repeats {args.repeats}`; "
        f"{args.config}: {dargs['batch_size']} conditions x G = {grpo.group_size}, {dargs['num_frames']} frames, "
        f"{n_steps} denoising steps per frame, "
        f"{grpo.inner_updates} inner updates. Medians of {args.repeats} interleaved repeats. {hw}.",
        "",
        "| SDE steps per frame | step (s) | rollout (s) | reward (s) | update (s) |",
        "|---|---|---|---|---|",
        *[
            f"| {r['sde_steps_per_frame']} | {r['step_s']:.2f} | {r['rollout_s']:.2f} | {r['reward_s']:.2f} | "
            f"{r['update_s']:.2f} |"
            for r in rows
        ],
        "",
        f"One SDE step per frame costs {ratio:.2f} of a step where every denoising step is stochastic "
        f"({'meets' if ratio <= 0.5 else 'does not meet'} the <= 1/2 goal). The rollout and reward cost the same "
        "in both; the update re-scores each SDE step index in its own teacher-forcing pass, so its cost grows with "
        "the number of SDE steps per frame.",
    ]
    atomic_write_bytes(out / "rl_selectivity.md", ("\n".join(md) + "\n").encode())
    print(json.dumps({"ratio": ratio, **med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
