"""Comparisons between different computation paths.

Matmul kernels (oneDNN/MKL) choose blocking, and so summation order, by CPU model, thread count and tensor shape,
so two different paths agree only to rounding. Bit equality is kept only for literally the same call on the same
shapes (save/load round trips, a rerun with the same seed); everything else goes through here with a stated
tolerance.
"""

from __future__ import annotations

import numpy as np

UINT8_LEVELS = 1
"""uint8 frames from two paths may differ by one level: a latent rounding difference of ~1e-6 can cross a
quantisation boundary; a real slip (wrong seed, frame or condition) moves frames by tens of levels."""


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    """Largest absolute difference between two uint8 videos of the same shape, in levels."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.size else 0


def frames_close(a: np.ndarray, b: np.ndarray, levels: int = UINT8_LEVELS) -> bool:
    return max_level_diff(a, b) <= levels
