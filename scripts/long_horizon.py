"""Long horizon: generate ~10x the KV-cache window with the rolling cache and plot error against frame index.

The paper never tests beyond its 7-frame cache. Here each case is a toy-world test clip whose drag keeps moving
for `--frames` frames: every sprite goes back and forth along its own 17-frame path (a triangle wave over the
clip's frame index), so the exact ground-truth video of that drag is known (the clip's frames in the same order)
and the speeds match what the models were trained on. Per generated frame we measure

- motion error (px, penalised: lost points held at their last position) with both instruments, LK
  (`ardrag.tracking.track_points`, the RL reward's tracker) and dense flow (`track_points_flow`, independent);
- a quality proxy: mean absolute error against the ground-truth frame (uint8 levels), and sharpness (variance of
  the Laplacian) relative to the ground-truth frame (1 = as sharp; noise pushes it up, blur down).

Usage (every figure in results/toy/long_horizon.* comes from this command on the committed checkpoints):

    python scripts/long_horizon.py --frames 81 --clips 4 --seeds 0 1 2 \
        --method "AR-Drag=pipeline:results/toy/checkpoints/rl" \
        --method "w/o Self-Rollout=pipeline:results/toy/checkpoints/sft_no_rollout" \
        --method "Warp=warp" --out results/toy/long_horizon
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from ardrag.hardware import git_commit, hardware_string, provenance
from ardrag.tracking import hold_last, track_points, track_points_flow
from ardrag.video import atomic_write_bytes
from benchmark.methods import build_method
from benchmark.suites import select_tracks
from datamodules.toy_world import ToyWorldConfig, clip_seed, render_clip

METRICS = ("err_lk", "err_flow", "cov_lk", "cov_flow", "mae", "sharpness")
LABELS = {
    "err_lk": "motion error, LK (px, penalised)",
    "err_flow": "motion error, dense flow (px, penalised)",
    "mae": "abs. error vs ground truth (levels)",
    "sharpness": "sharpness / ground truth's",
}


def ping_pong(n_src: int, n_out: int) -> np.ndarray:
    """Frame indices 0, 1, ..., n_src-1, n_src-2, ..., 0, 1, ... of length n_out (a triangle wave)."""
    period = 2 * (n_src - 1)
    k = np.arange(n_out) % period
    return np.where(k < n_src, k, period - k)


def make_case(index: int, frames: int, max_tracks: int, split_seed: int = 0) -> dict:
    """A long-horizon benchmark item from toy test clip `index` (same keys as benchmark.suites items)."""
    clip = render_clip(clip_seed(split_seed, "test", index), ToyWorldConfig())
    idx = ping_pong(len(clip.video), frames)
    video, tracks, visible = clip.video[idx], clip.tracks[idx], clip.visible[idx]
    sel = select_tracks(clip.tracks, clip.visible, max_tracks, 1.0, 0, f"long-{index}")
    return {
        "key": f"long-{index}",
        "image": video[0],
        "video": video,
        "tracks": tracks[:, sel].astype(np.float32),
        "visible": visible[:, sel],
        "prompt": clip.meta["prompt"],
        "negative_prompt": clip.meta["negative_prompt"],
        "num_frames": frames,
        "fps": clip.meta["fps"],
        "size": video.shape[1:3],
    }


def _sharpness(frame: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def per_frame(video: np.ndarray, item: dict) -> dict[str, np.ndarray]:
    """Per-frame metrics (T,) of one generated video against the item's targets and ground truth."""
    target, tvis = item["tracks"].astype(np.float64), item["visible"] & item["visible"][:1]
    out: dict[str, np.ndarray] = {}
    for name, tracker in (("lk", track_points), ("flow", track_points_flow)):
        tracked, kv = tracker(video, item["tracks"][0])
        held = hold_last(np.asarray(tracked, np.float64), kv)
        err = np.linalg.norm(held - target, axis=-1)  # (T, N)
        with np.errstate(invalid="ignore"):
            out[f"err_{name}"] = np.where(tvis.any(1), (err * tvis).sum(1) / tvis.sum(1), np.nan)
            out[f"cov_{name}"] = np.where(tvis.any(1), (kv & tvis).sum(1) / tvis.sum(1), np.nan)
    gt = item["video"]
    out["mae"] = np.abs(video.astype(np.float64) - gt).mean(axis=(1, 2, 3))
    out["sharpness"] = np.array([_sharpness(a) / max(_sharpness(b), 1e-6) for a, b in zip(video, gt)])
    return out


