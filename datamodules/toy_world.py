"""The toy world: short clips of 1-3 textured sprites moving along smooth paths over a textured background,
with exact ground-truth point tracks. The embedded default dataset (no download, seconds to write).

Each clip is a pure function of (seed, split, index), so splits never overlap and any clip can be
re-rendered. Tracks per sprite: its centre plus ``points_per_sprite`` points inside it (they move with
it); plus ``background_points`` static points on the background. A point is invisible when it is out of
frame or covered by a sprite drawn in front of it (ground truth: it becomes visible again when uncovered).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from datamodules.shards import ShardSink, encode_sample

log = logging.getLogger(__name__)

__all__ = ["ToyWorldConfig", "ToyClip", "render_clip", "write_toy_world", "main"]

SPLITS = ("train", "val", "test")
SHAPES = ("disc", "square", "triangle", "diamond", "cross")
# Saturated colours, far from the muted background palette, each with a prompt word.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "magenta": (215, 50, 200),
    "cyan": (40, 210, 215),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
TEXTURES = ("plain", "striped", "checkered", "dotted")
TOY_WORLD_VERSION = 2
"""Bumped when rendering changes, so a folder written by an older generator is rewritten, not reused."""
NEGATIVE_PROMPT = "blurry, distorted shapes, flickering, sprites merging, jitter, low quality"


@dataclass(frozen=True)
class ToyWorldConfig:
    """How toy clips look. Sizes scale with ``size`` (defaults tuned for 64 x 64)."""

    size: int = 64
    """Clip height and width, pixels (square clips)."""
    frames: int = 17
    """Frames per clip."""
    fps: float = 16.0
    min_sprites: int = 1
    max_sprites: int = 3
    radius: tuple[float, float] = (6.0, 10.0)
    """Sprite radius range at size 64, pixels (scaled by size / 64)."""
    static_prob: float = 0.25
    """Chance that a sprite stays put (at least one sprite per clip always moves)."""
    displacement: tuple[float, float] = (0.15, 0.5)
    """Start-to-end travel of a moving sprite, as a fraction of ``size``."""
    points_per_sprite: int = 4
    """Tracked points inside each sprite besides its centre."""
    background_points: int = 3
    """Static tracked points on the background."""

    def __post_init__(self):
        if self.size < 16 or self.frames < 2:
            raise ValueError(f"toy world needs size >= 16 and frames >= 2, got {self.size}, {self.frames}")
        if not 1 <= self.min_sprites <= self.max_sprites <= 3:
            raise ValueError("need 1 <= min_sprites <= max_sprites <= 3")


@dataclass
class ToyClip:
    """A rendered clip: video uint8 (T, H, W, 3), tracks float32 (T, N, 2) pixels, visible bool (T, N)."""

    video: np.ndarray
    tracks: np.ndarray
    visible: np.ndarray
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# Geometry: signed distances (negative inside), in pixels, on sprite-local coordinates (u, v).


def _sdf(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    if shape == "disc":
        return np.hypot(u, v) - r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85 * r
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - 1.2 * r) / math.sqrt(2)
    if shape == "cross":
        arm, half = 1.05 * r, 0.42 * r
        a = np.maximum(np.abs(u) - arm, np.abs(v) - half)
        b = np.maximum(np.abs(u) - half, np.abs(v) - arm)
        return np.minimum(a, b)
    if shape == "triangle":
        # Equilateral, pointing up, centroid at the origin; max of the three edge half-plane distances.
        rr = 1.15 * r
        d = [v - 0.5 * rr]  # bottom edge (image y grows downward)
        for ang in (math.radians(210), math.radians(330)):
            nx, ny = math.cos(ang), math.sin(ang)
            d.append(u * nx + v * ny - 0.5 * rr)
        return np.maximum.reduce(d)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(kind: str, u: np.ndarray, v: np.ndarray, r: float, phase: float) -> np.ndarray:
    """Brightness modulation in [-1, 1] that moves with the sprite (so points inside are trackable)."""
    period = max(3.0, 0.7 * r)
    if kind == "plain":
        return 0.35 * np.sin(2 * np.pi * (u + 0.5 * v) / (2.5 * r) + phase)  # a gentle shading ramp
    if kind == "striped":
        return np.sin(2 * np.pi * u / period + phase)
    if kind == "checkered":
        return np.sin(2 * np.pi * u / period + phase) * np.sin(2 * np.pi * v / period + phase)
    if kind == "dotted":
        return 2.0 * (np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period) > 0.5) - 1.0
    raise ValueError(f"unknown texture {kind!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static, muted background: low-frequency colour waves plus fine blurred grain. float32 (H, W, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(70, 150, size=3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    for _ in range(3):
        fx, fy = rng.uniform(-2.5, 2.5, size=2) * 2 * np.pi / size
        wave = np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * np.pi))
        img += wave[..., None] * rng.uniform(-14, 14, size=3)
    grain = rng.normal(0, 1, size=(size + 2, size + 2, 3)).astype(np.float32)
    grain = (grain[:-2, :-2] + grain[1:-1, 1:-1] + grain[2:, 2:] + grain[1:-1, :-2] + grain[1:-1, 2:]) / 5
    img += 10.0 * grain  # gives the background enough texture for the tracker
    return img


def _path(rng: np.random.Generator, cfg: ToyWorldConfig, radius: float, static: bool) -> np.ndarray:
    """Sprite centre per frame, float (T, 2): a cubic Bezier from start to end (smooth, bounded)."""
    s = cfg.size
    lo, hi = radius + 1.0, s - 1.0 - radius
    p0 = rng.uniform(lo, hi, size=2)
    if static:
        return np.repeat(p0[None], cfg.frames, axis=0)
    dist = rng.uniform(*cfg.displacement) * s
    for _ in range(20):  # prefer a direction that stays in frame, so clipping does not shorten the travel
        ang = rng.uniform(0, 2 * np.pi)
        p3 = p0 + dist * np.array([math.cos(ang), math.sin(ang)])
        if (p3 >= lo).all() and (p3 <= hi).all():
            break
    p3 = np.clip(p3, lo, hi)
    chord = p3 - p0
    normal = np.array([-chord[1], chord[0]])
    ctrl = [p0 + f * chord + rng.uniform(-0.35, 0.35) * normal for f in (1 / 3, 2 / 3)]
    p1, p2 = (np.clip(c, lo, hi) for c in ctrl)
    t = np.linspace(0, 1, cfg.frames)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _coverage(sd: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance: 1 inside, 0 outside, a 1 px ramp at the edge."""
    return np.clip(0.5 - sd, 0.0, 1.0)


