"""``ardrag-eval --config configs/eval/SUITE.yaml``: run methods on a suite, cache per-video results, write tables.

For every method row x seed x suite item the runner generates (or reads) a video, computes the per-video
metrics (ObjMC with the LK tracker and with dense flow, motion smoothness (flow-interp), aesthetic when
weights are given) and caches both under ``cache_dir/<method hash>/seed<k>/``; an interrupted run resumes
from there. Set-level FID/FVD are computed per seed against the suite's ground-truth videos. Latency is
measured on generating methods (warm-up excluded). Outputs: ``table1.{csv,md}``, ``table2.{csv,md}`` (a
table no method row asks for is not written), ``latency.{csv,md}``, ``latency_vs_frame.png``, ``walltime.csv``
and ``meta.json``, in ``<cache_dir>/results/`` (untracked) by default; ``--publish`` writes them to the
config's ``out_dir`` (the committed ``results/<suite>/``), ``--out-dir DIR`` anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ardrag.hardware import provenance
from ardrag.video import atomic_write_bytes
from benchmark import tables
from benchmark.methods import Method, MissingVideo, build_method, folder_fingerprint, method_key
from benchmark.metrics.aesthetic import aesthetic_score, load_aesthetic
from benchmark.metrics.latency import hardware_string, measure_latency
from benchmark.metrics.motion import finalize_objmc, motion_sums
from benchmark.metrics.smoothness import motion_smoothness
from benchmark.suites import Suite, SuiteConfig

log = logging.getLogger("ardrag.eval")

DEFAULT_METRICS: dict[str, Any] = {
    "objmc": True,
    "objmc_flow": True,
    "objmc_min_coverage": 0.5,
    "report_size": None,
    "smoothness": True,
    "aesthetic": {"clip": None, "head": None, "frame_stride": 4},
    "fid": {"enabled": True},
    "fvd": {"enabled": True},
    "latency": {"enabled": True, "items": 2, "warmup": 1, "repeats": 3, "device": "cpu"},
}
MIN_SEEDS = 3


class ConfigError(ValueError):
    """The eval config is malformed; the message says which field."""


class BudgetExhausted(RuntimeError):
    """``max_new`` videos were generated: stop here; re-running resumes from the cache."""


# ------------------------------------------------------------------------------------------------------------
# Config


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate an eval YAML config; defaults filled in (see ``configs/eval/toy.yaml``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"eval config {path} does not exist")
    cfg = yaml.safe_load(path.read_text()) or {}
    return normalise_config(cfg)


def normalise_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check the config dict; raises ``ConfigError`` with a one-line reason."""
    if not isinstance(cfg.get("suite"), dict) or "name" not in cfg["suite"] or "path" not in cfg["suite"]:
        raise ConfigError("eval config needs suite: {name: ..., path: SHARD_FOLDER}")
    try:
        suite = SuiteConfig(**cfg["suite"])
    except TypeError as e:
        raise ConfigError(f"suite: {e}") from None
    seeds = cfg.get("seeds", [0, 1, 2])
    if (
        not isinstance(seeds, list)
        or not all(isinstance(s, int) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError("seeds must be a list of distinct integers")
    if len(seeds) < MIN_SEEDS and not cfg.get("allow_few_seeds", False):
        raise ConfigError(f"seeds: give at least {MIN_SEEDS} seeds for error bars (got {len(seeds)})")
    methods = cfg.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ConfigError("methods must be a non-empty list of {name, spec, tables}")
    names = set()
    rows = []
    for i, m in enumerate(methods):
        if not isinstance(m, dict) or "spec" not in m:
            raise ConfigError(
                f"methods[{i}] needs a 'spec' (static, warp, groundtruth, videos:DIR, pipeline:DIR)"
            )
        unknown = set(m) - {"name", "spec", "tables", "options"}
        if unknown:  # e.g. an unquoted YAML name with a comma: {name: A (b, c), ...} makes " c)" a key
            raise ConfigError(
                f"methods[{i}]: unknown keys {sorted(map(str, unknown))} (quote names that contain commas)"
            )
        row = {"name": m.get("name", m["spec"]), "spec": m["spec"], "tables": m.get("tables", ["table1"])}
        row["options"] = m.get("options", {}) or {}
        bad = set(row["tables"]) - {"table1", "table2"}
        if bad:
            raise ConfigError(f"methods[{i}].tables: unknown {sorted(bad)}; use table1 and/or table2")
        if row["name"] in names:
            raise ConfigError(f"methods: duplicate name {row['name']!r}")
        names.add(row["name"])
        rows.append(row)
    metrics = _merge(DEFAULT_METRICS, cfg.get("metrics", {}) or {})
    return {
        "suite": asdict(suite),
        "seeds": seeds,
        "allow_few_seeds": bool(cfg.get("allow_few_seeds", False)),
        "methods": rows,
        "metrics": metrics,
        "out_dir": cfg.get("out_dir", f"results/{suite.name}"),
        "cache_dir": cfg.get("cache_dir", f"runs/eval/{suite.name}"),
    }


# ------------------------------------------------------------------------------------------------------------
# Cache


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode()
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _save_video(path: Path, video: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, video=video)  # lossless: set-level metrics after a resume see the same pixels
    atomic_write_bytes(path, buf.getvalue())


def _load_video(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z["video"]


# Modules whose code defines the metric values: a change to any of them invalidates cached metric results
# (e.g. a tracker fix must not leave old ObjMC numbers in the cache).
PER_VIDEO_CODE = (
    "ardrag.tracking",
    "benchmark.metrics.motion",
    "benchmark.metrics.smoothness",
    "benchmark.metrics.aesthetic",
)
SET_LEVEL_CODE = {
    "fid": ("benchmark.metrics.fid", "benchmark.metrics.frechet"),
    "fvd": (
        "benchmark.metrics.fvd",
        "benchmark.metrics.i3d",
        "benchmark.metrics.frechet",
        "benchmark.metrics.fid",
    ),
}


SET_LEVEL_RECORD_VERSION = 2  # bump when the fields the runner records with FID/FVD results change


def code_fingerprint(modules: tuple[str, ...]) -> str:
    """Hash of the source files of ``modules`` (found without importing them); missing modules hash as absent."""
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except (ModuleNotFoundError, ValueError):  # ValueError: an in-memory module without a spec
            spec = None
        origin = spec.origin if spec is not None else None
        h.update(name.encode() + b"\0")
        h.update(Path(origin).read_bytes() if origin and Path(origin).is_file() else b"absent")
    return h.hexdigest()[:16]


def _per_video_metric_config(metrics: dict[str, Any]) -> dict[str, Any]:
    cfg = {k: metrics[k] for k in ("objmc", "objmc_flow", "report_size", "smoothness", "aesthetic")}
    cfg["code"] = code_fingerprint(PER_VIDEO_CODE)
    return cfg


# ------------------------------------------------------------------------------------------------------------
# Per-video metrics


def per_video_metrics(
    video: np.ndarray, item: dict[str, Any], metrics: dict[str, Any], scorer: Any
) -> dict[str, Any]:
    """All per-video metrics of one generated video; pooled sums for ObjMC, seconds spent per metric."""
    report = tuple(metrics["report_size"] or item["size"])
    out: dict[str, Any] = {"frames": int(video.shape[0]), "resolution": list(video.shape[1:3]), "timing": {}}
    for name, instrument in (("objmc_lk", "lk"), ("objmc_flow", "flow")):
        if metrics["objmc" if instrument == "lk" else "objmc_flow"]:
            t0 = time.perf_counter()
            out[name] = motion_sums(video, item["tracks"], item["visible"], instrument, item["size"], report)
            out["timing"][name] = time.perf_counter() - t0
    if metrics["smoothness"]:
        t0 = time.perf_counter()
        out["smoothness"] = motion_smoothness(video)["value"]
        out["timing"]["smoothness"] = time.perf_counter() - t0
    if scorer is not None:
        t0 = time.perf_counter()
        out["aesthetic"] = aesthetic_score(video, scorer, metrics["aesthetic"].get("frame_stride", 1))[
            "value"
        ]
        out["timing"]["aesthetic"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------------------------
# Set-level metrics (FID/FVD, helper fidfvd's functional cores)


_FEATURE_FNS = {
    "fid": ("inception_features", "fid_from_features"),
    "fvd": ("i3d_features", "fvd_from_features"),
}


def _match_sets(real: list[np.ndarray], fake: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack both sets as (B, T, H, W, 3): fake videos resized to the real size, both trimmed to one length."""
    import cv2

    h, w = real[0].shape[1:3]
    fake = [
        v
        if v.shape[1:3] == (h, w)
        else np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in v])
        for v in fake
    ]
    t = min(min(len(v) for v in real), min(len(v) for v in fake))
    return np.stack([v[:t] for v in real]), np.stack([v[:t] for v in fake])


def set_level_metric(
    kind: str,
    real: np.ndarray,
    fake: np.ndarray,
    options: dict[str, Any],
    real_features: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """FID (every frame) or FVD (clips) of uint8 (B, T, H, W, 3) ``fake`` against ``real``.

    Uses helper fidfvd's feature functions when available, so the real set's features (returned, and reusable
    via ``real_features``) are computed once per suite rather than once per method and seed; otherwise the
    contract's ``compute_fid``/``compute_fvd``. Raises ImportError when the metric module is missing.
    """
    import importlib

    mod = importlib.import_module(f"benchmark.metrics.{kind}")
    opts = {k: v for k, v in options.items() if k not in ("enabled", "frame_stride")}
    stride = int(options.get("frame_stride", 1))
    if kind == "fid" and stride > 1:  # FID on every stride-th frame: CPU Inception costs ~0.1-1 s per frame
        real, fake = real[:, ::stride], fake[:, ::stride]
    feat_name, fin_name = _FEATURE_FNS[kind]
    feat_fn, fin_fn = getattr(mod, feat_name, None), getattr(mod, fin_name, None)
    if feat_fn is None or fin_fn is None:
        fn = getattr(mod, f"compute_{kind}")
        if kind == "fid":  # FID is over frames: (B * T, H, W, 3)
            real, fake = real.reshape(-1, *real.shape[2:]), fake.reshape(-1, *fake.shape[2:])
        return fn(real, fake, **opts), None
    method = opts.pop("method", "eigh")
    if real_features is None:
        real_features = feat_fn(real, **opts)
    fake_features = feat_fn(fake, **opts)
    record = {
        "resolution": list(fake.shape[2:4]),
        "n_videos": int(len(fake)),
        "source_frames": int(fake.shape[1]),
    }
    if kind == "fid":
        record.update(frames=int(fake.shape[1]), frame_stride=stride)
    else:  # FVD sees fixed-length clips, not whole videos
        record["frames"] = int(opts.get("clip_frames", getattr(mod, "CLIP_FRAMES", fake.shape[1])))
    return fin_fn(real_features, fake_features, method=method, **record), real_features


# ------------------------------------------------------------------------------------------------------------
# The run


class EvalRunner:
    """One evaluation: ``run()`` fills the cache (resuming) and writes the tables."""

    def __init__(
        self,
        config: dict[str, Any],
        max_new: int | None = None,
        progress: bool = True,
        only: list[str] | None = None,
    ) -> None:
        self.cfg = config
        self.metrics = config["metrics"]
        self.out_dir = Path(config["out_dir"])
        self.cache_dir = Path(config["cache_dir"])
        self.max_new = max_new
        self.progress = progress
        self.only = only
        self.n_new = 0
        self.notes: list[str] = []
        self.missing: dict[tuple[str, int], int] = {}
        self._suite_fingerprint: str | None = None

    # -- helpers
    def _rows(self) -> list[dict[str, Any]]:
        rows = self.cfg["methods"]
        if self.only:
            unknown = set(self.only) - {r["name"] for r in rows}
            if unknown:
                raise ConfigError(f"--methods: not in the config: {sorted(unknown)}")
            rows = [r for r in rows if r["name"] in self.only]
        return rows

    def _seeds(self, method: Method) -> list[int]:
        return self.cfg["seeds"][:1] if method.deterministic else list(self.cfg["seeds"])

    def _method_dir(self, method: Method) -> Path:
        # the suite's bytes too: re-prepared shards (e.g. after a tracker fix) must not reuse old metrics
        if self._suite_fingerprint is None:
            self._suite_fingerprint = folder_fingerprint(self.cfg["suite"]["path"])
        return self.cache_dir / method_key(
            method, {"suite": self.cfg["suite"], "suite_data": self._suite_fingerprint}
        )

    def run(self) -> dict[str, Any]:
        """Evaluate every method row; returns a summary. Raises ``BudgetExhausted`` when ``max_new`` is hit."""
        from tqdm import tqdm

        t_start = time.time()
        rows = self._rows()
        methods = {}
        for r in rows:
            try:
                methods[r["name"]] = build_method(r["spec"], r["options"])
            except (ValueError, TypeError) as e:
                raise ConfigError(f"method {r['name']!r}: {e}") from e
        suite = Suite(SuiteConfig(**self.cfg["suite"]))
        items = suite.items()
        if not items:
            raise ConfigError(
                f"suite {suite.config.name}: no usable items in {suite.config.path} (skipped: {suite.describe()})"
            )
        scorer = load_aesthetic(self.metrics["aesthetic"])
        pv_cfg = _per_video_metric_config(self.metrics)
        pv_key = _hash(pv_cfg)
        # one bar over every phase: a step is a video, an FID/FVD set, or a latency item
        n_videos = sum(len(self._seeds(methods[r["name"]])) * len(items) for r in rows)
        kinds = [k for k in ("fid", "fvd") if self.metrics[k].get("enabled", True)]
        n_sets = sum(len(self._seeds(methods[r["name"]])) for r in rows) * len(kinds)
        lat = self.metrics["latency"]
        n_lat = (
            sum(methods[r["name"]].generates for r in rows) * min(int(lat.get("items", 2)), len(items))
            if lat.get("enabled", True)
            else 0
        )
        results: dict[str, dict[int, dict[str, dict]]] = {}
        bar = tqdm(
            total=n_videos + n_sets + n_lat, desc="ardrag-eval", unit="step", disable=not self.progress
        )
        for r in rows:
            method = methods[r["name"]]
            mdir = self._method_dir(method)
            _write_json(mdir / "method.json", {"row": r, "identity": method.identity()})
            results[r["name"]] = {}
            for seed in self._seeds(method):
                per_item: dict[str, dict] = {}
                for item in items:
                    bar.set_postfix_str(f"videos: {r['name']} seed {seed}")
                    res = self._one(method, mdir, seed, item, pv_cfg, pv_key, scorer)
                    if res is not None:
                        per_item[item["key"]] = res
                    bar.update(1)
                results[r["name"]][seed] = per_item

        setlevel = self._set_level_all(rows, methods, items, results, bar)
        latency = self._latency_all(rows, methods, items, bar)
        bar.close()
        summary = self._write_outputs(rows, methods, items, results, setlevel, latency, suite, t_start)
        return summary

    def _one(
        self,
        method: Method,
        mdir: Path,
        seed: int,
        item: dict[str, Any],
        pv_cfg: dict[str, Any],
        pv_key: str,
        scorer: Any,
    ) -> dict[str, Any] | None:
        vid_path = mdir / f"seed{seed}" / f"{item['key']}.npz"
        gen_path = mdir / f"seed{seed}" / f"{item['key']}.gen.json"
        met_path = mdir / f"seed{seed}" / f"{item['key']}.metrics-{pv_key}.json"
        if met_path.is_file() and vid_path.is_file():
            return json.loads(met_path.read_text())
        if vid_path.is_file() and gen_path.is_file():
            video = _load_video(vid_path)
            gen_s = json.loads(gen_path.read_text())["seconds"]
        else:
            if self.max_new is not None and self.n_new >= self.max_new:
                raise BudgetExhausted(f"generated {self.n_new} new videos (max_new); re-run to resume")
            t0 = time.perf_counter()
            try:
                video = method.generate(item, seed)
            except MissingVideo as e:
                self.missing[(method.spec, seed)] = self.missing.get((method.spec, seed), 0) + 1
                log.warning("%s", e)
                return None
            gen_s = time.perf_counter() - t0
            video = np.asarray(video)
            if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or len(video) < 3:
                raise RuntimeError(
                    f"{method.spec}: generated {video.dtype} {video.shape}; expected uint8 (T>=3, H, W, 3)"
                )
            self.n_new += 1
            _save_video(vid_path, video)
            _write_json(gen_path, {"seconds": gen_s, "seed": seed, "key": item["key"]})
        res = per_video_metrics(video, item, self.metrics, scorer)
        res["timing"]["generate"] = gen_s
        res.update(key=item["key"], seed=seed, metric_config=pv_cfg)
        _write_json(met_path, res)
        return res

    def _set_level_all(self, rows, methods, items, results, bar=None) -> dict[str, dict[int, dict[str, Any]]]:
        small_n = _CollectSmallN()
        logging.getLogger("benchmark.metrics.frechet").addFilter(small_n)
        try:
            return self._set_level_sets(rows, methods, items, results, bar)
        finally:
            logging.getLogger("benchmark.metrics.frechet").removeFilter(small_n)
            for kind, n in sorted(small_n.counts.items()):  # one line per metric, not one per set
                log.warning(
                    "%s: %d of the sets have fewer samples than feature dimensions (biased upwards; flagged "
                    "in the tables): compare only at equal N",
                    kind,
                    n,
                )

    def _set_level_sets(self, rows, methods, items, results, bar) -> dict[str, dict[int, dict[str, Any]]]:
        out: dict[str, dict[int, dict[str, Any]]] = {}
        real = [it["video"] for it in items if it.get("video") is not None]
        kinds = [k for k in ("fid", "fvd") if self.metrics[k].get("enabled", True)]
        if not kinds:
            return out
        if len(real) < len(items):
            self.notes.append("FID/FVD absent: the suite has no ground-truth videos.")
            return out
        for r in rows:
            method = methods[r["name"]]
            mdir = self._method_dir(method)
            out[r["name"]] = {}
            for seed, per_item in results[r["name"]].items():
                keys = sorted(per_item)
                if not keys:
                    _tick(bar, len(kinds))
                    continue
                out[r["name"]][seed] = {}
                for kind in kinds:
                    _tick(bar, 1, f"{kind.upper()}: {r['name']} seed {seed}")
                    opts = self.metrics[kind]
                    code = code_fingerprint(SET_LEVEL_CODE[kind]) + f"-record{SET_LEVEL_RECORD_VERSION}"
                    path = (
                        mdir
                        / f"seed{seed}"
                        / f"{kind}-{_hash({'keys': keys, 'opts': opts, 'code': code})}.json"
                    )
                    if path.is_file():
                        out[r["name"]][seed][kind] = json.loads(path.read_text())
                        continue
                    fake = [_load_video(mdir / f"seed{seed}" / f"{k}.npz") for k in keys]
                    real_k = [it["video"] for it in items if it["key"] in per_item]
                    real_arr, fake_arr = _match_sets(real_k, fake)
                    rkey = _hash(
                        {"kind": kind, "keys": keys, "shape": real_arr.shape, "opts": opts, "code": code}
                    )
                    rpath = self.cache_dir / f"real-{rkey}.npy"
                    real_feats = np.load(rpath) if rpath.is_file() else None
                    try:
                        t0 = time.perf_counter()
                        res, real_feats_new = set_level_metric(kind, real_arr, fake_arr, opts, real_feats)
                        res = dict(res, seconds=time.perf_counter() - t0)
                    except ImportError as e:
                        note = f"{kind.upper()} absent: benchmark.metrics.{kind} not available ({e})."
                        if note not in self.notes:
                            self.notes.append(note)
                        continue
                    if real_feats is None and real_feats_new is not None:
                        buf = io.BytesIO()
                        np.save(buf, real_feats_new)
                        atomic_write_bytes(rpath, buf.getvalue())
                    _write_json(path, res)
                    out[r["name"]][seed][kind] = res
        return out

    def _latency_all(self, rows, methods, items, bar=None) -> dict[str, dict[str, Any]]:
        lat_cfg = self.metrics["latency"]
        out: dict[str, dict[str, Any]] = {}
        if not lat_cfg.get("enabled", True):
            return out
        hw = hardware_string()
        seed = self.cfg["seeds"][0]
        for r in rows:
            method = methods[r["name"]]
            if not method.generates:
                continue
            path = self._method_dir(method) / f"latency-{_hash(lat_cfg)}.json"
            lat_items = items[: int(lat_cfg.get("items", 2))]
            if path.is_file():
                cached = json.loads(path.read_text())
                if cached.get("hardware") == hw:  # timings from other hardware are re-measured
                    out[r["name"]] = cached
                    _tick(bar, len(lat_items))
                    continue
            per_item = []
            for item in lat_items:
                _tick(bar, 1, f"latency: {r['name']}")
                per_item.append(
                    measure_latency(
                        lambda m=method, it=item: m.stream(it, seed),
                        warmup=int(lat_cfg.get("warmup", 1)),
                        repeats=int(lat_cfg.get("repeats", 3)),
                        device=lat_cfg.get("device", "cpu"),
                    )
                )
            n = min(p["frames"] for p in per_item)
            res = {
                "ttff": float(np.mean([p["ttff"] for p in per_item])),
                "per_frame_mean": float(np.mean([p["per_frame_mean"] for p in per_item])),
                "fps": float(np.mean([p["fps"] for p in per_item])),
                "total": float(np.mean([p["total"] for p in per_item])),
                "frames": n,
                "per_frame_by_index": np.mean(
                    [p["per_frame_by_index"][:n] for p in per_item], axis=0
                ).tolist(),
                "ttff_runs": [run["ttff"] for p in per_item for run in p["runs"]],
                "peak_memory_mb": max(p["peak_memory_mb"] for p in per_item),
                "memory_kind": per_item[0]["memory_kind"],
                "hardware": hw,
                "warmup": per_item[0]["warmup"],
                "repeats": per_item[0]["repeats"],
                "items": len(per_item),
            }
            _write_json(path, res)
            out[r["name"]] = res
        return out

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
        table_rows: dict[str, list[dict[str, Any]]] = {"table1": [], "table2": []}
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
        for key, title in (("table1", "Table 1: methods"), ("table2", "Table 2: ablations")):
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


def _tick(bar: Any, n: int, label: str | None = None) -> None:
    """Advance the run's one progress bar (None when there is none); ``label`` says what runs now."""
    if bar is None:
        return
    if label:
        bar.set_postfix_str(label)
    bar.update(n)


class _CollectSmallN(logging.Filter):
    """Swallows the per-set small-N warnings of ``benchmark.metrics.frechet`` and counts them per metric."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "feature dims is biased upwards" in msg:
            kind = msg.split(" ", 1)[0]
            self.counts[kind] = self.counts.get(kind, 0) + 1
            return False
        return True


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("ardrag", "torch", "numpy", "opencv-python-headless", "torchmetrics", "scipy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "absent"
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ardrag-eval",
        description="Run every method of an eval config on its suite and write Table 1/2, latency and meta.json. "
        "Tables go to <cache_dir>/results/ (untracked) unless --publish or --out-dir says otherwise.",
    )
    p.add_argument("--config", required=True, help="eval config, e.g. configs/eval/toy.yaml")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--publish",
        action="store_true",
        help="write the tables to the config's out_dir (the committed results/<suite>/): regenerates them",
    )
    where.add_argument(
        "--out-dir", "--out_dir", dest="out_dir", help="write the tables here (default <cache_dir>/results/)"
    )
    p.add_argument(
        "--cache-dir",
        "--cache_dir",
        dest="cache_dir",
        help="videos and per-video metrics cache; re-running resumes from it (default: the config's cache_dir)",
    )
    p.add_argument("--methods", help="comma-separated method names to run (default: all rows)")
    p.add_argument(
        "--max-new",
        "--max_new",
        dest="max_new",
        type=int,
        help="stop after generating this many new videos (exit 3; re-running resumes)",
    )
    p.add_argument(
        "--no-progress",
        "--no_progress",
        dest="no_progress",
        action="store_true",
        help="hide the progress bar",
    )
    return p


def output_dir(cfg: dict[str, Any], publish: bool = False, out_dir: str | None = None) -> str:
    """Where the tables go: ``out_dir`` if given, the config's ``out_dir`` (committed results) with
    ``publish``, else ``<cache_dir>/results`` (git-ignored), so a trial run never rewrites tracked files."""
    if out_dir:
        return out_dir
    return cfg["out_dir"] if publish else str(Path(cfg["cache_dir"]) / "results")


def main(argv: list[str] | None = None) -> int:
    """Console script ``ardrag-eval``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        if args.cache_dir:
            cfg["cache_dir"] = args.cache_dir
        published = cfg["out_dir"]
        cfg["out_dir"] = output_dir(cfg, args.publish, args.out_dir)
        runner = EvalRunner(
            cfg,
            max_new=args.max_new,
            progress=not args.no_progress,
            only=args.methods.split(",") if args.methods else None,
        )
        summary = runner.run()
    except (ConfigError, FileNotFoundError) as e:
        print(f"ardrag-eval: error: {e}", file=sys.stderr)
        return 2
    except BudgetExhausted as e:
        print(f"ardrag-eval: stopped: {e}", file=sys.stderr)
        return 3
    print(
        f"ardrag-eval: wrote {summary['out_dir']} ({summary['n_items']} items, {summary['new_videos']} new videos)"
    )
    for w in summary["walltime"]:
        secs = sum(v for k, v in w.items() if k not in ("method", "videos"))
        print(f"  {w['method']}: {w['videos']} videos, {secs:.1f} s generation + metrics (cached totals)")
    if Path(summary["out_dir"]).resolve() != Path(published).resolve():
        print(f"  (the committed tables in {published}/ are regenerated with --publish)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
