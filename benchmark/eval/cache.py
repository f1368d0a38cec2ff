"""The eval cache: JSON and video files written atomically, and the code fingerprints that key cached metrics."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ardrag.video import atomic_write_bytes


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
    "benchmark.metrics.residue",
    "benchmark.metrics.aesthetic",
    "ardrag.aesthetic",
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
    """Hash of the source files of ``modules`` (found without importing them); missing modules hash as absent.

    A package hashes every ``.py`` file under its folder, so a change to any of its submodules counts.
    """
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except (ModuleNotFoundError, ValueError):  # ValueError: an in-memory module without a spec
            spec = None
        origin = spec.origin if spec is not None else None
        h.update(name.encode() + b"\0")
        if spec is not None and spec.submodule_search_locations and origin and Path(origin).is_file():
            root = Path(origin).parent
            for f in sorted(root.rglob("*.py")):
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
            continue
        h.update(Path(origin).read_bytes() if origin and Path(origin).is_file() else b"absent")
    return h.hexdigest()[:16]


def _per_video_metric_config(metrics: dict[str, Any]) -> dict[str, Any]:
    cfg = {k: metrics[k] for k in ("objmc", "objmc_flow", "report_size", "smoothness", "aesthetic")}
    if metrics.get("residue"):  # only when on, so caches made without it stay valid for the other metrics
        cfg["residue"] = True
    cfg["code"] = code_fingerprint(PER_VIDEO_CODE)
    return cfg
