"""What machine a measurement ran on (recorded next to every timing in results/)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_string() -> str:
    """CPU model, logical cores, torch threads and GPU name (if any)."""
    import torch

    parts = [f"CPU {cpu_name()} x{os.cpu_count()}", f"torch threads {torch.get_num_threads()}"]
    parts.append(f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU")
    return "; ".join(parts)
