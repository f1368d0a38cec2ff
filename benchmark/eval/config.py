"""The eval config: defaults, validation (``ConfigError`` with a one-line reason) and loading from YAML."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmark.suites import SuiteConfig

DEFAULT_METRICS: dict[str, Any] = {
    "objmc": True,
    "objmc_flow": True,
    "objmc_min_coverage": 0.5,
    "report_size": None,
    "smoothness": True,
    "residue": True,
    "aesthetic": {"clip": None, "head": None, "frame_stride": 4},
    "fid": {"enabled": True},
    "fvd": {"enabled": True},
    "latency": {"enabled": True, "items": 2, "warmup": 1, "repeats": 3, "device": "cpu"},
}
MIN_SEEDS = 3
TABLES = {"table1": "Table 1: methods", "table2": "Table 2: ablations", "steps": "Denoising steps per frame"}
"""The tables a method row may ask for, with their titles ('steps': one checkpoint sampled with 1, 2 and 3 steps)."""


class ConfigError(ValueError):
    """The eval config is malformed; the message says which field."""


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
        bad = set(row["tables"]) - set(TABLES)
        if bad:
            raise ConfigError(f"methods[{i}].tables: unknown {sorted(bad)}; use any of {list(TABLES)}")
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
