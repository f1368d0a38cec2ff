"""Conditions for frame-wise generation: trajectory heatmaps encoded like video, the reference latent and mask.

Per latent frame m the backbone gets `cond_in_channels = 2 C + 1` extra channels (C = codec latent channels):
  [trajectory latent (C) | reference-image latent at m = 0, zeros elsewhere (C) | mask: 1 at m = 0 (1)]
(`reference_frames="first"`, Wan I2V's layout), or with the reference latent repeated at every m
(`reference_frames="all"`: every token sees the reference patch at its own place, so a static background is a
local copy instead of an attention lookup into frame 0; the toy pipeline uses it).
The trajectory video is a Gaussian blob per visible point per frame, coloured by track index so that crossing
tracks stay distinguishable, then encoded by the codec exactly like a video (as AR-Drag does).
With `motion_preview_radius > 0` (an option; the toy pipeline uses it) C more channels follow the mask: the
*motion preview*, the reference image with a disc of that radius around each drag's start pasted at the drag's
position in that frame (`motion_preview`), encoded like a video. It derives only from the reference and the drags,
so it adds no information; it puts the dragged appearance next to the tokens that must draw it, which a small model
cannot fetch from elsewhere in the frame by attention alone (docs/method.md).
With `preview_fill` the preview carries no remnant: the pixels a dragged neighbourhood vacates (its start disc where
nothing is pasted in that frame) get a smooth estimate of the surrounding background instead of the reference, and one
more channel after the preview flags them (the vacated fraction of each latent pixel), so the model knows which
pixels it has to invent. Without it the dragged sprite is drawn twice, at its target and still at its start, and a
model trained on it learns to leave that copy behind.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ardrag.codecs import Codec

# Distinct, saturated colours (RGB in [0, 1]) for track i % len(PALETTE).
PALETTE = torch.tensor(
    [
        [1.0, 1.0, 1.0],
        [1.0, 0.2, 0.2],
        [0.2, 1.0, 0.2],
        [0.3, 0.4, 1.0],
        [1.0, 1.0, 0.2],
        [1.0, 0.2, 1.0],
        [0.2, 1.0, 1.0],
        [1.0, 0.6, 0.1],
    ]
)


REFERENCE_FRAMES = ("first", "all")
MOVED_PX = 0.5
"""A drag whose point is more than this many pixels from its start has moved (with the filled preview, only moved
drags paste and vacate)."""


def cond_channels(codec: Codec, motion_preview: bool = False, preview_fill: bool = False) -> int:
    """Number of extra backbone input channels for this codec: trajectory + reference latents + mask
    (+ the motion-preview latent, + the vacated-pixel flag when the preview is filled)."""
    if preview_fill and not motion_preview:
        raise ValueError("preview_fill needs the motion preview (motion_preview_radius > 0)")
    return (3 if motion_preview else 2) * codec.latent_channels + 1 + int(preview_fill)


def _blur_matrix(n: int, sigma: float, device, dtype) -> torch.Tensor:
    """(n, n) matrix of a 1-D Gaussian blur with replicated borders (kernel radius 3 sigma): row i weights the
    samples around i, with the taps beyond an edge folded onto the edge sample."""
    r = max(int(3 * sigma), 1)
    ax = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    src = (torch.arange(n, device=device)[:, None] + ax.long()[None]).clamp(0, n - 1)  # (n, 2r + 1)
    m = torch.zeros(n, n, dtype=torch.float32, device=device)
    m.scatter_add_(1, src, g.expand(n, -1).contiguous())
    return m.to(dtype)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with replicated borders, as two small matrix products (a depthwise
    convolution with a kernel this wide makes oneDNN generate a new kernel per shape, seconds each)."""
    h, w = x.shape[-2:]
    return _blur_matrix(h, sigma, x.device, x.dtype) @ x @ _blur_matrix(w, sigma, x.device, x.dtype).T


