"""Latency of a generator: time to first frame (decode included), per-frame latency, FPS, peak memory.

A method is timed through its frame stream (``method.stream(item, seed)`` yields uint8 (H, W, 3) frames, i.e.
already decoded to pixels), so the time to the first frame includes decoding. Warm-up runs (allocator, kernel
selection, caches) are run and discarded. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA, else the
process's resident-set high-water mark (``getrusage``; process-wide and never decreasing, so it bounds rather
than isolates one method on CPU). The hardware string is recorded with every measurement.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ardrag.hardware import hardware_string


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def time_stream(stream: Callable[[], Iterator[np.ndarray]], device: str = "cpu") -> dict[str, Any]:
    """Time one run of ``stream()``: seconds from the call to each yielded frame.

    Returns ``{"ttff": s, "frame_times": [s since start per frame], "per_frame": [s between frames, frame 0 =
    ttff], "total": s, "fps": frames / total, "frames": T}``.
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    stamps = []
    for frame in stream():
        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.synchronize()
        _ = np.asarray(frame)  # the frame must exist as pixels on the host
        stamps.append(time.perf_counter() - t0)
    if not stamps:
        raise RuntimeError("latency: the method's stream yielded no frame")
    per_frame = np.diff([0.0, *stamps]).tolist()
    return {
        "ttff": stamps[0],
        "frame_times": stamps,
        "per_frame": per_frame,
        "total": stamps[-1],
        "fps": len(stamps) / stamps[-1] if stamps[-1] > 0 else float("inf"),
        "frames": len(stamps),
    }


def measure_latency(
    stream: Callable[[], Iterator[np.ndarray]], warmup: int = 1, repeats: int = 3, device: str = "cpu"
) -> dict[str, Any]:
    """Run ``stream`` ``warmup`` times (discarded) then ``repeats`` times; mean and per-run values.

    Returns ``ttff`` / ``fps`` / ``per_frame_mean`` (seconds, means over repeats), ``runs`` (each
    :func:`time_stream` result), ``per_frame_by_index`` (mean latency of frame i over repeats),
    ``peak_memory_mb``, ``memory_kind``, ``hardware``, ``warmup``, ``repeats``.
    """
    if repeats < 1:
        raise ValueError("latency: repeats must be >= 1")
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        for _frame in stream():
            pass
    runs = [time_stream(stream, device) for _ in range(repeats)]
    n = min(r["frames"] for r in runs)
    by_index = np.mean([r["per_frame"][:n] for r in runs], axis=0)
    return {
        "ttff": float(np.mean([r["ttff"] for r in runs])),
        "fps": float(np.mean([r["fps"] for r in runs])),
        "per_frame_mean": float(np.mean([np.mean(r["per_frame"][1:] or r["per_frame"]) for r in runs])),
        "per_frame_by_index": by_index.tolist(),
        "total": float(np.mean([r["total"] for r in runs])),
        "frames": n,
        "runs": runs,
        "peak_memory_mb": _peak_memory_mb(device),
        "memory_kind": "cuda max_memory_allocated"
        if device.startswith("cuda") and torch.cuda.is_available()
        else "process RSS high-water",
        "hardware": hardware_string(),
        "warmup": warmup,
        "repeats": repeats,
    }
