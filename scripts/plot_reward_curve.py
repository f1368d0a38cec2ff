"""Reward curve of an RL run, read from its TensorBoard logs: PNG + CSV.

    python scripts/plot_reward_curve.py RUN_DIR --out results/toy/reward_curve

RUN_DIR is the run's `trainer.default_root_dir` (every events file below it is read). Left panel: the per-step
mean of each `train/reward/*` scalar over the batch's rollouts (raw, and a moving average over `--smooth` steps);
it mostly follows which conditions a batch holds. Right panel (when the run has it): `val/reward/*`, the
`RewardProbe` callback's rewards on fixed validation conditions and noise with the deployed sampler, the curve on
which a rise is the policy's. The raw values go to OUT.csv, so the figure can be regenerated and checked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ardrag.training.tblog import read_run_scalars
from ardrag.video import atomic_write_bytes


def read_scalars(run_dir: Path, prefix: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} for every scalar tag starting with `prefix` in the run's events files.

    Later events for the same step win (a resumed run rewrites the steps after its checkpoint).
    """
    if not any(run_dir.rglob("events.out.tfevents.*")):
        raise SystemExit(f"no TensorBoard events files under {run_dir}")
    merged, _ = read_run_scalars(run_dir, prefix)
    return {
        tag: (np.array(sorted(d)), np.array([d[s] for s in sorted(d)])) for tag, d in sorted(merged.items())
    }


def moving_average(v: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(v) < 2:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v, dtype=float)
    for i in range(len(v)):
        lo = max(0, i - k + 1)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", default="runs/reward_curve", help="output prefix: writes OUT.png and OUT.csv")
    p.add_argument(
        "--prefix",
        nargs="+",
        default=["train/reward", "val/reward"],
        help="scalar tags to plot, one panel each",
    )
    p.add_argument("--smooth", type=int, default=5, help="moving-average window, steps")
    a = p.parse_args(argv)
    panels = {pre: read_scalars(a.run_dir, pre) for pre in a.prefix}
    panels = {pre: c for pre, c in panels.items() if c}
    curves = {tag: v for c in panels.values() for tag, v in c.items()}
    if not curves:
        raise SystemExit(f"no scalars starting with {a.prefix!r} under {a.run_dir}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["tag,step,value"]
    for tag, (steps, vals) in curves.items():
        lines += [f"{tag},{s},{v:.6g}" for s, v in zip(steps, vals)]
    atomic_write_bytes(out.with_suffix(".csv"), ("\n".join(lines) + "\n").encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (pre, panel) in zip(axes[0], panels.items()):
        for tag, (steps, vals) in panel.items():
            if tag.endswith("_std"):  # a spread, not a reward: in the CSV only
                continue
            if pre.startswith("val/"):  # a few probes: points joined, no smoothing
                ax.plot(steps, vals, marker="o", label=tag)
                continue
            (line,) = ax.plot(steps, moving_average(vals, a.smooth), label=f"{tag} (avg {a.smooth})")
            ax.plot(steps, vals, color=line.get_color(), alpha=0.25, lw=1)
        # Lightning logs a manual-optimization module's train/* once per batch (its step counts batches); the
        # RewardProbe logs at the trainer's global step (optimizer steps: inner_updates per batch)
        ax.set_xlabel("optimizer step" if pre.startswith("val/") else "batch of rollouts (TensorBoard step)")
        ax.set_ylabel("mean reward per frame")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        what = "fixed validation conditions and noise" if pre.startswith("val/") else "each batch's rollouts"
        ax.set_title(f"{pre}: {what}", fontsize=9)
    fig.suptitle(f"Reward during GRPO ({a.run_dir})", fontsize=9)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(out.with_suffix(".png"))
    for tag, (steps, vals) in curves.items():
        if tag.startswith("val/"):
            print(f"{tag}: " + ", ".join(f"step {int(st)} {v:.4g}" for st, v in zip(steps, vals)))
            continue
        k = max(1, min(a.smooth, len(vals) // 2))
        print(f"{tag}: first {k} steps {vals[:k].mean():.4g} -> last {k} steps {vals[-k:].mean():.4g}")
    print(f"wrote {out}.png and {out}.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