def smooth_fill(image: torch.Tensor, known: torch.Tensor, sigma: float) -> torch.Tensor:
    """Normalised convolution: a smooth estimate of `image` from its `known` pixels only.

    image (B, C, H, W); known (B, 1, H, W) in [0, 1]. Returns (B, C, H, W): blur(image * known) / blur(known) with a
    Gaussian of `sigma` px, widened (x2, x4, x8) where too few known pixels are near.
    """
    out = image.new_zeros(image.shape)
    done = torch.zeros_like(known)
    for k in range(4):
        wsum = _gaussian_blur(known, sigma * 2**k)
        est = _gaussian_blur(image * known, sigma * 2**k) / wsum.clamp_min(1e-6)
        ok = (wsum > 0.05).to(image.dtype) * (1 - done)
        out = out + ok * est
        done = done + ok
        if bool(done.min() >= 1):
            break
    mean = (image * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp_min(1e-6)
    return out + (1 - done) * mean  # nothing known nearby even at 8 sigma: the image's known mean


def motion_preview(
    reference: torch.Tensor,
    tracks: torch.Tensor,
    visible: torch.Tensor | None,
    radius: float,
    frames_per_chunk: int = 4,
    fill: float = 0.0,
    return_vacated: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The reference image with each drag's neighbourhood moved along the drag: float (B, 3, T, H, W) in [-1, 1].

    reference (B, 3, H, W) in [-1, 1]; tracks (B, T, N, 2) pixels (x, y); visible (B, T, N) bool or None.
    In frame t, track k (visible in frames 0 and t) pastes the reference disc of `radius` px around its start
    p_k(0) at p_k(t) (an anti-aliased disc; overlapping pastes average). Pixels no disc covers keep the reference,
    except, with `fill` > 0, the vacated ones: inside the disc of `fill * radius` around the start of a track that
    has been more than `MOVED_PX` from its start at some frame <= t (visible or not at t: a hidden object must not
    reappear at its start) and not covered in frame t by the paste of such a track, they get `smooth_fill` of the
    reference from the pixels outside every such disc. So the dragged content no longer shows at its start: the
    vacated disc is wider than the pasted one because a drag's points rarely cover the whole object, and with
    `fill` only tracks that have moved paste (a still track's paste would copy its neighbourhood, and with it the
    edge of a dragged object, back in place). `return_vacated` also returns the vacated fraction
    (B, 1, T, H, W) in [0, 1] (zeros without `fill`).
    Memory O(chunk N H W) per chunk of frames (meant for toy sizes).
    """
    b, t, n, _ = tracks.shape
    _, c, h, w = reference.shape
    dev = reference.device
    ys = torch.arange(h, device=dev, dtype=torch.float32).view(1, 1, 1, h, 1)
    xs = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, 1, 1, w)
    tracks = tracks.float()
    ok = torch.ones(b, t, n, dtype=torch.bool, device=dev) if visible is None else visible.bool()
    ok = ok & ok[:, :1]
    out = torch.empty(b, c, t, h, w, device=dev, dtype=reference.dtype)
    vacated = torch.zeros(b, 1, t, h, w, device=dev, dtype=torch.float32)
    background = reference.float()
    origin = None
    pasting, left = ok, None
    if fill > 0 and n:
        # left[t, k]: drag k (visible at frame 0) has been more than MOVED_PX from its start at some frame <= t; it
        # vacates its start from then on, also while hidden (an occluded or out-of-frame object must not reappear
        # at its start), and pastes wherever it is visible
        away = ok & ((tracks - tracks[:, :1]).norm(dim=-1) > MOVED_PX)
        left = away.cummax(dim=1).values & ok[:, :1]  # (B, T, N)
        pasting = ok & left
        p0 = tracks[:, 0]  # (B, N, 2)
        d0 = torch.sqrt((xs[:, 0] - p0[..., 0, None, None]) ** 2 + (ys[:, 0] - p0[..., 1, None, None]) ** 2)
        origin = (fill * radius + 0.5 - d0).clamp(0, 1)  # (B, N, H, W): the disc each track may vacate
        known = 1 - (origin * left.any(1)[..., None, None]).amax(1)  # (B, H, W): outside every vacated disc
        background = smooth_fill(reference.float(), known[:, None], max(radius / 2, 1.0))
    for t0 in range(0, t, frames_per_chunk):
        pts = tracks[:, t0 : t0 + frames_per_chunk]  # (B, k, N, 2)
        k = pts.shape[1]
        px, py = pts[..., 0, None, None], pts[..., 1, None, None]  # (B, k, N, 1, 1)
        dist = torch.sqrt((xs - px) ** 2 + (ys - py) ** 2)
        wgt = (radius + 0.5 - dist).clamp(0, 1) * pasting[:, t0 : t0 + k, :, None, None]  # (B, k, N, H, W)
        shift = pts - tracks[:, :1]  # (B, k, N, 2): source = x - (p(t) - p(0))
        gx = (xs - shift[..., 0, None, None]).expand(b, k, n, h, w)
        gy = (ys - shift[..., 1, None, None]).expand(b, k, n, h, w)
        grid = torch.stack([2 * gx / max(w - 1, 1) - 1, 2 * gy / max(h - 1, 1) - 1], dim=-1)
        src = reference[:, None].expand(b, k * n, c, h, w).reshape(b * k * n, c, h, w)
        moved = F.grid_sample(
            src.float(),
            grid.reshape(b * k * n, h, w, 2),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        ).view(b, k, n, c, h, w)
        total = wgt.sum(2)  # (B, k, H, W)
        pasted = (wgt[:, :, :, None] * moved).sum(2) / total.clamp_min(1e-6)[:, :, None]
        alpha = wgt.amax(2)[:, :, None]  # (B, k, 1, H, W)
        under = reference[:, None].float()
        if origin is not None:  # vacated: the start disc of a track that has moved, where no paste covers it
            gone = (origin[:, None] * left[:, t0 : t0 + k, :, None, None]).amax(2)  # (B, k, H, W)
            vac = gone[:, :, None] * (1 - alpha)  # (B, k, 1, H, W)
            under = (1 - vac) * under + vac * background[:, None]
            vacated[:, :, t0 : t0 + k] = vac.transpose(1, 2)
        frame = alpha * pasted + (1 - alpha) * under
        out[:, :, t0 : t0 + k] = frame.transpose(1, 2).to(out.dtype)
    return (out, vacated) if return_vacated else out


def trajectory_heatmaps(
    tracks: torch.Tensor,
    visible: torch.Tensor | None,
    height: int,
    width: int,
    sigma: float = 2.0,
    frames_per_chunk: int = 8,
) -> torch.Tensor:
    """Render trajectories as a video of coloured Gaussian blobs.

    tracks: float (B, T, N, 2) (x, y) in pixels; visible: bool (B, T, N) or None (all visible); sigma in pixels.
    Returns float (B, 3, T, H, W) in [0, 1] (overlapping blobs saturate at 1).
    A Gaussian blob is separable, exp(-dx^2 / 2s^2) exp(-dy^2 / 2s^2), so the sum over tracks of colour x blob is one
    (H, N) x (N, W) product per frame and channel: nothing of size N x H x W is ever built, and frames are rendered
    `frames_per_chunk` at a time into the output (memory: the output plus O(chunk (N (H + W) + H W))).
    """
    if tracks.ndim != 4 or tracks.shape[-1] != 2:
        raise ValueError(f"tracks must be (B, T, N, 2), got {tuple(tracks.shape)}")
    b, t, n, _ = tracks.shape
    dev = tracks.device
    ys = torch.arange(height, device=dev, dtype=torch.float32)
    xs = torch.arange(width, device=dev, dtype=torch.float32)
    colours = PALETTE.to(dev)[torch.arange(n, device=dev) % len(PALETTE)]  # (N, 3)
    video = torch.empty(b, 3, t, height, width, device=dev)
    for t0 in range(0, t, frames_per_chunk):
        pts = tracks[:, t0 : t0 + frames_per_chunk].float()  # (B, c, N, 2)
        gx = torch.exp(-((xs - pts[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, c, N, W)
        gy = torch.exp(-((ys - pts[..., 1:2]) ** 2) / (2 * sigma**2))  # (B, c, N, H)
        if visible is not None:
            gx = gx * visible[:, t0 : t0 + frames_per_chunk, :, None].to(gx.dtype)
        # (B, c, 3, H, N) @ (B, c, 1, N, W): per frame and channel a sum over tracks, no (N, H, W) intermediate
        rows = (gy[:, :, None] * colours.T[None, None, :, :, None]).transpose(-1, -2)
        video[:, :, t0 : t0 + frames_per_chunk] = (rows @ gx[:, :, None]).transpose(1, 2).clamp_(0, 1)
    return video


def image_to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(image))
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got {tuple(x.shape)}")
    return x.permute(2, 0, 1).float() / 127.5 - 1.0


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


class Conditioner:
    """Builds the backbone's condition channels from reference images and trajectories (training and inference).

    `heatmap_sigma` is in pixels of the generated video. Shapes: reference (B, 3, H, W) in [-1, 1]; tracks
    (B, T, N, 2) pixels; visible (B, T, N) bool; T video frames (T must be a valid frame count for the codec).
    """

    def __init__(
        self,
        codec: Codec,
        heatmap_sigma: float = 2.0,
        reference_frames: str = "first",
        motion_preview_radius: float = 0.0,
        preview_fill: float = 0.0,
    ) -> None:
        if reference_frames not in REFERENCE_FRAMES:
            raise ValueError(f"reference_frames must be one of {REFERENCE_FRAMES}, got {reference_frames!r}")
        if motion_preview_radius < 0:
            raise ValueError(f"motion_preview_radius must be >= 0, got {motion_preview_radius}")
        if preview_fill < 0 or (preview_fill > 0 and motion_preview_radius <= 0):
            raise ValueError(
                f"motion_preview_fill must be >= 0 and needs motion_preview_radius > 0, got {preview_fill}"
            )
        self.codec = codec
        self.heatmap_sigma = heatmap_sigma
        self.reference_frames = reference_frames
        self.motion_preview_radius = motion_preview_radius
        self.preview_fill = preview_fill

    @property
    def channels(self) -> int:
        return cond_channels(self.codec, self.motion_preview_radius > 0, self.preview_fill > 0)

    def trajectory_channel_index(self) -> list[int]:
        """Condition channels that carry the drags (trajectory latent, and the motion preview and its vacated flag
        when on): what trajectory dropout blanks (`blank_drags`)."""
        c = self.codec.latent_channels
        idx = list(range(c))
        if self.motion_preview_radius > 0:
            idx += list(range(2 * c + 1, 3 * c + 1 + int(self.preview_fill > 0)))
        return idx

    def preview_channels(self) -> tuple[int, int] | None:
        """[a, b) of the motion-preview latent in the condition channels (None when off)."""
        c = self.codec.latent_channels
        return (2 * c + 1, 3 * c + 1) if self.motion_preview_radius > 0 else None

    def blank_drags(self, cond: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Condition channels with the drags removed where `drop` (B,) bool: the trajectory latent (and, with the
        plain preview, the preview) -> 0; with `preview_fill` the preview -> the preview of no drags (the reference
        latent in every frame, so a model whose x0 builds on the preview still has an image to build on) and the
        vacated flag -> 0."""
        d = drop.view(-1, 1, 1, 1, 1)
        out = cond.clone()
        tc = self.trajectory_channel_index()
        if self.preview_fill <= 0:
            out[:, tc] = torch.where(d, torch.zeros_like(out[:, tc]), out[:, tc])
            return out
        c = self.codec.latent_channels
        a, b = self.preview_channels()
        out[:, :c] = torch.where(d, torch.zeros_like(out[:, :c]), out[:, :c])
        ref = (
            out[:, c : 2 * c]
            if self.reference_frames == "all"
            else out[:, c : 2 * c, :1].expand_as(out[:, a:b])
        )
        out[:, a:b] = torch.where(d, ref, out[:, a:b])
        out[:, b : b + 1] = torch.where(d, torch.zeros_like(out[:, b : b + 1]), out[:, b : b + 1])
        return out

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A pixel mask (B, 1, T, H, W) in [0, 1] -> (B, 1, F, h, w) on the codec's latent grid: the mean over each
        latent pixel's spatial patch, the max over its frames (frame 0 alone, then groups of temporal_factor)."""
        b, _, t, h, w = mask.shape
        sf, tf = self.codec.spatial_factor, self.codec.temporal_factor
        m = F.avg_pool2d(mask.transpose(1, 2).reshape(b * t, 1, h, w), sf).view(b, t, 1, h // sf, w // sf)
        m = m.transpose(1, 2)  # (B, 1, T, h, w)
        if tf == 1:
            return m
        first, rest = m[:, :, :1], m[:, :, 1:]
        rest = rest.reshape(b, 1, (t - 1) // tf, tf, h // sf, w // sf).amax(3)
        return torch.cat([first, rest], dim=2)

    @torch.no_grad()
    def drag_latents(
        self, reference: torch.Tensor, tracks: torch.Tensor, visible: torch.Tensor | None
    ) -> torch.Tensor:
        """The channels that depend on the drags, in `trajectory_channel_index` order."""
        _, _, height, width = reference.shape
        traj = self.trajectory_latents(tracks, visible, height, width)
        if self.motion_preview_radius <= 0:
            return traj
        preview, vacated = motion_preview(
            reference,
            tracks,
            visible,
            self.motion_preview_radius,
            fill=self.preview_fill,
            return_vacated=True,
        )
        parts = [traj, self.codec.encode(preview).to(traj.dtype)]
        if self.preview_fill > 0:
            parts.append(self.latent_mask(vacated).to(traj.dtype))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def trajectory_latents(self, tracks: torch.Tensor, visible: torch.Tensor | None, height: int, width: int):
        heat = trajectory_heatmaps(tracks, visible, height, width, self.heatmap_sigma)
        return self.codec.encode(heat * 2 - 1)  # encoded like a video in [-1, 1]

    @torch.no_grad()
    def reference_latent(self, reference: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, 1, h, w): the image encoded as a one-frame video."""
        return self.codec.encode(reference[:, :, None])

    @torch.no_grad()
    def __call__(
        self, reference: torch.Tensor, tracks: torch.Tensor, visible: torch.Tensor | None
    ) -> torch.Tensor:
        """Condition channels (B, 2C + 1, F, h, w), or (B, 3C + 1, F, h, w) with the motion preview
        (+ 1: the vacated flag with `preview_fill`)."""
        drag = self.drag_latents(reference, tracks, visible)
        c = self.codec.latent_channels
        traj, preview = drag[:, :c], drag[:, c:]  # preview: 0 channels when off
        ref = self.reference_latent(reference).to(traj.dtype)
        b, _, f, h, w = traj.shape
        if self.reference_frames == "all":
            ref_full = ref.expand(-1, -1, f, -1, -1)
        else:
            ref_full = torch.zeros_like(traj)
            ref_full[:, :, :1] = ref
        mask = torch.zeros(b, 1, f, h, w, dtype=traj.dtype, device=traj.device)
        mask[:, :, 0] = 1.0
        return torch.cat([traj, ref_full, mask, preview], dim=1)

    @torch.no_grad()
    def _first_frame(
        self, reference: torch.Tensor, tracks: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """Frame 0's channels from tracks (B, 2, N, 2) = (frame 0, each drag's farthest point): in frame 0 every
        drag is at its start, so the motion preview is the reference itself (with `preview_fill`, exactly: nothing
        has moved or been vacated yet; without, a paste of each start disc onto itself, equal to rounding) and its
        latent is the reference latent; the preview is not rendered (the most expensive part of a stream's first
        frame)."""
        traj = self.trajectory_latents(tracks, visible, reference.shape[2], reference.shape[3])[:, :, :1]
        ref = self.reference_latent(reference).to(traj.dtype)
        b, _, _, h, w = traj.shape
        parts = [traj, ref, torch.ones(b, 1, 1, h, w, dtype=traj.dtype, device=traj.device), ref]
        if self.preview_fill > 0:
            parts.append(torch.zeros(b, 1, 1, h, w, dtype=traj.dtype, device=traj.device))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def frames(
        self,
        reference: torch.Tensor,
        tracks: torch.Tensor,
        visible: torch.Tensor | None,
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """The condition channels of latent frames [start, stop) alone: `self(reference, tracks, visible)[:, :, start:
        stop]` without computing the other frames (a stream conditions each frame when it starts it).

        With a codec of temporal factor 1, frame t's channels depend only on frame t, frame 0 (the drags' starts
        and visibility), whether each drag has left its start by frame t and whether it moves at all; so this runs
        `self` on frame 0, one frame per drag holding it where it first left its start (if before `start`),
        frames [start, stop) and one more frame per drag at its farthest visible position (which decides "moves"),
        and drops the extra frames (tests/test_streaming.py checks the equality). Other codecs compute every frame.
        """
        if self.codec.temporal_factor != 1:
            return self(reference, tracks, visible)[:, :, start:stop]
        b, t, n, _ = tracks.shape
        vis = (
            torch.ones(b, t, n, dtype=torch.bool, device=tracks.device) if visible is None else visible.bool()
        )
        ok = vis & vis[:, :1]
        dist = (tracks.float() - tracks[:, :1].float()).norm(dim=-1) * ok  # (B, T, N)
        far = dist.argmax(1)  # (B, N)
        far_tracks = tracks.gather(1, far[:, None, :, None].expand(b, 1, n, 2))
        far_vis = vis.gather(1, far[:, None, :])
        if start == 0:
            tr = torch.cat([tracks[:, start:stop], far_tracks], dim=1)
            vv = torch.cat([vis[:, start:stop], far_vis], dim=1)
            if stop == 1 and self.motion_preview_radius > 0:
                return self._first_frame(reference, tr, vv)
            return self(reference, tr, vv)[:, :, :-1]
        # one frame before the window holds each drag where it first left its start, if it did before `start`
        # (whether a drag has left by frame t decides what its start shows), else at its start
        away = dist > MOVED_PX
        first = torch.where(away.any(1), away.float().argmax(1), torch.full_like(far, t))  # (B, N)
        idx = torch.where(first < start, first, torch.zeros_like(first))
        before_tracks = tracks.gather(1, idx[:, None, :, None].expand(b, 1, n, 2))
        before_vis = vis.gather(1, idx[:, None, :])
        tr = torch.cat([tracks[:, :1], before_tracks, tracks[:, start:stop], far_tracks], dim=1)
        vv = torch.cat([vis[:, :1], before_vis, vis[:, start:stop], far_vis], dim=1)
        return self(reference, tr, vv)[:, :, 2:-1]
