"""WebDataset shards in the sample schema (docs/method.md): encode, write (atomically), read back, count corrupt samples.

One sample (key without dots):
    KEY.mp4          the clip, uint8 RGB frames encoded as MP4
    KEY.tracks.npy   float32 (T, N, 2), (x, y) pixels of the stored clip
    KEY.visible.npy  bool (T, N)
    KEY.json         {"prompt", "negative_prompt", "fps", "width", "height", "source", ...}

With ``ardrag-prepare --encode`` (all three or none; see ``ardrag.precomputed``):
    KEY.latents.npy        float32 (C, F, h, w), the codec's latents of the whole clip
    KEY.text.npy           float32 (L', D), the prompt's embedding without its trailing zero rows
    KEY.negative_text.npy  float32 (L', D), the negative prompt's
    and KEY.json "encoded": the encoders' probes, the full text length and the latent shape

A sample that cannot be decoded or violates the schema is skipped and counted in a ``SkipStats`` by reason,
and logged; it is never fatal and never silently dropped.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from ardrag.video import VideoReadError, decode_video_bytes, encode_mp4

log = logging.getLogger(__name__)

__all__ = [
    "SKIP_REASONS",
    "SampleError",
    "SkipStats",
    "ShardSink",
    "encode_sample",
    "decode_sample",
    "expand_shards",
    "iter_samples",
]

SKIP_REASONS = ("tar", "missing", "json", "video", "tracks")
"""Why a sample was skipped: unreadable tar member/shard, a missing field, bad JSON, undecodable or
too-short video, malformed tracks/visibility arrays (and "latents": malformed precomputed latents or embeddings,
counted when it occurs)."""

REQUIRED_FIELDS = ("mp4", "tracks.npy", "visible.npy", "json")
ENCODED_FIELDS = ("latents.npy", "text.npy", "negative_text.npy")
"""Written together by ``ardrag-prepare --encode`` (``ardrag.precomputed``)."""


class SampleError(ValueError):
    """A sample violates the schema; ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class SkipStats:
    """Counts of skipped (corrupt) samples by reason; ``total`` is their sum. Logged as they happen."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    """The first few 'reason: key: message' lines, for reports."""
    max_examples: int = 20

    def add(self, reason: str, key: str = "?", message: str = "") -> None:
        self.counts[reason] += 1
        line = f"{reason}: {key}: {message}"
        if len(self.examples) < self.max_examples:
            self.examples.append(line)
        log.warning("skipped corrupt sample (%s); %d skipped so far", line, self.total)

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def as_dict(self) -> dict[str, int]:
        """{"total": n, reason: count, ...} with every known reason present."""
        out = {"total": self.total}
        out.update({r: int(self.counts.get(r, 0)) for r in SKIP_REASONS})
        out.update({r: int(c) for r, c in self.counts.items() if r not in out})
        return out

    def tar_handler(self, exn: Exception) -> bool:
        """A webdataset ``handler``: count a shard/tar-level error and continue with the next one."""
        self.add("tar", "?", f"{type(exn).__name__}: {exn}")
        return True


def _count(stats: SkipStats | dict | None, reason: str, key: str, message: str) -> None:
    if isinstance(stats, SkipStats):
        stats.add(reason, key, message)
    else:
        if isinstance(stats, dict):
            stats[reason] = stats.get(reason, 0) + 1
            stats["total"] = stats.get("total", 0) + 1
        log.warning("skipped corrupt sample (%s: %s: %s)", reason, key, message)


# ----------------------------------------------------------------------------------------------------------
# Encoding


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def encode_sample(
    key: str,
    video: np.ndarray,
    tracks: np.ndarray,
    visible: np.ndarray,
    meta: Mapping[str, Any],
    mp4: bytes | None = None,
) -> dict[str, Any]:
    """Build one WebDataset sample dict (``__key__`` plus byte fields) in the sample schema (docs/method.md).

    Args:
        key: sample key, no dots.
        video: uint8 (T, H, W, 3) RGB.
        tracks: float (T, N, 2) pixels of ``video``.
        visible: bool (T, N).
        meta: JSON-able dict; must carry "prompt" (others are filled: negative_prompt, fps, width, height).
        mp4: ``video`` already encoded (when the caller tracked the decoded clip); encoded here if None.
    """
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain dots or slashes")
    video = np.asarray(video)
    tracks = np.asarray(tracks, dtype=np.float32)
    visible = np.asarray(visible, dtype=bool)
    t, h, w = video.shape[:3]
    if tracks.ndim != 3 or tracks.shape[0] != t or tracks.shape[2] != 2 or visible.shape != tracks.shape[:2]:
        raise ValueError(f"tracks {tracks.shape} / visible {visible.shape} do not match a {t}-frame video")
    fps = float(meta.get("fps", 16.0))
    full = {"prompt": "", "negative_prompt": "", "fps": fps, "width": w, "height": h, "source": "", **meta}
    full["width"], full["height"], full["num_frames"] = w, h, t
    return {
        "__key__": key,
        "mp4": encode_mp4(video, fps) if mp4 is None else mp4,
        "tracks.npy": _npy_bytes(tracks),
        "visible.npy": _npy_bytes(visible),
        "json": json.dumps(full).encode("utf-8"),
    }


class ShardSink:
    """Write samples to ``{out_dir}/{name}-%06d.tar`` with ``wds.ShardWriter``, atomically per shard.

    Each shard is written as ``.tar.tmp`` and renamed when complete, so a reader (or a re-run after a
    crash) never sees half a shard. ``on_shard(path, keys)`` is called after each rename (used by
    ``ardrag-prepare`` to record finished videos). Every tar member gets the time stamp ``mtime`` (default 0, as
    reproducible builds do; None: the time of writing), so the same samples give byte-identical shards: the
    benchmark keys its caches by the suite's bytes (``benchmark.methods.folder_fingerprint``), and a toy world
    written again, or on another machine, keeps them.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        name: str,
        maxcount: int = 100,
        start_shard: int = 0,
        on_shard=None,
        mtime: float | None = 0.0,
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.on_shard = on_shard
        self._keys: dict[str, list[str]] = {}
        self.written: list[Path] = []
        pattern = str(self.out_dir / f"{name}-%06d.tar.tmp")
        self._writer = wds.ShardWriter(
            pattern,
            maxcount=maxcount,
            start_shard=start_shard,
            verbose=0,
            post=self._finish_shard,
            mtime=mtime,
        )

    def _finish_shard(self, tmp_name: str) -> None:
        keys = self._keys.pop(tmp_name, [])
        if not keys:  # ShardWriter opens a stream eagerly; an empty one is not a shard
            os.unlink(tmp_name)
            return
        final = Path(tmp_name[: -len(".tmp")])
        os.replace(tmp_name, final)
        self.written.append(final)
        if self.on_shard is not None:
            self.on_shard(final, keys)

    def write(self, sample: dict[str, Any]) -> None:
        self._writer.write(sample)
        self._keys.setdefault(self._writer.fname, []).append(sample["__key__"])

    def close(self) -> list[Path]:
        """Finish the last shard; returns the paths of all shards written."""
        self._writer.close()
        return self.written

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------
# Decoding


