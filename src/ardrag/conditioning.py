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
cannot fetch from elsewhere in the frame by attention alone (README "Method notes").
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


def cond_channels(codec: Codec, motion_preview: bool = False) -> int:
    """Number of extra backbone input channels for this codec: trajectory + reference latents + mask
    (+ the motion-preview latent)."""
    return (3 if motion_preview else 2) * codec.latent_channels + 1


def motion_preview(
    reference: torch.Tensor,
    tracks: torch.Tensor,
    visible: torch.Tensor | None,
    radius: float,
    frames_per_chunk: int = 4,
) -> torch.Tensor:
    """The reference image with each drag's neighbourhood moved along the drag: float (B, 3, T, H, W) in [-1, 1].

    reference (B, 3, H, W) in [-1, 1]; tracks (B, T, N, 2) pixels (x, y); visible (B, T, N) bool or None.
    In frame t, track k (visible in frames 0 and t) pastes the reference disc of `radius` px around its start
    p_k(0) at p_k(t) (an anti-aliased disc; overlapping pastes average); pixels no disc covers keep the reference.
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
    for t0 in range(0, t, frames_per_chunk):
        pts = tracks[:, t0 : t0 + frames_per_chunk]  # (B, k, N, 2)
        k = pts.shape[1]
        px, py = pts[..., 0, None, None], pts[..., 1, None, None]  # (B, k, N, 1, 1)
        dist = torch.sqrt((xs - px) ** 2 + (ys - py) ** 2)
        wgt = (radius + 0.5 - dist).clamp(0, 1) * ok[:, t0 : t0 + k, :, None, None]  # (B, k, N, H, W)
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
        frame = alpha * pasted + (1 - alpha) * reference[:, None].float()
        out[:, :, t0 : t0 + k] = frame.transpose(1, 2).to(out.dtype)
    return out


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
    ) -> None:
        if reference_frames not in REFERENCE_FRAMES:
            raise ValueError(f"reference_frames must be one of {REFERENCE_FRAMES}, got {reference_frames!r}")
        if motion_preview_radius < 0:
            raise ValueError(f"motion_preview_radius must be >= 0, got {motion_preview_radius}")
        self.codec = codec
        self.heatmap_sigma = heatmap_sigma
        self.reference_frames = reference_frames
        self.motion_preview_radius = motion_preview_radius

    @property
    def channels(self) -> int:
        return cond_channels(self.codec, self.motion_preview_radius > 0)

    def trajectory_channel_index(self) -> list[int]:
        """Condition channels that carry the drags (trajectory latent, and the motion preview when on): what
        trajectory dropout blanks."""
        c = self.codec.latent_channels
        idx = list(range(c))
        if self.motion_preview_radius > 0:
            idx += list(range(2 * c + 1, 3 * c + 1))
        return idx

    @torch.no_grad()
    def drag_latents(
        self, reference: torch.Tensor, tracks: torch.Tensor, visible: torch.Tensor | None
    ) -> torch.Tensor:
        """The channels that depend on the drags, in `trajectory_channel_index` order."""
        _, _, height, width = reference.shape
        traj = self.trajectory_latents(tracks, visible, height, width)
        if self.motion_preview_radius <= 0:
            return traj
        preview = motion_preview(reference, tracks, visible, self.motion_preview_radius)
        return torch.cat([traj, self.codec.encode(preview).to(traj.dtype)], dim=1)

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
        """Condition channels (B, 2C + 1, F, h, w), or (B, 3C + 1, F, h, w) with the motion preview."""
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