def render_clip(
    seed: int | list[int], cfg: ToyWorldConfig | None = None, hide: int | Collection[int] = ()
) -> ToyClip:
    """Render one toy clip.

    Args:
        seed: anything ``np.random.default_rng`` accepts; the clip is a pure function of it.
        cfg: looks (``ToyWorldConfig()`` by default).
        hide: sprite index or indices not to draw (same random draws, and hidden sprites occlude nothing);
            used by tests to find the pixels a sprite occupies from the images alone.

    Returns:
        ``ToyClip``: video uint8 (T, S, S, 3); tracks float32 (T, N, 2) pixels; visible bool (T, N);
        meta with prompt, negative_prompt, fps, width, height, source, sprites and per-track roles.
    """
    cfg = cfg or ToyWorldConfig()
    rng = np.random.default_rng(seed)
    hidden = {hide} if isinstance(hide, int) else set(hide)
    s, t_len = cfg.size, cfg.frames
    scale = s / 64.0
    bg = _background(rng, s)
    n_sprites = int(rng.integers(cfg.min_sprites, cfg.max_sprites + 1))
    shapes = rng.choice(len(SHAPES), size=n_sprites, replace=False)
    colors = rng.choice(len(COLORS), size=n_sprites, replace=False)
    statics = rng.random(n_sprites) < cfg.static_prob
    statics[rng.integers(n_sprites)] = False  # at least one sprite moves
    sprites = []
    for k in range(n_sprites):
        radius = float(rng.uniform(*cfg.radius) * scale)
        sprites.append(
            {
                "shape": SHAPES[shapes[k]],
                "color": list(COLORS)[colors[k]],
                "texture": TEXTURES[int(rng.integers(len(TEXTURES)))],
                "radius": radius,
                "static": bool(statics[k]),
                "phase": float(rng.uniform(0, 2 * np.pi)),
                "path": _path(rng, cfg, radius, bool(statics[k])),
            }
        )
    # Track points: centre + points strictly inside each sprite (rejection-sampled on its SDF), then background.
    local_pts, roles, owner = [], [], []
    for k, sp in enumerate(sprites):
        local_pts.append((0.0, 0.0))
        roles.append("centre")
        owner.append(k)
        got, tries = 0, 0
        # 1.5 px inside the edge; less for sprites so small (sizes < 64) that no point lies that deep in a cross arm
        depth = min(1.5, 0.3 * sp["radius"])
        while got < cfg.points_per_sprite:
            tries += 1
            if tries > 100_000:
                raise ValueError(
                    f"cannot place track points inside a {sp['shape']} of radius {sp['radius']:.1f} px"
                )
            u, v = rng.uniform(-sp["radius"], sp["radius"], size=2)
            if _sdf(sp["shape"], np.array(u), np.array(v), sp["radius"]) < -depth:
                local_pts.append((float(u), float(v)))
                roles.append("on")
                owner.append(k)
                got += 1
    bg_pts = rng.uniform(2.0, s - 3.0, size=(cfg.background_points, 2))
    n_tracks = len(local_pts) + cfg.background_points
    tracks = np.zeros((t_len, n_tracks, 2), np.float32)
    for j, (k, (u, v)) in enumerate(zip(owner, local_pts)):
        tracks[:, j] = sprites[k]["path"] + np.array([u, v])
    tracks[:, len(local_pts) :] = bg_pts
    owner_all = np.array(owner + [-1] * cfg.background_points)
    roles += ["background"] * cfg.background_points

    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    video = np.empty((t_len, s, s, 3), np.uint8)
    visible = np.ones((t_len, n_tracks), bool)
    for t in range(t_len):
        img = bg.copy()
        for k, sp in enumerate(sprites):  # painter's order: later sprites are in front
            cx, cy = sp["path"][t]
            u, v = xx - cx, yy - cy
            sd = _sdf(sp["shape"], u, v, sp["radius"])
            if k not in hidden:
                tex = _texture(sp["texture"], u, v, sp["radius"], sp["phase"])
                col = np.asarray(COLORS[sp["color"]], np.float32) * (1.0 + 0.22 * tex[..., None])
                col *= np.where(sd > -1.2, 0.55, 1.0)[..., None]  # dark outline keeps the silhouette crisp
                a = _coverage(sd)[..., None]
                img = img * (1 - a) + col * a
            # Occlusion is exact: a point is hidden when it lies inside a sprite drawn after its owner.
            px, py = tracks[t, :, 0], tracks[t, :, 1]
            inside = _sdf(sp["shape"], px - cx, py - cy, sp["radius"]) < 0.0
            behind = (owner_all < k) | (owner_all == -1)
            visible[t] &= ~(inside & behind) | (k in hidden)
        video[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    x, y = tracks[..., 0], tracks[..., 1]
    visible &= (x >= 0) & (x <= s - 1) & (y >= 0) & (y <= s - 1)

    words = [
        f"{'an' if sp['color'][0] in 'aeiou' else 'a'} {sp['color']}"
        f"{'' if sp['texture'] == 'plain' else ' ' + sp['texture']} {sp['shape']}"
        for sp in sprites
    ]
    prompt = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    meta = {
        "prompt": prompt,
        "negative_prompt": NEGATIVE_PROMPT,
        "fps": cfg.fps,
        "width": s,
        "height": s,
        "source": "toyworld",
        "sprites": [{k: v for k, v in sp.items() if k not in ("path", "phase")} for sp in sprites],
        "track_owner": owner_all.tolist(),
        "track_role": roles,
    }
    return ToyClip(video=video, tracks=tracks, visible=visible, meta=meta)


def clip_seed(seed: int, split: str, index: int) -> list[int]:
    """The RNG seed of clip ``index`` of ``split``: independent streams, so splits never share a clip."""
    return [int(seed), SPLITS.index(split), int(index)]


# ----------------------------------------------------------------------------------------------------------
# Writing


def _split_counts(num: int, samples_per_shard: int, min_shards: int) -> int:
    """Samples per shard so that a split has at least ``min_shards`` shards when it has that many samples."""
    if num <= 0:
        return 1
    return max(1, min(samples_per_shard, math.ceil(num / min_shards)))


def write_toy_world(
    out_dir: str | os.PathLike,
    num_train: int = 3000,
    num_val: int = 128,
    num_test: int = 128,
    size: int = 64,
    frames: int = 17,
    seed: int = 0,
    samples_per_shard: int = 250,
    min_shards: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    **look,
) -> dict:
    """Write ``out_dir/{train,val,test}/toy-%06d.tar`` shards in the sample schema (docs/method.md).

    Every split gets at least ``min_shards`` shards (when it has that many clips) so DDP ranks and loader
    workers can split it. A finished folder written with the same settings is left as is (a manifest
    ``toyworld.json`` records them); different settings need ``overwrite=True``.

    Returns:
        The manifest dict: settings, shard lists per split, clip counts, seconds taken.
    """
    out = Path(out_dir)
    cfg = ToyWorldConfig(size=size, frames=frames, **look)
    settings = {
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "seed": seed,
        "samples_per_shard": samples_per_shard,
        "min_shards": min_shards,
        "config": asdict(cfg),
    }
    manifest_path = out / "toyworld.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        complete = all((out / p).exists() for split in SPLITS for p in old.get("shards", {}).get(split, []))
        same = old.get("settings") == json.loads(json.dumps(settings))
        if same and complete and old.get("version") == TOY_WORLD_VERSION:
            log.info("toy world already written in %s with these settings; nothing to do", out)
            return old
        if same:  # same request, older generator or a partial write: safe to redo
            log.info("rewriting the toy world in %s (generator version or shards changed)", out)
        elif not overwrite:
            raise FileExistsError(
                f"{out} holds a toy world written with other settings; pass --overwrite to replace it"
            )
    for split in SPLITS:
        if (out / split).exists():
            shutil.rmtree(out / split)
    manifest_path.unlink(missing_ok=True)

    t0 = time.perf_counter()
    counts = {"train": num_train, "val": num_val, "test": num_test}
    shards: dict[str, list[str]] = {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    bar = (
        tqdm(total=sum(counts.values()), desc="toy world", unit="clip", disable=not progress)
        if tqdm
        else None
    )
    for split, n in counts.items():
        per = _split_counts(n, samples_per_shard, min_shards)
        with ShardSink(out / split, "toy", maxcount=per) as sink:
            for i in range(n):
                clip = render_clip(clip_seed(seed, split, i), cfg)
                sink.write(encode_sample(f"{split}{i:07d}", clip.video, clip.tracks, clip.visible, clip.meta))
                if bar is not None:
                    bar.update(1)
        shards[split] = [str(p.relative_to(out)) for p in sink.written]
    if bar is not None:
        bar.close()
    manifest = {
        "version": TOY_WORLD_VERSION,
        "settings": settings,
        "shards": shards,
        "clips": counts,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    from ardrag.video import atomic_write_bytes

    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``ardrag-toyworld OUT_DIR [--num-train N ...]``: write the toy-world shards."""
    ap = argparse.ArgumentParser(
        prog="ardrag-toyworld",
        description=" ".join(__doc__.split("\n\n")[0].split()),  # the first paragraph, not its first line
    )
    ap.add_argument(
        "out_dir", nargs="?", default="data/toyworld", help="output folder (default data/toyworld)"
    )
    for split, n in (("train", 3000), ("val", 128), ("test", 128)):
        ap.add_argument(
            f"--num-{split}", f"--num_{split}", type=int, default=n, help=f"clips in {split}/ (default {n})"
        )
    ap.add_argument("--size", type=int, default=64, help="clip height = width, pixels (default 64)")
    ap.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    ap.add_argument("--seed", type=int, default=0, help="every clip is a function of (seed, split, index)")
    ap.add_argument(
        "--samples-per-shard",
        "--samples_per_shard",
        type=int,
        default=250,
        help="clips per NAME-%%06d.tar shard (default 250)",
    )
    ap.add_argument(
        "--overwrite", action="store_true", help="replace a toy world written with other settings"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        m = write_toy_world(
            args.out_dir,
            num_train=args.num_train,
            num_val=args.num_val,
            num_test=args.num_test,
            size=args.size,
            frames=args.frames,
            seed=args.seed,
            samples_per_shard=args.samples_per_shard,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ValueError, FileExistsError) as e:
        print(f"ardrag-toyworld: error: {e}", file=sys.stderr)
        return 2
    n_shards = {k: len(v) for k, v in m["shards"].items()}
    print(f"toy world in {args.out_dir}: clips {m['clips']}, shards {n_shards}, {m['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
