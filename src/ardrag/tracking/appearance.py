"""The flow tracker's appearance checks: drift control to the frame-0 gray patch (``_snap``) and a point's own colour (``_Colour``)."""

from __future__ import annotations

import numpy as np

from ardrag.tracking.core import _patches, _sample, _zncc
from ardrag.tracking.params import FlowParams


def _snap(gray: np.ndarray, templates: np.ndarray, pts: np.ndarray, win: int, p: FlowParams) -> np.ndarray:
    """(N, 2) points moved to their best frame-0 match (zero-mean NCC of (N, win*win) gray ``templates``) on a
    ``snap_step`` grid within ``snap_radius`` pixels, where it beats the match at the point by ``snap_margin``."""
    off = np.arange(-p.snap_radius, p.snap_radius + 1e-6, p.snap_step, dtype=np.float32)
    ox, oy = np.meshgrid(off, off)
    grid = np.stack([ox.ravel(), oy.ravel()], axis=1)  # (M, 2), the centre included
    cand = _patches(gray, (pts[:, None] + grid[None]).reshape(-1, 2), win).reshape(len(pts), len(grid), -1)
    ncc, _ = _zncc(templates[:, None], cand)  # (N, M)
    centre = int(np.argmin(np.abs(grid).sum(axis=1)))
    best = ncc.argmax(axis=1)
    rows = np.arange(len(pts))
    move = ncc[rows, best] - ncc[:, centre] > p.snap_margin
    out = pts.copy()
    out[move] += grid[best[move]]
    return out


class _Colour:
    """A point's own colour (mean RGB of the 3 x 3 pixels around it) against its frame-0 colour and its recently
    seen one (blended in like ``FlowParams.template_update``'s patch, a fifth per frame the point passes)."""

    _OFF = np.array([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.float32)

    def __init__(self, frames: np.ndarray, points: np.ndarray, tau: float):
        self.frames, self.tau = frames, tau
        self.first = self._at(0, points)
        self.recent = self.first.copy()

    def _at(self, i: int, pts: np.ndarray) -> np.ndarray:
        return _sample(self.frames[i].astype(np.float32), pts, self._OFF).mean(1)

    def check(self, i: int, idx: np.ndarray, pts: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """bool (len(idx),): points ``idx`` at ``pts`` on frame i within ``tau`` of their frame-0 colour or within
        half of it of their recent colour; the recent colour of those that pass and are ``ok`` otherwise is
        updated."""
        c = self._at(i, pts)
        good = (np.linalg.norm(c - self.first[idx], axis=1) <= self.tau) | (
            np.linalg.norm(c - self.recent[idx], axis=1) <= 0.5 * self.tau
        )
        upd = good & ok
        self.recent[idx[upd]] = 0.8 * self.recent[idx[upd]] + 0.2 * c[upd]
        return good

    def near_first(self, i: int, idx: np.ndarray, pts: np.ndarray, share: float) -> np.ndarray:
        """bool (len(idx),): points ``idx`` at ``pts`` on frame i within ``share * tau`` of their frame-0 colour."""
        return np.linalg.norm(self._at(i, pts) - self.first[idx], axis=1) <= share * self.tau

    def restart(self, idx: np.ndarray) -> None:
        """A re-acquired point's recent colour starts again from its frame-0 colour."""
        self.recent[idx] = self.first[idx]
