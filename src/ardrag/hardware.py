"""What machine a measurement ran on (recorded next to every timing in results/)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo (Linux), None where the file or the line is
    missing."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else what the platform module knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux, x86), None where that file or its flags line is
    missing."""
    flags = _cpuinfo("flags")
    return None if flags is None else set(flags.split())


def cpu_has_native_bf16() -> bool | None:
    """Whether the CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX): False on an x86 CPU without
    them, where torch emulates bf16 (measured 0.6 GFLOP/s vs 28 for fp32 on an AVX2 AMD EPYC), None where the
    flags cannot be read (not Linux x86: unknown, the config's choice stands)."""
    flags = cpu_flags()
    if flags is None:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def hardware_string() -> str:
    """CPU model, logical cores, torch threads and GPU name (if any)."""
    import torch

    parts = [f"CPU {cpu_name()} x{os.cpu_count()}", f"torch threads {torch.get_num_threads()}"]
    parts.append(f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU")
    return "; ".join(parts)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=30, cwd=Path(__file__).parent
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    """The checkout's HEAD commit (full hash), None outside a git checkout."""
    out = _git("rev-parse", "HEAD")
    return out.strip() if out else None


def git_dirty() -> list[str] | None:
    """Tracked files that differ from the commit (outside results/): a figure made from such a tree is not
    reproducible from ``git_commit`` alone. None outside a git checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    if out is None:
        return None
    paths = [line[3:] for line in out.splitlines() if line[3:]]
    return [p for p in paths if not p.startswith("results/")]


def provenance() -> dict:
    """``git_commit`` and ``git_dirty`` for a results ``meta.json`` (scripts/check_results.py reads them)."""
    return {"git_commit": git_commit(), "git_dirty": git_dirty()}
