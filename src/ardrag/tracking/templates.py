"""The LK tracker's frame-0 colour templates (alignment and weighted NCC) and its visibility rule."""

from __future__ import annotations

import cv2
import numpy as np

from ardrag.tracking.core import _inside, _sample

_MAX_SAMPLES = 21  # template samples per side; larger templates sample a blurred frame at a coarser stride


def _stride(size: int) -> int:
    """Sampling stride of a template of ``size`` pixels (1 up to 21 px: every pixel)."""
    return max(1, int(np.ceil(size / _MAX_SAMPLES)))


def _prep(frame: np.ndarray, stride: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float32, low-passed when the template is sampled at a stride (no aliasing)."""
    img = frame.astype(np.float32)
    return cv2.GaussianBlur(img, (0, 0), 0.5 * stride) if stride > 1 else img


class _Templates:
    """Frame-0 templates of N points: colour samples on a grid spanning ``size`` pixels (every ``_stride``
    pixels of the ``_prep``-ed frame), their gradients, and weights (spatial Gaussian x similarity of
    chromaticity to the point's own pixel)."""

    def __init__(self, img: np.ndarray, pts: np.ndarray, size: int, chroma_sigma: float):
        stride = _stride(size)
        half = stride * ((size - 1) // (2 * stride))
        g = np.arange(-half, half + 1, stride, dtype=np.float32)
        ox, oy = np.meshgrid(g, g)
        self.off = np.stack([ox.ravel(), oy.ravel()], 1)  # (P, 2)
        self.off1 = g  # the offsets along each axis (the template is square)
        self.centre = np.flatnonzero(np.hypot(*self.off.T) <= max(1.5, stride))  # samples at the point itself
        d = np.float32(0.5 * stride)
        shifts = [(0, 0), (d, 0), (-d, 0), (0, d), (0, -d)]
        s = _sample(img, pts, np.concatenate([self.off + sh for sh in shifts]))
        p = len(self.off)
        t, xp, xm, yp, ym = (s[:, k * p : (k + 1) * p] for k in range(5))  # (N, P, C) each
        spatial = np.exp(-(self.off**2).sum(1) / (2 * (size / 3) ** 2))
        chroma = t / (t.sum(-1, keepdims=True) + 30.0)  # +30: dark pixels have no reliable colour
        centre = chroma[:, p // 2 : p // 2 + 1]
        w = spatial[None] * np.exp(-((chroma - centre) ** 2).sum(-1) / (2 * chroma_sigma**2))
        self.w = (w / w.sum(1, keepdims=True)).astype(np.float32)  # (N, P)
        mean = np.einsum("np,npc->nc", self.w, t)
        self.t = t - mean[:, None]  # zero weighted mean: offsets in brightness cancel
        self.tn = np.sqrt(np.einsum("np,npc,npc->n", self.w, self.t, self.t))
        self.flat = self.tn < 1.0  # weighted std under one grey level: nothing to match against
        n, c = t.shape[0], t.shape[2]
        self.w1 = self.w[:, None, :]  # (N, 1, P): batched matmuls below are much faster than einsum
        self.wt = (self.w[..., None] * self.t).reshape(n, 1, p * c)
        gx, gy = (xp - xm) / stride, (yp - ym) / stride
        wg = np.stack([self.w[..., None] * gx, self.w[..., None] * gy], 1)  # (N, 2, P, C)
        # For the zero-mean error: sum_p w g (I - mean(I)) = sum_p w g I - (sum_p w g) . mean(I).
        self.sg = wg.sum(2)  # (N, 2, C)
        self.gt = np.einsum("nkpc,npc->nk", wg, self.t)  # (N, 2)
        hess = np.einsum("nkpc,nlpc->nkl", wg, np.stack([gx, gy], 1))
        self.wg = np.ascontiguousarray(wg.reshape(n, 2, p * c))
        tr = np.trace(hess, axis1=1, axis2=2)
        # Damping: along a direction with no gradient (an edge, stripes) the update stays near the prediction.
        damp = (1e-2 * tr + 1e-6)[:, None, None] * np.eye(2)
        self.hinv = np.linalg.inv(hess + damp).astype(np.float32)

    def ncc(self, img: np.ndarray, pts: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Weighted zero-mean NCC (N',) of templates ``idx`` with ``img`` sampled at ``pts`` (N', 2)."""
        return self.ncc_of(_sample(img, pts, self.off), idx)

    def ncc_of(self, patch: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``ncc`` of templates ``idx`` (N',) with patches already sampled: (N', P, C) -> (N',), or (N', G, P, C)
        (G patches per template) -> (N', G)."""
        ex = (slice(None),) + (None,) * (patch.ndim - 3)  # a template's arrays are shared by its G patches
        w1 = self.w1[idx][ex]
        mean = (w1 @ patch)[..., 0, :]  # (N', [G,] C)
        var = (w1 @ (patch * patch))[..., 0, :].sum(-1) - (mean * mean).sum(-1)
        dot = (self.wt[idx][ex] @ patch.reshape(*patch.shape[:-2], -1, 1))[..., 0, 0]
        out = dot / np.maximum(self.tn[idx][ex] * np.sqrt(np.maximum(var, 0)), 1e-6)
        return np.where(self.flat[idx][ex], 1.0, out)

    def robust_ncc(
        self, img: np.ndarray, pts: np.ndarray, idx: np.ndarray, tau: float, iters: int = 3
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Match of templates ``idx`` that ignores the part of the template hidden by something else.

        Template pixels whose zero-mean colour differs from the patch by more than ``tau`` grey levels are
        outliers (an object in front of part of the template, or the background that slid behind an edge);
        the means are re-estimated without them a few times. Returns the weighted zero-mean NCC over the
        inliers (N',), the inlier share of the template weight (N',) and whether the pixels within 1.5 px of
        the point itself are all inliers (N',): a point that is itself covered fails that.
        """
        patch = _sample(img, pts, self.off)  # (n, P, C)
        w, t = self.w[idx], self.t[idx]
        m = np.ones(w.shape, bool)
        for _ in range(iters):
            wm = w * m
            s = np.maximum(wm.sum(1, keepdims=True), 1e-6)[..., None]
            dp = patch - (wm[..., None] * patch).sum(1, keepdims=True) / s
            dt = t - (wm[..., None] * t).sum(1, keepdims=True) / s
            m = np.linalg.norm(dp - dt, axis=-1) < tau
        wm = w * m
        dot = np.einsum("np,npc,npc->n", wm, dp, dt)
        var_p = np.einsum("np,npc,npc->n", wm, dp, dp)
        var_t = np.einsum("np,npc,npc->n", wm, dt, dt)
        ncc = dot / np.maximum(np.sqrt(var_p * var_t), 1e-6)
        flat = var_t < wm.sum(1)  # inlier template std under one grey level: nothing left to compare
        ncc = np.where(flat, 0.0, ncc)
        centre = m[:, self.centre].all(1)
        return ncc, wm.sum(1), centre

    def refine(self, img: np.ndarray, pts: np.ndarray, idx: np.ndarray, iters: int) -> np.ndarray:
        """Align templates ``idx`` to ``img`` starting at ``pts`` (inverse-compositional translation LK); a
        point stops once its step is under 0.02 px."""
        pts = pts.copy()
        act = np.flatnonzero(~self.flat[idx])  # positions in idx still iterating
        for _ in range(iters):
            if act.size == 0:
                break
            j = idx[act]
            patch = _sample(img, pts[act], self.off)  # (n, P, C)
            mean = self.w1[j] @ patch  # (n, 1, C)
            b = (self.wg[j] @ patch.reshape(len(j), -1, 1))[..., 0]
            b -= (self.sg[j] @ mean.transpose(0, 2, 1))[..., 0] + self.gt[j]
            step = np.clip((self.hinv[j] @ b[..., None])[..., 0], -2.0, 2.0)
            pts[act] -= step
            act = act[np.abs(step).max(1) >= 0.02]
        return pts


class _Visibility:
    """The visibility rule: shown while matching; once hidden, shown again after ``reacquire`` strict matches
    in a row; a point whose estimate left the frame, failed outright or coasted too long is never followed
    again."""

    def __init__(self, points: np.ndarray, t: int, h: int, w: int, reacquire: int):
        n = points.shape[0]
        self.tracks = np.zeros((t, n, 2), dtype=np.float32)
        self.visible = np.zeros((t, n), dtype=bool)
        self.tracks[0] = points
        self.visible[0] = _inside(points, h, w)
        self.followed = self.visible[0].copy()  # still has a position estimate
        self.streak = np.zeros(n, dtype=np.int64)  # consecutive matching frames while hidden
        self.reacquire = reacquire
        self.est = points.copy()
        self.vel = np.zeros_like(points)  # last frame-to-frame step of each estimate, pixels
        self.hidden_for = np.zeros(n, dtype=np.int64)  # frames since the point was last shown
        self.est_at = np.zeros((t, n, 2), dtype=np.float32)  # each frame's estimate (a streak's finds)
        self.est_at[0] = points

    def update(
        self,
        i: int,
        idx: np.ndarray,
        new: np.ndarray,
        alive: np.ndarray,
        match: np.ndarray,
        strict: np.ndarray,
    ) -> None:
        """Frame i: followed points ``idx`` moved to ``new``; ``alive`` False ends following; ``match`` keeps a
        shown point shown; ``strict`` (a closer match) counts towards showing a hidden point again."""
        was = self.visible[i - 1]
        ok = np.zeros_like(self.followed)
        ok[idx] = alive & match
        good = np.zeros_like(self.followed)
        good[idx] = alive & match & strict
        # A hidden point keeps the velocity of its course (a point found again after a search would otherwise
        # take the search's correction as its velocity).
        step = new - self.est[idx]
        self.vel[idx] = np.where(was[idx, None], step, self.vel[idx])
        self.est[idx] = new
        self.est_at[i] = self.est
        self.followed[idx[~alive]] = False
        self.streak = np.where(good, self.streak + 1, 0)
        if self.reacquire > 0:
            vis = ok & (was | (self.streak >= self.reacquire))
        else:
            vis = ok & was
            self.followed[idx] &= vis[idx]  # lost stays lost: stop following
        self.visible[i] = vis
        self.hidden_for = np.where(vis, 0, self.hidden_for + 1)
        self.tracks[i] = np.where(vis[:, None], self.est, self.tracks[i - 1])
        if self.reacquire > 1:
            # A point shown again was found on each frame of its streak (strict, unambiguous, on course): those
            # frames are shown too, at their finds (the evidence that shows frame i vouches for them).
            back = np.flatnonzero(vis & ~was)
            for k in range(1, self.reacquire):
                self.visible[i - k, back] = True
                self.tracks[i - k, back] = self.est_at[i - k, back]
