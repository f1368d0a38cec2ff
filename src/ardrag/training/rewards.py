"""Per-frame rewards of generated videos (the paper: R = R_quality + R_motion), pluggable, weighted in the config.

Every reward maps (videos uint8 (N, T, H, W, 3), target tracks (N, T, K, 2) px, target visibility (N, T, K)) to
per-video-frame rewards (N, T) where the value at frame t depends only on frames <= t (the tracker runs forward
frame to frame). `frame_rewards_to_latent` averages them over the video frames of each latent frame.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ardrag.tracking import hold_last, track_points


@dataclass
class RewardConfig:
    """Reward terms and weights (a weight of 0 switches a term off).

    Motion: R_motion(t) = lam * max(0, alpha - err_t^2), err_t = mean distance between where the tracker finds the
    dragged points in frame t and where the drag says they should be, in units of the frame diagonal; lost points
    are held at their last position. alpha = 0.01: an error of 10% of the diagonal (6.4 px at 64 x 64, while a
    static video of the toy test split is off by 10.7 px on average) already earns nothing, so the reward
    separates following from not following; lam = 1 / alpha scales a perfect frame to 1.

    Quality (appearance consistency, weight-free so it runs offline; the paper's aesthetic score is the separate
    `aesthetic` term, from local weights): exp(-d_t / tau), d_t = mean absolute difference (intensity in
    [0, 1]) between the patch around each dragged point where the tracker finds it in frame t and the patch
    around its start in frame 0. It penalises sprites that smear, change colour or dissolve into noise while
    moving.
    """

    motion: float = 1.0
    quality: float = 0.2
    motion_alpha: float = 0.01
    motion_lambda: float = 100.0
    appearance_patch: int = 5
    """Patch side, pixels (odd)."""
    appearance_tau: float = 0.1
    aesthetic: float = 0.0
    """Weight of the paper's R_quality, the LAION aesthetic score of each frame (LAION's 1-10 scale divided by 10,
    so a weight of 1 adds at most 1 like the motion term); needs local weights (`aesthetic_clip`, `aesthetic_head`)
    and downloads nothing. 0: off (the default: the weights are not shipped)."""
    aesthetic_clip: str | None = None
    """Local folder for transformers' CLIPVisionModelWithProjection (ViT-L/14 for LAION's predictor)."""
    aesthetic_head: str | None = None
    """Local predictor weights, e.g. sac+logos+ava1-l14-linearMSE.pth (as ardrag.aesthetic reads)."""
    aesthetic_device: str = "cpu"
    extra: dict[str, float] = field(default_factory=dict)
    """More reward terms: {"package.module:function": weight}. Each function maps (videos uint8 (N, T, H, W, 3),
    tracks (N, T, K, 2), visible (N, T, K)) to per-frame rewards (N, T) that depend only on frames <= t; it is
    logged as train/reward/<function> and added to the total with its weight (e.g. an aesthetic scorer)."""


RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def check_reward_config(cfg: RewardConfig) -> None:
    """Fail early (at module construction, not at the first reward) on a term that cannot run."""
    if cfg.aesthetic:
        if not cfg.aesthetic_clip or not cfg.aesthetic_head:
            raise ValueError(
                "reward.aesthetic > 0 needs local weights: reward.aesthetic_clip (a CLIP ViT-L/14 folder for "
                "transformers) and reward.aesthetic_head (the LAION predictor file); or set reward.aesthetic: 0"
            )
        _aesthetic_scorer(cfg.aesthetic_clip, cfg.aesthetic_head, cfg.aesthetic_device)


@functools.lru_cache(maxsize=2)
def _aesthetic_scorer(clip: str, head: str, device: str):
    """The LAION scorer the benchmark uses too (one instance per weights: the CLIP tower is large)."""
    from ardrag.aesthetic import AestheticScorer

    return AestheticScorer(clip, head, device=device)


def aesthetic_reward(videos: np.ndarray, cfg: RewardConfig) -> np.ndarray:
    """(N, T) LAION aesthetic score of every frame / 10 (a frame's reward depends on that frame only)."""
    scorer = _aesthetic_scorer(cfg.aesthetic_clip, cfg.aesthetic_head, cfg.aesthetic_device)
    n, t_len = videos.shape[:2]
    return (scorer(videos.reshape(n * t_len, *videos.shape[2:])) / 10.0).reshape(n, t_len).astype(np.float32)


def load_reward(spec: str) -> RewardFn:
    """The function named by "package.module:function" (a clear error when it cannot be found)."""
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise ValueError(f"reward {spec!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {spec!r} cannot be loaded: {e}") from None
    return fn


def reward_name(spec: str) -> str:
    return spec.partition(":")[2]


def motion_reward(held: np.ndarray, tracks: np.ndarray, tv: np.ndarray, diag: float, cfg: RewardConfig):
    """(T,) motion reward of one video from tracked positions `held` (T, K, 2) vs targets (T, K, 2)."""
    err = np.linalg.norm(held - tracks, axis=-1) / diag  # (T, K)
    frame_err = np.where(tv.any(1), (err * tv).sum(1) / np.maximum(tv.sum(1), 1), 0.0)
    return cfg.motion_lambda * np.maximum(0.0, cfg.motion_alpha - frame_err**2)


def appearance_reward(
    video: np.ndarray, held: np.ndarray, start: np.ndarray, cfg: RewardConfig
) -> np.ndarray:
    """(T,) appearance reward of one video; held (T, K, 2) tracked positions, start (K, 2) frame-0 targets."""
    t_len, h, w = video.shape[:3]
    r = cfg.appearance_patch // 2
    pad = np.pad(video.astype(np.float32) / 255.0, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")

    def patches(t: int, pts: np.ndarray) -> np.ndarray:
        xy = np.clip(np.round(pts).astype(int), 0, [w - 1, h - 1])
        return np.stack([pad[t, y : y + 2 * r + 1, x : x + 2 * r + 1] for x, y in xy])

    ref = patches(0, start)
    return np.array(
        [np.exp(-np.abs(patches(t, held[t]) - ref).mean() / cfg.appearance_tau) for t in range(t_len)]
    )


def compute_rewards(
    cfg: RewardConfig, videos: np.ndarray, tracks: np.ndarray, visible: np.ndarray
) -> dict[str, np.ndarray]:
    """{"motion", "quality", ["aesthetic",] <extra terms>, "total"}: per-video-frame rewards (N, T); the terms
    unweighted, the total weighted.

    videos uint8 (N, T, H, W, 3); tracks (N, T, K, 2) target pixels; visible (N, T, K). One tracker pass per video
    (`ardrag.tracking.track_points`, seeded at the frame-0 targets); it runs forward frame to frame, so the reward
    at frame t depends only on frames <= t.
    """
    n, t_len, h, w = videos.shape[:4]
    diag = float(np.hypot(h, w))
    motion = np.zeros((n, t_len), np.float32)
    quality = np.ones((n, t_len), np.float32)
    for i in range(n):
        tv = visible[i] & visible[i][:1]  # points seeded on a visible frame-0 target
        if not tv[0].any():
            continue
        found, kept = track_points(videos[i], tracks[i, 0])
        held = hold_last(found, kept)[:, tv[0]]
        tgt, tvk = tracks[i][:, tv[0]], tv[:, tv[0]]
        if cfg.motion:
            motion[i] = motion_reward(held, tgt, tvk, diag, cfg)
        if cfg.quality:
            quality[i] = appearance_reward(videos[i], held, tgt[0], cfg)
    out = {"motion": motion, "quality": quality}
    total = cfg.motion * motion + cfg.quality * quality
    if cfg.aesthetic:
        out["aesthetic"] = aesthetic_reward(videos, cfg)
        total = total + cfg.aesthetic * out["aesthetic"]
    for spec, weight in cfg.extra.items():
        r = np.asarray(load_reward(spec)(videos, tracks, visible), np.float32)
        if r.shape != (n, t_len):
            raise ValueError(f"reward {spec!r} returned shape {r.shape}, expected {(n, t_len)}")
        out[reward_name(spec)] = r
        total = total + weight * r
    out["total"] = total
    return out


def frame_rewards_to_latent(rewards: np.ndarray, num_latent: int, temporal_factor: int) -> np.ndarray:
    """(N, T) per-video-frame rewards -> (N, num_latent) per latent frame (mean over the frames it decodes to:
    latent 0 is video frame 0, latent m > 0 covers frames (m-1) f + 1 .. m f, as in the Wan VAE)."""
    out = np.zeros((rewards.shape[0], num_latent), np.float32)
    t_len = rewards.shape[1]
    for m in range(num_latent):
        lo, hi = (0, 1) if m == 0 else ((m - 1) * temporal_factor + 1, m * temporal_factor + 1)
        lo, hi = min(lo, t_len - 1), min(max(hi, lo + 1), t_len)
        out[:, m] = rewards[:, lo:hi].mean(axis=1)
    return out
