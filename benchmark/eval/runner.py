"""The eval run: per-video metrics, set-level FID/FVD and latency for every method row, resumed from the cache."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ardrag.video import atomic_write_bytes
from benchmark.eval.cache import (
    SET_LEVEL_CODE,
    SET_LEVEL_RECORD_VERSION,
    _hash,
    _load_video,
    _per_video_metric_config,
    _save_video,
    _write_json,
    code_fingerprint,
)
from benchmark.eval.config import ConfigError
from benchmark.eval.report import Outputs
from benchmark.methods import Method, MissingVideo, build_method, folder_fingerprint, method_key
from benchmark.metrics.aesthetic import aesthetic_score, load_aesthetic
from benchmark.metrics.latency import hardware_string, measure_latency
from benchmark.metrics.motion import motion_sums
from benchmark.metrics.residue import residue_sums
from benchmark.metrics.smoothness import motion_smoothness
from benchmark.suites import Suite, SuiteConfig

log = logging.getLogger("ardrag.eval")


class BudgetExhausted(RuntimeError):
    """``max_new`` videos were generated: stop here; re-running resumes from the cache."""


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
    if metrics.get("residue"):
        t0 = time.perf_counter()
        out["residue"] = residue_sums(video, item["tracks"], item["visible"], track_size=item["size"])
        out["timing"]["residue"] = time.perf_counter() - t0
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


class EvalRunner(Outputs):
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
            # timed afresh in every run, never read back from an earlier run's file: a table's latency rows then
            # come from one run on one load (cached timings would mix runs, code versions and CPU loads)
            path = self._method_dir(method) / f"latency-{_hash(lat_cfg)}.json"
            lat_items = items[: int(lat_cfg.get("items", 2))]
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
