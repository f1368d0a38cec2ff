"""Tables of the benchmark: mean and 95% interval over seeds per cell, as CSV (numbers) and Markdown (text).

Each cell is the mean over seeds of a per-seed value (a pooled or averaged metric over the suite, or a
set-level FID/FVD computed per seed), with the half-width of the 95% Student-t interval over seeds:
t_{0.975, n-1} * sd / sqrt(n). Deterministic methods are run once: their interval is 0 with n_seeds = 1.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ardrag.video import atomic_write_bytes

# (column key, Markdown header, decimals). Order is the paper's Table 1 then ours.
COLUMNS: list[tuple[str, str, int]] = [
    ("latency_ttff", "Latency TTFF (s)", 3),
    ("fid", "FID", 2),
    ("fvd", "FVD", 2),
    ("aesthetic", "Aesthetic (LAION 1-10)", 3),
    ("smoothness", "Motion smooth (flow-interp)", 4),
    ("objmc_lk", "ObjMC-LK (px)", 2),
    ("coverage_lk", "Coverage-LK", 3),
    ("objmc_lk_penalised", "ObjMC-LK penalised (px)", 2),
    ("objmc_flow", "ObjMC-flow (px)", 2),
    ("coverage_flow", "Coverage-flow", 3),
    ("objmc_flow_penalised", "ObjMC-flow penalised (px)", 2),
    ("residue", "Origin residue", 3),
]


def mean_ci95(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, 95% half-width, n) of the non-missing values; half-width 0 for n = 1, None when n = 0."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(vals)
    if n == 0:
        return None, None, 0
    mean = float(np.mean(vals))
    if n == 1:
        return mean, 0.0, 1
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1) * np.std(vals, ddof=1) / math.sqrt(n))
    return mean, half, n


def _fmt(mean: float | None, half: float | None, decimals: int) -> str:
    if mean is None:
        return "NA"
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def csv_bytes(header: list[str], rows: list[list[Any]]) -> bytes:
    """CSV text of a table: floats to 6 significant digits, None as an empty cell (NA, never 0)."""
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in row])
    return buf.getvalue().encode()


def write_metric_table(
    path_stem: str,
    rows: list[dict[str, Any]],
    title: str,
    notes: list[str],
    columns: list[tuple] | None = None,
) -> None:
    """Write ``path_stem.csv`` and ``path_stem.md`` atomically.

    Each row: ``{"method": name, "spec", "n_items", "n_missing", "n_seeds", "cells": {key: (mean, half, n)}}``.
    Columns with no value in any row are dropped from the Markdown (and listed in a note); the CSV keeps them
    empty, so absent metrics read as NA, never 0.
    """
    columns = columns or COLUMNS
    header = ["method", "spec", "n_items", "n_missing", "n_seeds"]
    for key, _, _ in columns:
        header += [f"{key}_mean", f"{key}_ci95", f"{key}_n"]
    csv_rows = []
    for r in rows:
        line = [r["method"], r["spec"], r["n_items"], r["n_missing"], r["n_seeds"]]
        for key, _, _ in columns:
            mean, half, n = r["cells"].get(key, (None, None, 0))
            line += [mean, half, n]
        csv_rows.append(line)
    atomic_write_bytes(f"{path_stem}.csv", csv_bytes(header, csv_rows))

    present = [c for c in columns if any(r["cells"].get(c[0], (None,))[0] is not None for r in rows)]
    absent = [c[1] for c in columns if c not in present]
    heads = ["Method", "N", "seeds", *(c[1] for c in present)]
    md = [f"# {title}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [_fmt(*r["cells"].get(k, (None, None, 0))[:2], d) for k, _, d in present]
        n_txt = f"{r['n_items']}" + (f" ({r['n_missing']} missing)" if r["n_missing"] else "")
        md.append("| " + " | ".join([r["method"], n_txt, str(r["n_seeds"]), *cells]) + " |")
    md += ["", "Cells: mean ± half-width of the 95% t-interval over seeds."]
    md += [f"- {n}" for n in notes]
    if absent:
        md.append(f"- Absent (not computed, not zero): {', '.join(absent)}.")
    atomic_write_bytes(f"{path_stem}.md", ("\n".join(md) + "\n").encode())


def write_latency(path_stem: str, rows: list[dict[str, Any]], notes: list[str]) -> None:
    """``latency.csv``/``.md``: one row per generating method (values from ``measure_latency``)."""
    header = [
        "method",
        "spec",
        "ttff_s",
        "per_frame_s",
        "fps",
        "total_s",
        "frames",
        "peak_memory_mb",
        "memory_kind",
        "warmup",
        "repeats",
        "items",
        "hardware",
    ]
    csv_rows = [[r.get(k) for k in header] for r in rows]
    atomic_write_bytes(f"{path_stem}.csv", csv_bytes(header, csv_rows))
    md = [
        "# Latency",
        "",
        "| Method | TTFF (s) | per frame (s) | FPS | total (s) | frames | peak mem (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['method']} | {r['ttff_s']:.4f} | {r['per_frame_s']:.4f} | {r['fps']:.2f} | {r['total_s']:.4f} "
            f"| {r['frames']} | {r['peak_memory_mb']:.0f} |"
        )
    md += [""] + [f"- {n}" for n in notes]
    atomic_write_bytes(f"{path_stem}.md", ("\n".join(md) + "\n").encode())


def plot_latency_vs_frame(path: str, curves: dict[str, list[float]], title: str) -> None:
    """PNG of per-frame latency (s) against frame index, one line per method (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, ys in curves.items():
        ax.plot(range(len(ys)), ys, marker="o", ms=3, label=name)
    ax.set_xlabel("frame index")
    ax.set_ylabel("latency of the frame (s)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
