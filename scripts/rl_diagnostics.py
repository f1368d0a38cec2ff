"""Two questions about a toy RL (GRPO) run, answered on this machine; nothing is trained.

    python scripts/rl_diagnostics.py spread [--config configs/toy/rl.yaml] [--batches 8] [--seed 0]
    python scripts/rl_diagnostics.py control RUN_DIR/checkpoints/stepXXXX.ckpt [--directions 4] [--seed 0]

``spread``: how far apart are the G rollouts of one condition, frame by frame (what GRPO's advantages are made
of)? Builds the config's RL module (its initial student), draws ``--batches`` training batches from the config's
data (2 conditions x G rollouts each in the toy config, the training sampler: one SDE step per frame) and prints,
per latent frame, the mean reward and the median over groups of the within-group reward std, for the motion reward
and the weighted total, and the same for the reward-to-go (``grpo.credit: to_go``). Per-group normalisation turns
any spread into advantages of +-1; a spread at the tracker's sub-pixel noise is then pure noise.

``control``: is a checkpoint's RewardProbe gain larger than what moving the initial student by as much in random
directions does? The run's saved config (``RUN_DIR/tb/config.yaml``) gives the initial student and the reward; the
probe is the toy config's (the first ``--conditions`` validation conditions of ``--val-shards``, noise seeds
``--seeds``, deployed sampler). Prints ``val/reward/motion`` (and quality) for the initial student, the checkpoint,
and ``--directions`` copies of the initial student moved by Gaussian perturbations scaled, tensor by tensor, to the
norm of the checkpoint's change. A rise well above the random moves' spread is the policy learning, not chaos in
the sampler.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path

import numpy as np
import torch
import yaml

from ardrag.training.base import module_from_run_config
from ardrag.training.callbacks import fixed_val_batch
from ardrag.training.grpo import GRPOConfig
from ardrag.training.rewards import RewardConfig
from ardrag.training.rl import RLModule, RLOptim
from datamodules import ARDragDataModule

SPREAD = (
    "How far apart are the G rollouts of one condition, frame by frame? (What GRPO's advantages are made of.)"
)
CONTROL = (
    "Is the checkpoint's RewardProbe gain larger than what moving the initial student by as much in random "
    "directions does?"
)


def group_spread(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rl_diagnostics.py spread", description=SPREAD)
    p.add_argument("--config", default="configs/toy/rl.yaml")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg = yaml.safe_load(open(a.config))
    m_args, d_args = cfg["model"]["init_args"], dict(cfg["data"]["init_args"])
    module = RLModule(
        init=m_args["init"],
        grpo=GRPOConfig(**m_args.get("grpo", {})),
        reward=RewardConfig(**m_args.get("reward", {})),
        optim=RLOptim(**m_args.get("optim", {})),
        seed=a.seed,
    )
    d_args.update(num_workers=0, seed=a.seed)
    dm = ARDragDataModule(**d_args)
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    gsz = module.grpo.group_size
    per: dict[str, list[np.ndarray]] = {"motion": [], "total": []}
    for b in range(a.batches):
        batch = next(batches)
        _, ro, frames = module.group_rollout(batch, torch.Generator().manual_seed(a.seed * 1000 + b))
        rew = module.group_rewards(frames, batch, ro)
        for k in per:
            per[k].append(rew[k].reshape(-1, gsz, rew[k].shape[1]))
    print(f"{a.config}: {a.batches} batches, G = {gsz}, seed {a.seed}")
    for k, groups in per.items():
        r = np.concatenate(groups)  # (groups, G, frames)
        to_go = np.flip(np.cumsum(np.flip(r, -1), -1), -1)
        print(f"{k}: mean per frame              ", np.round(r.mean((0, 1)), 3))
        print(f"{k}: group std, median per frame ", np.round(np.median(r.std(1), 0), 4))
        print(f"{k}: to-go group std, median     ", np.round(np.median(to_go.std(1), 0), 4))
    return 0


def probe_control(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rl_diagnostics.py control", description=CONTROL)
    p.add_argument("ckpt", type=Path)
    p.add_argument("--config", type=Path, help="the run's config.yaml (default RUN_DIR/tb/config.yaml)")
    p.add_argument("--val-shards", default="data/toyworld/val")
    p.add_argument("--conditions", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--directions", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    config = a.config or a.ckpt.parent.parent / "tb" / "config.yaml"
    module = module_from_run_config(config).eval()
    dm = ARDragDataModule(
        train_shards=a.val_shards,
        val_shards=a.val_shards,
        batch_size=2,
        num_workers=0,
        num_frames=a.frames,
        max_tracks=3,
        seed=0,
    )
    dm.setup("validate")
    batch = fixed_val_batch(types.SimpleNamespace(datamodule=dm), a.conditions)
    init = copy.deepcopy(module.policy.state_dict())
    state = torch.load(a.ckpt, map_location="cpu", weights_only=True)["state_dict"]
    trained = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
    if set(trained) != set(init):
        raise SystemExit(f"{a.ckpt}: policy weights do not match the run's initial student")

    def probe(weights: dict[str, torch.Tensor]) -> dict[str, float]:
        module.policy.load_state_dict(weights)
        return module.probe_rewards(batch, tuple(a.seeds))

    rows = [("initial student", probe(init)), (f"checkpoint {a.ckpt.name}", probe(trained))]
    change = {k: trained[k].float() - init[k].float() for k in init}
    norm = float(torch.sqrt(sum((d**2).sum() for d in change.values())))
    g = torch.Generator().manual_seed(a.seed)
    for i in range(a.directions):
        moved = {}
        for k, d in change.items():
            r = torch.randn(d.shape, generator=g)
            scale = d.norm() / r.norm().clamp_min(1e-12)
            moved[k] = (init[k].float() + r * scale).to(init[k].dtype)
        rows.append((f"random move {i} (same per-tensor norms)", probe(moved)))
    print(f"weight change norm {norm:.4g}; probe: {a.conditions} conditions x seeds {a.seeds}")
    print("| weights | val/reward/motion | val/reward/quality |\n|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['motion']:.4f} | {r['quality']:.4f} |")
    rand = np.array([r["motion"] for _, r in rows[2:]])
    if len(rand):
        base = rows[0][1]["motion"]
        print(
            f"checkpoint - initial: {rows[1][1]['motion'] - base:+.4f}; random moves - initial: mean "
            f"{rand.mean() - base:+.4f}, range {rand.min() - base:+.4f} .. {rand.max() - base:+.4f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"spread": group_spread, "control": probe_control}
    if not argv or argv[0] not in commands:
        print(
            "usage: rl_diagnostics.py {spread,control} ... (-h after either for its options)", file=sys.stderr
        )
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