def _load_npy(data: bytes, key: str, name: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt field
        raise SampleError("tracks", f"{name} is not a valid .npy ({e})") from None


def decode_sample(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Decode a raw WebDataset sample (byte fields) and check it against the schema.

    Returns:
        {"key": str, "video": uint8 (T, H, W, 3), "tracks": float32 (T, N, 2), "visible": bool (T, N),
        "meta": dict}, plus "latents", "text", "negative_text" (float32 arrays) when the sample has them.

    Raises:
        SampleError: with ``reason`` in ``SKIP_REASONS``.
    """
    key = str(raw.get("__key__", "?"))
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        raise SampleError("missing", f"missing field(s) {', '.join(missing)}")
    try:
        meta = json.loads(raw["json"])
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError("json", f"bad JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("prompt", ""), str):
        raise SampleError("json", "JSON is not an object with a string 'prompt'")
    tracks = _load_npy(raw["tracks.npy"], key, "tracks.npy")
    visible = _load_npy(raw["visible.npy"], key, "visible.npy")
    if tracks.ndim != 3 or tracks.shape[-1] != 2 or not np.issubdtype(tracks.dtype, np.floating):
        raise SampleError("tracks", f"tracks must be float (T, N, 2), got {tracks.dtype} {tracks.shape}")
    if visible.shape != tracks.shape[:2] or visible.dtype != bool:
        raise SampleError(
            "tracks", f"visible must be bool {tracks.shape[:2]}, got {visible.dtype} {visible.shape}"
        )
    if not np.isfinite(tracks).all():
        raise SampleError("tracks", "tracks contain NaN or inf")
    try:
        video = decode_video_bytes(raw["mp4"])
    except VideoReadError as e:
        raise SampleError("video", str(e)) from None
    if video.shape[0] != tracks.shape[0]:
        raise SampleError("video", f"video has {video.shape[0]} frames, tracks have {tracks.shape[0]}")
    out = {
        "key": key,
        "video": video,
        "tracks": tracks.astype(np.float32, copy=False),
        "visible": visible,
        "meta": meta,
    }
    if any(f in raw for f in ENCODED_FIELDS):
        out.update(_decode_encoded(raw, meta))
    return out


def _decode_encoded(raw: Mapping[str, Any], meta: dict) -> dict[str, np.ndarray]:
    """The precomputed latents and embeddings of a sample (``ardrag.precomputed``), checked against its JSON."""
    missing = [f for f in ENCODED_FIELDS if f not in raw]
    enc = meta.get("encoded")
    if missing or not isinstance(enc, dict):
        raise SampleError("latents", f"incomplete precomputed fields (missing {missing or 'json encoded'})")
    arrays = {}
    for f in ENCODED_FIELDS:
        try:
            arrays[f[:-4]] = np.load(io.BytesIO(raw[f]), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt field
            raise SampleError("latents", f"{f} is not a valid .npy ({e})") from None
    z, t, n = arrays["latents"], arrays["text"], arrays["negative_text"]
    if list(z.shape) != list(enc.get("latent_shape", [])) or z.dtype != np.float32:
        raise SampleError(
            "latents", f"latents {z.dtype} {z.shape} != json latent_shape {enc.get('latent_shape')}"
        )
    length = int(enc.get("text_length", 0))
    for name, e in (("text", t), ("negative_text", n)):
        if e.ndim != 2 or e.shape[0] > length or e.dtype != np.float32:
            raise SampleError("latents", f"{name} must be float32 (<= {length}, D), got {e.dtype} {e.shape}")
    return arrays


def expand_shards(urls_or_paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Shard list from a directory (all ``*.tar`` inside, sorted), glob(s), brace patterns or paths.

    Raises:
        FileNotFoundError: when a local path does not exist or nothing matches (the message names it).
    """
    items = [urls_or_paths] if isinstance(urls_or_paths, (str, os.PathLike)) else list(urls_or_paths)
    out: list[str] = []
    for item in items:
        s = str(item)
        if os.path.isdir(s):
            out += sorted(glob.glob(os.path.join(s, "*.tar")))
        elif "{" in s and ".." in s:  # webdataset brace notation, e.g. toy-{000000..000009}.tar
            out += wds.shardlists.expand_urls(s)
        elif any(c in s for c in "*?["):
            out += sorted(glob.glob(s))
        elif "://" in s or s.startswith("pipe:") or os.path.isfile(s):
            out.append(s)
        else:
            raise FileNotFoundError(f"no shard file or folder at {s}")
    if not out:
        raise FileNotFoundError(f"no shards found in {items}")
    return out


def iter_samples(
    urls_or_paths: str | os.PathLike | Iterable[str | os.PathLike], stats: SkipStats | dict | None = None
) -> Iterator[dict[str, Any]]:
    """Iterate decoded samples of the given shards in a fixed order (shards sorted, samples in tar order).

    Corrupt samples (and unreadable shards) are skipped and counted in ``stats`` (a ``SkipStats``, or a
    dict that receives per-reason counts and "total").

    Yields:
        {"key", "video" uint8 (T, H, W, 3), "tracks" float32 (T, N, 2), "visible" bool (T, N), "meta"}.
    """
    urls = expand_shards(urls_or_paths)

    def handler(exn: Exception) -> bool:
        _count(stats, "tar", "?", f"{type(exn).__name__}: {exn}")
        return True

    ds = wds.WebDataset(
        urls,
        shardshuffle=False,
        nodesplitter=None,
        workersplitter=None,
        handler=handler,
        empty_check=False,
    )
    for raw in ds:
        try:
            yield decode_sample(raw)
        except SampleError as e:
            _count(stats, e.reason, str(raw.get("__key__", "?")), str(e))
