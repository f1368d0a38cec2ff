"""Step-indexed training batches read by random access from WebDataset tar shards: exact resume.

Resume is exact: the data order, the noise and every random draw are functions of (seed, global step, rank), so a
run stopped at step k and resumed gives the losses of one that never stopped. A resampled WebDataset
stream cannot be rewound without replaying (and decoding) everything it produced, so training batches come from
here by default: each shard's tar headers are indexed once (a sequential scan of headers, no payload read), and
batch b of rank r draws its samples uniformly with replacement from the rank's shards with a generator seeded by
(seed, r, b), the same distribution as resampled shards with a large shuffle buffer. Resuming at batch b just
starts there. The shard format is unchanged (the same `KEY.mp4`, `KEY.tracks.npy`, ... members), shards are still
split across ranks like `split_by_node` (shard i to rank i % world_size), and DataLoader workers take batches
round-robin (worker w makes batches b with b % W == w, which the DataLoader returns in order).
"""

from __future__ import annotations

import itertools
import os
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from datamodules.shards import SampleError

Entry = tuple[int, str, dict[str, tuple[int, int]]]
"""(shard index, sample key, {field: (payload offset, size)})."""


def index_shard(path: str, shard: int = 0) -> list[Entry]:
    """Samples of one tar shard in tar order, with each field's payload offset and size (headers only).

    Keys and fields follow WebDataset: member `dir/KEY.tracks.npy` is field `tracks.npy` of sample `dir/KEY`.
    """
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            d, base = os.path.split(m.name)
            if "." not in base:
                continue
            stem, field = base.split(".", 1)
            samples.setdefault(os.path.join(d, stem), {})[field] = (m.offset_data, m.size)
    return [(shard, key, fields) for key, fields in samples.items()]


def read_entry(path: str, entry: Entry) -> dict[str, Any]:
    """The raw WebDataset sample {"__key__", field: bytes} of an index entry."""
    _, key, fields = entry
    raw: dict[str, Any] = {"__key__": os.path.basename(key)}
    with open(path, "rb") as f:
        for field, (offset, size) in fields.items():
            f.seek(offset)
            raw[field] = f.read(size)
    return raw


class StepIndexedBatches(torch.utils.data.IterableDataset):
    """Infinite training batches b = start_batch, start_batch + 1, ... for one rank, each a pure function of
    (seed, rank, b).

    Args:
        urls: every training shard (local paths); this rank keeps shard i when i % world_size == rank.
        processor: a `ClipProcessor` (decode, crop, resize, pick tracks, collate); its randomness per sample is
            drawn from the batch's generator.
        seed: base seed.
        rank: this process's rank; world_size: number of ranks.
        start_batch: the first batch index (the trainer's completed batches when resuming).
        max_tries: consecutive unusable samples after which the data is declared broken (clear error).
    """

    def __init__(
        self,
        urls: list[str],
        processor: Any,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        max_tries: int = 1000,
    ) -> None:
        super().__init__()
        self.urls = [u for i, u in enumerate(urls) if i % world_size == rank]
        if not self.urls:
            raise ValueError(
                f"rank {rank} of {world_size} gets no training shard ({len(urls)} shards): "
                "write at least as many shards as ranks"
            )
        self.proc, self.seed, self.rank = processor, seed, rank
        self.start_batch, self.max_tries = start_batch, max_tries
        self._index: list[Entry] | None = None

    def index(self) -> list[Entry]:
        if self._index is None:
            entries: list[Entry] = []
            for i, url in enumerate(self.urls):
                try:
                    entries += index_shard(url, i)
                except (OSError, tarfile.TarError) as e:  # an unreadable shard is counted, the rest is used
                    self.proc.stats.add("tar", url, f"{type(e).__name__}: {e}")
            if not entries:
                raise RuntimeError(f"no readable samples in the training shards {self.urls[:3]}...")
            self._index = entries
        return self._index

    def batch(self, b: int) -> dict[str, Any]:
        """Training batch number b (any worker, any time: the same batch)."""
        index = self.index()
        rng = np.random.default_rng([self.seed, self.rank, b])
        items, shape, fails = [], None, 0
        while len(items) < self.proc.batch_size:
            entry = index[int(rng.integers(len(index)))]
            try:
                item = self.proc.process(read_entry(self.urls[entry[0]], entry), rng=rng)
                if shape is not None and item["video"].shape != shape:
                    raise SampleError("video", f"clip shape {item['video'].shape} != batch's {shape}")
            except (SampleError, OSError) as e:
                self.proc.stats.add(getattr(e, "reason", "tar"), entry[1], str(e))
                fails += 1
                if fails >= self.max_tries:
                    raise RuntimeError(
                        f"{fails} unusable training samples in a row (last: {entry[1]}: {e}); "
                        "check the shards, or set num_frames/height/width so clips share one shape"
                    ) from e
                continue
            shape = item["video"].shape
            items.append(item)
        return self.proc._collate(items)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.proc._own_process()
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for b in itertools.count(self.start_batch + w, n):
            yield self.batch(b)
