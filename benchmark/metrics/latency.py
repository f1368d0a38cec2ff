"""Latency of a generator: time to first frame (decode included), per-frame latency, FPS, peak memory.

A method is timed through its frame stream (``method.stream(item, seed)`` yields uint8 (H, W, 3) frames, i.e.
already decoded to pixels), so the time to the first frame includes decoding. Warm-up runs (allocator, kernel
selection, caches, torch.compile) are run, timed and reported apart, never counted in the first frame. Figures are
medians over the timed runs (one slow run on a shared CPU moves a mean, not a median). Every measurement records
the torch thread count and how much CPU other processes used while it ran (`OtherCpu`): on a 2-core machine a
2-thread run next to one busy process waits on its second thread at every small operator, and per-operator
latencies rise by an order of magnitude, so a timing without the load beside it cannot be compared. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA, else the
process's resident-set high-water mark (``getrusage``; process-wide and never decreasing, so it bounds rather
than isolates one method on CPU). The hardware string is recorded with every measurement.
"""

from __future__ import annotations

import os
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


class OtherCpu:
    """CPU used by other processes while a block runs, in cores: (busy jiffies of the machine - this process's) per
    second of wall time, from /proc (None where /proc is absent). Use as a context manager; read `.cores`."""

    def __init__(self) -> None:
        self.cores: float | None = None

    @staticmethod
    def _busy() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                cpu = [int(v) for v in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
        return sum(cpu[:8]) - idle, int(own[11]) + int(own[12])  # machine busy, own utime + stime

    def __enter__(self) -> OtherCpu:
        self._t0, self._b0 = time.monotonic(), self._busy()
        return self

    def __exit__(self, *exc) -> None:
        b1, dt = self._busy(), time.monotonic() - self._t0
        if self._b0 is not None and b1 is not None and dt > 0:
            hz = os.sysconf("SC_CLK_TCK")
            self.cores = max(0.0, ((b1[0] - self._b0[0]) - (b1[1] - self._b0[1])) / hz / dt)


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
    """Run ``stream`` ``warmup`` times (timed, discarded) then ``repeats`` times; medians and per-run values.

    Returns ``ttff`` / ``fps`` / ``per_frame_mean`` / ``total`` (seconds, medians over repeats), ``runs`` (each
    :func:`time_stream` result), ``per_frame_by_index`` (median latency of frame i over repeats),
    ``warmup_s`` (seconds of each warm-up run), ``threads``, ``other_cpu_cores`` (CPU other processes used during
    the timed runs, cores; None without /proc), ``load_average`` (1-minute, before and after), ``peak_memory_mb``,
    ``memory_kind``, ``hardware``, ``warmup``, ``repeats``.
    """
    if repeats < 1:
        raise ValueError("latency: repeats must be >= 1")
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        for _frame in stream():
            pass
        warm.append(time.perf_counter() - t0)
    load0 = os.getloadavg()[0]
    with OtherCpu() as other:
        runs = [time_stream(stream, device) for _ in range(repeats)]
    n = min(r["frames"] for r in runs)
    by_index = np.median([r["per_frame"][:n] for r in runs], axis=0)
    return {
        "ttff": float(np.median([r["ttff"] for r in runs])),
        "fps": float(np.median([r["fps"] for r in runs])),
        "per_frame_mean": float(np.median([np.mean(r["per_frame"][1:] or r["per_frame"]) for r in runs])),
        "per_frame_by_index": by_index.tolist(),
        "total": float(np.median([r["total"] for r in runs])),
        "frames": n,
        "runs": runs,
        "warmup_s": warm,
        "threads": torch.get_num_threads(),
        "other_cpu_cores": other.cores,
        "load_average": [load0, os.getloadavg()[0]],
        "peak_memory_mb": _peak_memory_mb(device),
        "memory_kind": "cuda max_memory_allocated"
        if device.startswith("cuda") and torch.cuda.is_available()
        else "process RSS high-water",
        "hardware": hardware_string(),
        "warmup": warmup,
        "repeats": repeats,
    }


def toy_stream_inputs(frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The latency scripts' fixed inputs: the demo's first bundled toy image (64 x 64) and two drags (T, 2, 2)."""
    from ardrag.demo.app import STATIC
    from ardrag.video import read_image

    image = read_image(STATIC / "images" / "toy-0.png")
    h, w = image.shape[:2]
    a = np.linspace([0.3 * w, 0.3 * h], [0.7 * w, 0.65 * h], frames)
    b = np.linspace([0.65 * w, 0.2 * h], [0.2 * w, 0.8 * h], frames)
    return image, np.stack([a, b], axis=1).astype(np.float32)
