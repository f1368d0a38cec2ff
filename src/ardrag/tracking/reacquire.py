"""Re-acquisition of lost flow points: a gray frame-0 patch search around the course (``FlowParams.reacquire``)."""

from __future__ import annotations

import cv2
import numpy as np

from ardrag.tracking.appearance import _Colour, _snap
from ardrag.tracking.core import _inside, _patches, _sample_flow
from ardrag.tracking.params import FlowParams


class _FlowReacquire:
    """Lost flow points found again by their frame-0 gray patch around their course (``FlowParams.reacquire``)."""

    def __init__(self, points: np.ndarray, p: FlowParams):
        n = len(points)
        self.p = p
        self.lost_at = np.full(n, -1)
        self.anchor = points.copy()
        self.vel = np.zeros_like(points)
        self.streak = np.zeros(n, int)
        self.pos = points.copy()
        self.r = int(np.floor(p.search_px))
        off = np.arange(-self.r, self.r + 1, dtype=np.float32)
        ox, oy = np.meshgrid(off, off)
        self.grid = np.stack([ox.ravel(), oy.ravel()], axis=1)  # row-major, as cv2.matchTemplate's result

    def searching(self, i: int) -> np.ndarray:
        """bool (N,): points lost no more than ``max_hidden`` frames before frame i."""
        return (self.lost_at >= 0) & (i - self.lost_at <= self.p.max_hidden)

    def step(
        self,
        i: int,
        gray: np.ndarray,
        fwd: np.ndarray,
        templates: np.ndarray,
        tracks: np.ndarray,
        alive: np.ndarray,
        newly_lost: np.ndarray,
        win: int,
        h: int,
        w: int,
        colour: _Colour | None,
    ) -> np.ndarray:
        """Frame i: start the course of the points ``newly_lost`` on it, look for the points lost before, and
        return those whose streak of finds reached ``reacquire`` (their place on frame i is ``self.pos``)."""
        p = self.p
        if newly_lost.size:  # course: last shown position and velocity
            self.lost_at[newly_lost] = i
            self.anchor[newly_lost] = tracks[i - 1, newly_lost]
            k = min(i - 1, 4)
            self.vel[newly_lost] = (tracks[i - 1, newly_lost] - tracks[i - 1 - k, newly_lost]) / max(k, 1)
            self.streak[newly_lost] = 0
        cand = np.flatnonzero(~alive & self.searching(i) & (self.lost_at < i))  # not those lost on frame i
        if cand.size == 0:
            return cand
        course = self.anchor[cand] + self.vel[cand] * (i - self.lost_at[cand] + 1)[:, None]
        r = self.r
        areas = _patches(gray, course, 2 * r + win).reshape(len(cand), 2 * r + win, 2 * r + win)
        tm = templates[cand].reshape(len(cand), win, win)
        ncc = np.stack([cv2.matchTemplate(a, t, cv2.TM_CCOEFF_NORMED).ravel() for a, t in zip(areas, tm)])
        ncc[templates[cand].std(axis=1) < 1.0] = -1.0  # a flat template cannot be found unambiguously
        best = ncc.argmax(axis=1)
        rows = np.arange(len(cand))
        s1 = ncc[rows, best]
        far = np.linalg.norm(self.grid[None] - self.grid[best][:, None], axis=2) > 2.0
        s2 = np.where(far, ncc, -1.0).max(axis=1)
        found = (s1 >= p.reacquire_ncc) & (s1 - s2 >= p.reacquire_margin)
        f = course + self.grid[best]
        if p.snap_radius and found.any():
            f[found] = _snap(gray, templates[cand[found]], f[found], win, p)
        found &= _inside(f, h, w)
        if colour is not None and found.any():
            found &= colour.near_first(i, cand, f, 0.5)
        # a streak continues when the find is where the flow carried the previous find
        prev_ok = self.streak[cand] > 0
        carried = self.pos[cand] + _sample_flow(fwd, self.pos[cand])
        linked = prev_ok & (np.linalg.norm(f - carried, axis=1) <= 1.0)
        self.streak[cand] = np.where(found, np.where(linked, self.streak[cand] + 1, 1), 0)
        self.pos[cand[found]] = f[found]
        back = cand[self.streak[cand] >= p.reacquire]
        self.lost_at[back] = -1
        self.streak[back] = 0
        return back