def _ci(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% t half-width over axis 0 (units: clips x seeds), NaN-aware."""
    from scipy.stats import t

    n = np.isfinite(values).sum(0)
    mean = np.nanmean(values, 0)
    sd = np.nanstd(values, 0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    half = np.where(n > 1, t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, half


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", action="append", required=True, help="NAME=SPEC (benchmark method spec)")
    p.add_argument("--frames", type=int, default=81, help="frames to generate (>= 10x the cache window)")
    p.add_argument("--clips", type=int, default=4, help="toy test clips (cases)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-tracks", "--max_tracks", type=int, default=8, dest="max_tracks")
    p.add_argument(
        "--cache-window",
        "--cache_window",
        type=int,
        default=7,
        dest="cache_window",
        help="drawn as a vertical line on the plot",
    )
    p.add_argument(
        "--out", default="runs/long_horizon", help="output prefix: writes OUT.csv, OUT.png, OUT.md"
    )
    a = p.parse_args(argv)
    methods = []
    for m in a.method:
        if "=" not in m:
            p.error(f"--method needs NAME=SPEC, got {m!r}")
        name, spec = m.split("=", 1)
        methods.append((name, build_method(spec)))
    cases = [make_case(i, a.frames, a.max_tracks) for i in range(a.clips)]
    rows, curves, walls = [], {}, {}
    for name, method in methods:
        seeds = [0] if method.deterministic else a.seeds
        units = {k: [] for k in METRICS}
        t0 = time.perf_counter()
        for item in cases:
            for seed in seeds:
                video = np.asarray(method.generate(item, seed))
                if video.shape[0] != a.frames:
                    raise SystemExit(f"{name}: generated {video.shape[0]} frames, expected {a.frames}")
                for k, v in per_frame(video, item).items():
                    units[k].append(v)
        walls[name] = time.perf_counter() - t0
        curves[name] = {k: _ci(np.stack(v)) for k, v in units.items()}
        for f in range(a.frames):
            rows.append(
                [name, f] + [x for k in METRICS for x in (curves[name][k][0][f], curves[name][k][1][f])]
            )
        print(f"{name}: {len(cases)} clips x {len(seeds)} seeds in {walls[name]:.1f} s", file=sys.stderr)

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = ["method", "frame"] + [f"{k}{s}" for k in METRICS for s in ("", "_ci95")]
    csv = (
        ",".join(header)
        + "\n"
        + "".join(",".join([f'"{r[0]}"', str(r[1])] + [f"{x:.6g}" for x in r[2:]]) + "\n" for r in rows)
    )
    atomic_write_bytes(out.with_suffix(".csv"), csv.encode())

    # Summary: early (frames 1..W) vs late means over frames with the same targets (the ping-pong repeats every
    # 2 (T_clip - 1) frames), so the two windows differ only in how far the model is from its start.
    w = a.cache_window
    period = 2 * (len(render_clip(clip_seed(0, "test", 0)).video) - 1)
    shift = ((a.frames - 1 - w) // period) * period
    late = slice(1 + shift, w + 1 + shift)
    lines = [
        "# Long horizon: rolling KV cache over ~10x its window",
        "",
        f"{a.frames} frames per video, {len(cases)} toy test clips (sprites ping-pong along their own paths), "
        f"seeds {a.seeds} (deterministic methods once); cache window {w} latent frames.",
        "",
        f"Cells: mean over frames 1-{w} / over frames {late.start}-{late.stop - 1} (same targets, {shift} frames later).",
        "",
        "| Method | " + " | ".join(LABELS[k] for k in LABELS) + " |",
        "|---|" + "---|" * len(LABELS),
    ]
    for name in curves:
        cells = []
        for k in LABELS:
            m = curves[name][k][0]
            cells.append(f"{np.nanmean(m[1 : w + 1]):.3g} / {np.nanmean(m[late]):.3g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Command: `python {' '.join(sys.argv)}`" if argv is None else "",
        f"Commit {git_commit()}; {hardware_string()}; Python {platform.python_version()}.",
        "Wall time per method (s): " + ", ".join(f"{k} {v:.1f}" for k, v in walls.items()) + ".",
    ]
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(
        out.with_suffix(".json"),
        json.dumps(
            {"args": vars(a), **provenance(), "hardware": hardware_string(), "wall_s": walls},
            indent=2,
        ).encode(),
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, k in zip(axes.flat, LABELS):
        for name in curves:
            m, h = curves[name][k]
            x = np.arange(a.frames)
            ax.plot(x, m, label=name)
            ax.fill_between(x, np.maximum(m - h, 1e-3 if k == "sharpness" else -np.inf), m + h, alpha=0.12)
        ax.axvline(w, color="gray", ls=":", lw=1)
        if k == "sharpness":
            ax.set_yscale("log")  # noise multiplies high-frequency energy, blur divides it
        ax.set_title(LABELS[k], fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("frame index (dotted: cache window)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(
        f"Long horizon ({a.frames} frames, rolling cache of {w}); mean and 95% CI over clips x seeds"
    )
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(out.with_suffix(".png"))
    print(f"wrote {out}.csv/.md/.json/.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
