"""How far apart are the G rollouts of one condition, frame by frame? (What GRPO's advantages are made of.)

    python scripts/rl_group_spread.py [--config configs/toy/rl.yaml] [--batches 8] [--seed 0]

Builds the config's RL module (its initial student), draws `--batches` training batches from the config's data
(2 conditions x G rollouts each in the toy config, the training sampler: one SDE step per frame) and prints, per
latent frame, the mean reward and the median over groups of the within-group reward std, for the motion reward
and the weighted total, and the same for the reward-to-go (`grpo.credit: to_go`). Per-group normalisation
(PAPER.md) turns any spread into advantages of +-1; a spread at the tracker's sub-pixel noise is then pure noise.
Nothing is trained.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import yaml

from ardrag.training.grpo import GRPOConfig
from ardrag.training.rewards import RewardConfig
from ardrag.training.rl import RLModule, RLOptim
from datamodules import ARDragDataModule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    raise SystemExit(main())
