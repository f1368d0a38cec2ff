"""The eval outputs: table cells (mean and 95% interval over seeds), Table 1/2, latency, walltime and meta.json."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import numpy as np

from ardrag.hardware import provenance
from ardrag.video import atomic_write_bytes
from benchmark import tables
from benchmark.eval.cache import _write_json
from benchmark.eval.config import TABLES
from benchmark.metrics.latency import hardware_string
from benchmark.metrics.motion import finalize_objmc
from benchmark.metrics.residue import ResidueParams, residue_rate


class Outputs:
    """The part of ``EvalRunner`` that turns cached results into the published files."""

    # -- outputs
    def _cells(self, name, method, results, setlevel, latency) -> dict[str, tuple]:
        per_seed: dict[str, list[float | None]] = {k: [] for k, _, _ in tables.COLUMNS}
        for seed, per_item in results[name].items():
            vals = list(per_item.values())
            for inst in ("lk", "flow"):
                parts = [v[f"objmc_{inst}"] for v in vals if f"objmc_{inst}" in v]
                if not parts:
                    continue
                sums = {k: float(sum(p[k] for p in parts)) for k in parts[0]}
                fin = finalize_objmc(sums, (1, 1))
                per_seed[f"objmc_{inst}"].append(fin["objmc"])
                per_seed[f"coverage_{inst}"].append(fin["coverage"])
                per_seed[f"objmc_{inst}_penalised"].append(fin["objmc_penalised"])
            parts = [v["residue"] for v in vals if "residue" in v]
            if parts:  # pooled over the suite's qualifying (point, frame) pairs
                per_seed["residue"].append(residue_rate({k: sum(p[k] for p in parts) for k in parts[0]}))
            for k in ("smoothness", "aesthetic"):
                xs = [v[k] for v in vals if v.get(k) is not None]
                if xs:
                    per_seed[k].append(float(np.mean(xs)))
            for k in ("fid", "fvd"):
                res = setlevel.get(name, {}).get(seed, {}).get(k)
                if res is not None:
                    per_seed[k].append(float(res["value"]))
        min_cov = float(self.metrics.get("objmc_min_coverage") or 0.0)
        for inst in ("lk", "flow"):
            # ObjMC over the few points an instrument still tracks says little about the rest: NA below the
            # stated coverage (the penalised column, which counts every point, is still reported)
            if any(c is None or not c >= min_cov for c in per_seed[f"coverage_{inst}"]):
                per_seed[f"objmc_{inst}"] = []
        cells = {k: tables.mean_ci95(v) for k, v in per_seed.items() if k != "latency_ttff"}
        if name in latency:
            # across timing runs (not seeds): the interval says how stable the timing is
            cells["latency_ttff"] = tables.mean_ci95(latency[name]["ttff_runs"])
        return cells

    def _write_outputs(
        self, rows, methods, items, results, setlevel, latency, suite, t_start
    ) -> dict[str, Any]:
        out = self.out_dir
        size = items[0]["size"]
        report = tuple(self.metrics["report_size"] or size)
        frames = items[0]["num_frames"]
        table_rows: dict[str, list[dict[str, Any]]] = {k: [] for k in TABLES}
        walltime = []
        for r in rows:
            method = methods[r["name"]]
            res = results[r["name"]]
            n_missing = sum(self.missing.get((method.spec, s), 0) for s in res)
            row = {
                "method": r["name"],
                "spec": r["spec"],
                "n_items": min((len(v) for v in res.values()), default=0),
                "n_missing": n_missing,
                "n_seeds": len(res),
                "cells": self._cells(r["name"], method, results, setlevel, latency),
            }
            for t in r["tables"]:
                table_rows[t].append(row)
            timing: dict[str, float] = {}
            for per_item in res.values():
                for v in per_item.values():
                    for k, s in v["timing"].items():
                        timing[k] = timing.get(k, 0.0) + s
            for seed_sets in setlevel.get(r["name"], {}).values():
                for k, v in seed_sets.items():
                    timing[k] = timing.get(k, 0.0) + v.get("seconds", 0.0)
            walltime.append({"method": r["name"], "videos": sum(len(v) for v in res.values()), **timing})

        notes = [
            f"Suite {suite.config.name}: N = {len(items)} items, {frames} frames, {size[0]}x{size[1]} px; "
            f"up to {suite.config.max_tracks} target tracks per item (seeded rule, seed {suite.config.seed}).",
            f"Seeds {self.cfg['seeds']}; deterministic methods (static, warp, groundtruth) run once: "
            "n_seeds = 1 and interval 0.",
            f"ObjMC in pixels of {report[0]}x{report[1]} over target-visible points on frames 1..T-1; LK is the "
            "RL reward's own tracker (coupled), flow is an independent dense-flow instrument. Coverage = "
            "fraction of target points the instrument still tracks; penalised holds lost points at their "
            "last position. Lower is better. This replaces the paper's reward-model 'motion consistency'. "
            f"ObjMC is NA when any seed's coverage is below {self.metrics.get('objmc_min_coverage') or 0:g} "
            "(too few tracked points to stand for the rest); the penalised column is still given.",
            f"Origin residue: the fraction of (target point, frame) pairs, the target over "
            f"{ResidueParams().min_move:g} x min(H, W) from its start, where the generated frame still shows its "
            f"frame-0 patch at the start (mean absolute difference <= {ResidueParams().threshold:g} levels); a "
            "copy left behind by a drag. Lower is better; ground truth ~0, a static video 1.",
            "Motion smoothness (flow-interp): VBench's formula with DIS optical-flow interpolation instead "
            "of AMT; not comparable to VBench numbers.",
            "Latency TTFF: time to the first decoded frame, warm-up excluded; interval over timing runs. "
            "See latency.md.",
            *self.notes,
        ]
        if self.metrics["aesthetic"].get("clip") is None:
            notes.append(
                "Aesthetic absent: no local CLIP + LAION head paths in the config (never reported as 0)."
            )
        for kind in ("fid", "fvd"):
            found = [v[kind] for per_seed in setlevel.values() for v in per_seed.values() if kind in v]
            if not found:
                continue
            ex = found[0]
            unit = "frames" if kind == "fid" else "clips"
            what = (
                f"every {ex.get('frame_stride', 1)}th frame of each video"
                if kind == "fid"
                else f"{ex.get('frames', '?')}-frame clips"
            )
            line = (
                f"{kind.upper()}: per seed against the suite's ground truth, over {what} "
                f"({ex.get('n_real')} real / {ex.get('n_fake')} generated {unit} per set)"
            )
            if any(r.get("small_n_warning") for r in found):
                line += "; small-N warning: fewer samples than feature dimensions, biased upward at this N"
            notes.append(line + ".")
        for key, title in TABLES.items():
            if table_rows[key]:
                tables.write_metric_table(str(out / key), table_rows[key], title, notes)
            else:  # no row asks for this table: no file (an old one would describe another run)
                for suffix in (".csv", ".md"):
                    (out / f"{key}{suffix}").unlink(missing_ok=True)

        lat_rows = []
        for r in rows:
            if r["name"] in latency:
                lt = latency[r["name"]]
                lat_rows.append(
                    {
                        "method": r["name"],
                        "spec": r["spec"],
                        "ttff_s": lt["ttff"],
                        "per_frame_s": lt["per_frame_mean"],
                        "fps": lt["fps"],
                        "total_s": lt["total"],
                        "frames": lt["frames"],
                        "peak_memory_mb": lt["peak_memory_mb"],
                        "memory_kind": lt["memory_kind"],
                        "warmup": lt["warmup"],
                        "repeats": lt["repeats"],
                        "items": lt["items"],
                        "hardware": lt["hardware"],
                    }
                )
        if latency:
            hw = next(iter(latency.values()))["hardware"]
            lat_notes = [
                f"Hardware: {hw}.",
                "TTFF includes decoding to uint8 pixels; per frame = mean gap between later frames; "
                "warm-up runs excluded; peak memory is the process RSS high-water mark on CPU.",
            ]
            tables.write_latency(str(out / "latency"), lat_rows, lat_notes)
            tables.plot_latency_vs_frame(
                str(out / "latency_vs_frame.png"),
                {r["name"]: latency[r["name"]]["per_frame_by_index"] for r in rows if r["name"] in latency},
                f"{suite.config.name}: per-frame latency ({hw[:60]})",
            )

        wt_keys = sorted({k for w in walltime for k in w if k not in ("method", "videos")})
        wt_rows = [[w["method"], w["videos"], *[w.get(k) for k in wt_keys]] for w in walltime]
        atomic_write_bytes(
            out / "walltime.csv",
            tables.csv_bytes(["method", "videos", *[f"{k}_s" for k in wt_keys]], wt_rows),
        )
        meta = {
            "command": " ".join(sys.argv),
            "config": self.cfg,
            "suite": suite.describe(),
            "n_items": len(items),
            "resolution": list(size),
            "report_resolution": list(report),
            "frames": frames,
            "seeds": self.cfg["seeds"],
            "hardware": hardware_string(),
            "versions": _versions(),
            **provenance(),
            "missing_videos": {f"{k[0]} seed{k[1]}": v for k, v in self.missing.items()},
            "walltime_s_by_method": {
                w["method"]: sum(v for k, v in w.items() if k not in ("method", "videos")) for w in walltime
            },
            "this_run_seconds": time.time() - t_start,
            # the machine may be shared: timings are only comparable at similar load
            "load_avg_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
            "new_videos_this_run": self.n_new,
            "notes": notes,
        }
        _write_json(out / "meta.json", meta)
        return {"out_dir": str(out), "n_items": len(items), "new_videos": self.n_new, "walltime": walltime}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("ardrag", "torch", "numpy", "opencv-python-headless", "torchmetrics", "scipy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "absent"
    return out
