"""``ARDragDataModule``: stream WebDataset shards of clips with point tracks into training batches.

Training resamples shards (``resampled=True``) with an explicit epoch length; validation and test read
every sample exactly once, in a fixed order. Shards are split across DDP ranks (``split_by_node``) and
across loader workers (``split_by_worker``), so ranks see disjoint data. Per sample: decode the video
(OpenCV), take a random temporal crop, and pick 1..K tracks to condition on (users drag few points),
preferring tracks that move. Corrupt samples are skipped and counted in ``datamodule.skip_stats``.

Batch: {"video": float32 (B, 3, T, H, W) in [-1, 1], "tracks": float32 (B, T, K, 2) pixels (x, y),
"visible": bool (B, T, K) (padding tracks all False), "prompt": list[str], "negative_prompt": list[str],
"key": list[str]}.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
import webdataset as wds

from datamodules.indexed import StepIndexedBatches
from datamodules.shards import SampleError, SkipStats, decode_sample, expand_shards

log = logging.getLogger(__name__)

__all__ = ["ARDragDataModule", "ClipProcessor", "SkipStatsLogger", "select_tracks"]

TOY_HINT = "run `ardrag-toyworld data/toyworld` to write the toy world, or point the *_shards paths at ardrag-prepare output"


class _RankSplit:
    """A node splitter for an explicit (rank, world_size): shard i goes to rank i % world_size."""

    def __init__(self, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = rank, world_size

    def __call__(self, src):
        for i, item in enumerate(src):
            if i % self.world_size == self.rank:
                yield item


def select_tracks(
    tracks: np.ndarray,
    visible: np.ndarray,
    k_max: int,
    rng: np.random.Generator,
    k_min: int = 1,
    moving_threshold: float = 2.0,
    static_weight: float = 0.25,
) -> np.ndarray:
    """Pick 1..K track indices to condition on, preferring tracks that move.

    Candidates are tracks visible on frame 0 (drags start on the first frame). A track "moves" when it
    gets farther than ``moving_threshold`` pixels from its start while visible; static candidates are drawn
    with relative weight ``static_weight`` (moving ones with weight 1).

    Args:
        tracks: float (T, N, 2) pixels; visible: bool (T, N).
    Returns:
        int64 (k,) indices, 1 <= k <= k_max (empty when no track is visible on frame 0).
    """
    cand = np.flatnonzero(visible[0])
    if cand.size == 0:
        return cand
    disp = np.linalg.norm(tracks[:, cand] - tracks[0, cand], axis=-1)
    motion = np.where(visible[:, cand], disp, 0.0).max(axis=0)
    weights = np.where(motion > moving_threshold, 1.0, static_weight)
    k = int(rng.integers(min(k_min, cand.size), min(k_max, cand.size) + 1))
    return rng.choice(cand, size=k, replace=False, p=weights / weights.sum())


class ClipProcessor:
    """Per-sample work done in loader workers: decode, crop, resize, pick tracks, batch by size.

    Plain and picklable (no trainer references) so it can travel to worker processes. Each worker counts
    its own skips; every batch carries a snapshot (``_skips``) that the main process sums into
    ``ARDragDataModule.skip_stats``.
    """

    def __init__(
        self,
        train: bool,
        batch_size: int,
        max_tracks: int,
        min_tracks: int = 1,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        moving_threshold: float = 2.0,
        static_weight: float = 0.25,
        seed: int = 0,
    ):
        self.train = train
        self.batch_size = batch_size
        self.max_tracks = max_tracks
        self.min_tracks = min_tracks
        self.num_frames = num_frames
        self.size = (height, width) if height and width else None
        self.moving_threshold = moving_threshold
        self.static_weight = static_weight
        self.seed = seed
        self.stats = SkipStats()
        self._pid: int | None = None
        self._token = ""
        self._iters = 0

    def _own_process(self) -> None:
        # A forked worker inherits the parent's counts, which the parent already reports: start from zero.
        if self._pid != os.getpid():
            self._pid, self._token, self.stats = os.getpid(), uuid.uuid4().hex, SkipStats()

    def _rng(self, key: str) -> np.random.Generator:
        if self.train:
            # Differs per worker and per epoch (torch seeds workers from the main RNG each epoch), and is
            # reproducible under seed_everything.
            return np.random.default_rng(
                [self.seed, torch.initial_seed() % (2**63), self._iters, zlib.crc32(key.encode())]
            )
        # Evaluation: a function of the key only, so every rank/worker split yields the same batches.
        return np.random.default_rng([self.seed, zlib.crc32(key.encode())])

    def process(self, raw: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Raw WebDataset sample -> {"key", "video" uint8 (T, H, W, 3), "tracks", "visible", prompts}.

        ``rng``: the generator of the crop and track choice (step-indexed training passes the batch's);
        default: a per-sample generator (see ``_rng``).

        A sample with precomputed latents and prompt embeddings (``ardrag-prepare --encode``) passes them on
        ("latents", "text", "negative_text", "encoded") when the clip is used whole: crop from frame 0 keeping
        every frame, no resize. Otherwise they do not describe the cropped clip and are dropped (the stage
        encodes the clip itself).
        """
        s = decode_sample(raw)
        key, video, tracks, visible = s["key"], s["video"], s["tracks"], s["visible"]
        rng = self._rng(key) if rng is None else rng
        t_len = video.shape[0]
        f = self.num_frames or t_len
        if t_len < f:
            raise SampleError("short", f"{t_len} frames < num_frames={f}")
        # Start frames whose first frame has a visible track (drags start there); random when training.
        starts = np.flatnonzero(visible[: t_len - f + 1].any(axis=1))
        if starts.size == 0:
            raise SampleError("no_tracks", "no track is visible on any usable start frame")
        start = int(rng.choice(starts)) if self.train else int(starts[0])
        whole = start == 0 and f == t_len
        video, tracks, visible = (
            video[start : start + f],
            tracks[start : start + f],
            visible[start : start + f],
        )
        if self.size is not None and video.shape[1:3] != self.size:
            whole = False
            h, w = self.size
            sy, sx = h / video.shape[1], w / video.shape[2]
            interp = cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR
            video = np.stack([cv2.resize(fr, (w, h), interpolation=interp) for fr in video])
            # Pixel centres at integers: x' = (x + 0.5) * sx - 0.5.
            tracks = (tracks + 0.5) * np.array([sx, sy], np.float32) - 0.5
        idx = select_tracks(
            tracks, visible, self.max_tracks, rng, self.min_tracks, self.moving_threshold, self.static_weight
        )
        out_tracks = np.zeros((f, self.max_tracks, 2), np.float32)
        out_visible = np.zeros((f, self.max_tracks), bool)
        out_tracks[:, : idx.size] = tracks[:, idx]
        out_visible[:, : idx.size] = visible[:, idx]
        meta = s["meta"]
        out = {
            "key": key,
            "video": video,
            "tracks": out_tracks,
            "visible": out_visible,
            "prompt": str(meta.get("prompt", "")),
            "negative_prompt": str(meta.get("negative_prompt", "")),
        }
        if whole and "latents" in s:
            out.update(latents=s["latents"], text=s["text"], negative_text=s["negative_text"])
            out["encoded"] = meta["encoded"]
        return out

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        video = torch.from_numpy(np.stack([it["video"] for it in items]))  # (B, T, H, W, 3) uint8
        batch = {
            "video": video.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0),
            "tracks": torch.from_numpy(np.stack([it["tracks"] for it in items])),
            "visible": torch.from_numpy(np.stack([it["visible"] for it in items])),
            "prompt": [it["prompt"] for it in items],
            "negative_prompt": [it["negative_prompt"] for it in items],
            "key": [it["key"] for it in items],
            "_skips": (self._token, dict(self.stats.counts)),
        }
        # Precomputed latents only when every sample has them (a mixed batch is encoded on the fly).
        if all("latents" in it for it in items):
            from ardrag.precomputed import pad_text

            length = max(int(it["encoded"]["text_length"]) for it in items)
            batch["latents"] = torch.from_numpy(np.stack([it["latents"] for it in items]))
            batch["text"] = pad_text([it["text"] for it in items], length)
            batch["negative_text"] = pad_text([it["negative_text"] for it in items], length)
            batch["encoded"] = [it["encoded"] for it in items]
        return batch

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """A webdataset pipeline stage: raw samples in, batches out (samples grouped by clip size)."""
        self._own_process()
        self._iters += 1
        buckets: dict[tuple[int, ...], list[dict[str, Any]]] = {}
        for raw in src:
            try:
                item = self.process(raw)
            except SampleError as e:
                self.stats.add(e.reason, str(raw.get("__key__", "?")), str(e))
                continue
            bucket = buckets.setdefault(item["video"].shape, [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield self._collate(bucket)
                bucket.clear()
        for bucket in buckets.values():  # finite streams (val/test): the last, partial batches
            if bucket:
                yield self._collate(bucket)

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset handler for shard-level errors: count, log, continue."""
        self._own_process()
        self.stats.add("tar", "?", f"{type(exn).__name__}: {exn}")
        return True


class ARDragDataModule(pl.LightningDataModule):
    """Clips with point tracks from WebDataset shards (toy world by default).

    Args:
        train_shards: shard directory, glob, brace pattern or list of them (training split).
        val_shards: same, for validation (read once per pass, fixed order).
        test_shards: same, for test.
        batch_size: clips per batch.
        num_workers: loader worker processes per rank (shards are split among them).
        epoch_length: training clips per epoch per rank (shards are resampled, so epochs are a count).
        max_tracks: K, the most tracks a sample conditions on; batches pad to K with invisible tracks.
        min_tracks: the fewest tracks a sample conditions on.
        num_frames: temporal crop length in frames (None: whole clips; clips must then share a length).
        height: resize clips to this height (with ``width``); None keeps the stored size.
        width: resize clips to this width.
        moving_threshold: pixels a track must travel to count as moving (preferred when picking tracks).
        static_weight: relative chance of picking a static track versus a moving one.
        shuffle_buffer: training samples held in the shuffle buffer (per worker; ``train_sampling="stream"``).
        train_sampling: "indexed" (default): batch b of rank r is a pure function of (seed, r, b), read by
            random access from the shards, so a resumed run sees exactly the batches of an uninterrupted one
            (see ``datamodules.indexed``); "stream": WebDataset's resampled shard stream with a shuffle buffer
            and ``with_epoch`` (no exact resume: the stream cannot be rewound without replaying it).
        seed: seed of track picking and cropping.
        rank: override the DDP rank (default: from torch.distributed / RANK env, via split_by_node).
        world_size: override the DDP world size (with ``rank``).
        pin_memory: pin batches for faster host-to-GPU copies.
        persistent_workers: keep workers alive across epochs.
    """

    def __init__(
        self,
        train_shards: str | list[str] = "data/toyworld/train",
        val_shards: str | list[str] | None = "data/toyworld/val",
        test_shards: str | list[str] | None = "data/toyworld/test",
        batch_size: int = 8,
        num_workers: int = 2,
        epoch_length: int = 2048,
        max_tracks: int = 5,
        min_tracks: int = 1,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        moving_threshold: float = 2.0,
        static_weight: float = 0.25,
        shuffle_buffer: int = 256,
        train_sampling: str = "indexed",
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ):
        super().__init__()
        if batch_size < 1 or epoch_length < 1 or max_tracks < 1 or not 1 <= min_tracks <= max_tracks:
            raise ValueError("need batch_size >= 1, epoch_length >= 1 and 1 <= min_tracks <= max_tracks")
        if (height is None) != (width is None):
            raise ValueError("give both height and width, or neither")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if train_sampling not in ("indexed", "stream"):
            raise ValueError(f"train_sampling must be 'indexed' or 'stream', got {train_sampling!r}")
        self.train_sampling = train_sampling
        self.save_hyperparameters()
        self.train_shards, self.val_shards, self.test_shards = train_shards, val_shards, test_shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.epoch_length = epoch_length
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self._proc_kw = dict(
            batch_size=batch_size,
            max_tracks=max_tracks,
            min_tracks=min_tracks,
            num_frames=num_frames,
            height=height,
            width=width,
            moving_threshold=moving_threshold,
            static_weight=static_weight,
            seed=seed,
        )
        self.skip_stats = SkipStats()
        """Corrupt/unusable samples skipped so far, summed over workers: ``.total`` and ``.counts``."""
        self._worker_counts: dict[str, dict[str, int]] = {}

    # -- shards ------------------------------------------------------------------------------------------
    def _urls(self, which: str) -> list[str]:
        spec = getattr(self, f"{which}_shards")
        if spec is None:
            raise ValueError(f"no {which}_shards configured")
        try:
            return expand_shards(spec)
        except FileNotFoundError:
            raise FileNotFoundError(f"no {which} shards at {spec!r}: {TOY_HINT}") from None

    def setup(self, stage: str | None = None) -> None:
        # Fail early, in one line, when the data is missing.
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(
            stage or "fit", ["train"]
        )
        for which in needed:
            if getattr(self, f"{which}_shards") is not None:
                self._urls(which)

    def _nodesplitter(self):
        if self.rank is not None:
            return _RankSplit(self.rank, self.world_size)
        return wds.split_by_node

    # -- loaders -----------------------------------------------------------------------------------------
    def train_dataset(self) -> wds.WebDataset:
        """Infinite stream of training batches for this rank (shards resampled with replacement)."""
        proc = ClipProcessor(train=True, **self._proc_kw)
        ds = wds.WebDataset(
            self._urls("train"),
            resampled=True,
            shardshuffle=False,  # resampling already randomises shard order
            nodesplitter=self._nodesplitter(),
            handler=proc.tar_handler,
            seed=self.seed,
        )
        return ds.shuffle(self.shuffle_buffer).compose(proc)

    def eval_dataset(self, which: str = "val") -> wds.WebDataset:
        """Finite, ordered stream of batches of ``which`` ("val" or "test") for this rank and worker."""
        proc = ClipProcessor(train=False, **self._proc_kw)
        ds = wds.WebDataset(
            self._urls(which),
            shardshuffle=False,
            nodesplitter=self._nodesplitter(),
            workersplitter=wds.split_by_worker,
            handler=proc.tar_handler,
            empty_check=False,  # a rank/worker with no shard simply yields nothing
        )
        return ds.compose(proc)

    def _loader(self, ds) -> wds.WebLoader:
        return wds.WebLoader(
            ds,
            batch_size=None,  # batched in the workers, grouped by clip size
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def _batches_done(self) -> int:
        """Training batches this rank already consumed (restored from the checkpoint when resuming)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        # ardrag stages count the batches they consumed into their checkpoints; else one batch per step
        seen = getattr(trainer.lightning_module, "batches_seen", None)
        return int(seen if seen is not None else trainer.global_step)

    def train_dataloader(self) -> wds.WebLoader:
        n_batches = math.ceil(self.epoch_length / self.batch_size)
        if self.train_sampling == "indexed":
            rank, world = self._rank_world()
            ds = StepIndexedBatches(
                self._urls("train"),
                ClipProcessor(train=True, **self._proc_kw),
                seed=self.seed,
                rank=rank,
                world_size=world,
                start_batch=self._batches_done(),
            )
            loader = wds.WebLoader(
                ds,
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.persistent_workers and self.num_workers > 0,
            )
            return loader.compose(self._absorb_skips)
        loader = self._loader(self.train_dataset()).with_epoch(n_batches).with_length(n_batches, silent=True)
        return loader.compose(self._absorb_skips)

    def val_dataloader(self) -> wds.WebLoader | list:
        if self.val_shards is None:
            return []  # Lightning: no validation
        return self._loader(self.eval_dataset("val")).compose(self._absorb_skips)

    def test_dataloader(self) -> wds.WebLoader | list:
        if self.test_shards is None:
            return []
        return self._loader(self.eval_dataset("test")).compose(self._absorb_skips)

    # -- skip accounting (main process) ------------------------------------------------------------------
    def _absorb_skips(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Loader stage run in the main process: fold each batch's worker skip counts into ``skip_stats``."""
        for batch in batches:
            token, counts = batch.pop("_skips")
            before = self.skip_stats.total
            self._worker_counts[token] = counts
            total = Counter()
            for c in self._worker_counts.values():
                total.update(c)
            self.skip_stats.counts = total
            if self.skip_stats.total > before:
                log.warning(
                    "data: %d corrupt or unusable samples skipped so far %s",
                    self.skip_stats.total,
                    dict(total),
                )
            yield batch


class SkipStatsLogger(pl.Callback):
    """Logs ``datamodule.skip_stats`` (``data/skipped_total`` and per reason) to the trainer's loggers."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = getattr(trainer.datamodule, "skip_stats", None)
        if stats is None:
            return
        pl_module.log("data/skipped_total", float(stats.total), on_step=True, on_epoch=False)
        for reason, n in stats.counts.items():
            pl_module.log(f"data/skipped_{reason}", float(n), on_step=True, on_epoch=False)
