"""Control for an RL reward rise: is the checkpoint's RewardProbe gain larger than what moving the initial student
by as much in random directions does?

    python scripts/rl_probe_control.py RUN_DIR/checkpoints/stepXXXX.ckpt [--directions 4] [--seed 0]

The run's saved config (`RUN_DIR/tb/config.yaml`) gives the initial student and the reward; the probe is the toy
config's (the first `--conditions` validation conditions of `--val-shards`, noise seeds `--seeds`, deployed
sampler). Prints `val/reward/motion` (and quality) for the initial student, the checkpoint, and `--directions`
copies of the initial student moved by Gaussian perturbations scaled, tensor by tensor, to the norm of the
checkpoint's change. A rise well above the random moves' spread is the policy learning, not chaos in the sampler.
"""

from __future__ import annotations

import argparse
import copy
import types
from pathlib import Path

import numpy as np
import torch

from ardrag.training.base import module_from_run_config
from ardrag.training.callbacks import fixed_val_batch
from datamodules import ARDragDataModule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    raise SystemExit(main())
