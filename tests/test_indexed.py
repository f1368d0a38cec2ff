"""Step-indexed training batches: batch b is a pure function of (seed, rank, b), whatever the workers; resuming
at b gives the uninterrupted stream's batches; ranks read disjoint shards; corrupt samples are skipped and counted."""

from __future__ import annotations

import pytest
import torch
from test_shards import write_corrupt_shard

from datamodules import ARDragDataModule
from datamodules.datamodule import ClipProcessor
from datamodules.indexed import StepIndexedBatches, index_shard
from datamodules.shards import expand_shards, iter_samples
from datamodules.toy_world import write_toy_world


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_world(root, num_train=24, num_val=4, num_test=4, seed=3, samples_per_shard=4, progress=False)
    return root


def _keys(batches):
    return [(tuple(b["key"]), b["tracks"]) for b in batches]


def _same(a, b):
    assert [k for k, _ in a] == [k for k, _ in b]
    for (_, ta), (_, tb) in zip(a, b):
        assert torch.equal(ta, tb)  # the same crop and track choice (pure data selection, no arithmetic)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_index_lists_every_sample_with_its_fields(toy):
    url = expand_shards(toy / "train")[0]
    entries = index_shard(url)
    stored = [s["key"] for s in iter_samples([url])]
    assert [e[1].split("/")[-1] for e in entries] == stored
    assert all({"mp4", "tracks.npy", "visible.npy", "json"} <= set(e[2]) for e in entries)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_do_not_depend_on_workers_and_resume_exactly(toy, workers):
    kw = dict(train_shards=str(toy / "train"), val_shards=None, batch_size=3, num_frames=9, seed=5)
    ref = _keys(_take(ARDragDataModule(**kw, num_workers=0).train_dataloader(), 6))
    assert len({k for k, _ in ref}) == 6  # batches differ from each other
    _same(_keys(_take(ARDragDataModule(**kw, num_workers=workers).train_dataloader(), 6)), ref)
    # resuming at batch 4 (what the trainer restores) continues the same stream
    proc = ClipProcessor(train=True, batch_size=3, max_tracks=5, num_frames=9, seed=5)
    resumed = StepIndexedBatches(expand_shards(toy / "train"), proc, seed=5, start_batch=4)
    _same(_keys(_take(resumed, 2)), ref[4:])
    other = _keys(_take(ARDragDataModule(**{**kw, "seed": 6}).train_dataloader(), 6))
    assert [k for k, _ in other] != [k for k, _ in ref]


def test_ranks_read_disjoint_shards(toy):
    urls = expand_shards(toy / "train")
    keys = []
    for rank in range(2):
        proc = ClipProcessor(train=True, batch_size=4, max_tracks=5)
        ds = StepIndexedBatches(urls, proc, rank=rank, world_size=2)
        keys.append({k for b in _take(ds, 10) for k in b["key"]})
    assert keys[0] and keys[1] and keys[0].isdisjoint(keys[1])
    with pytest.raises(ValueError, match="no training shard"):
        StepIndexedBatches(
            urls[:1], ClipProcessor(train=True, batch_size=1, max_tracks=1), rank=1, world_size=2
        )


def test_corrupt_samples_are_skipped_and_counted(toy, tmp_path):
    write_corrupt_shard(tmp_path / "bad-000000.tar")
    urls = [str(tmp_path / "bad-000000.tar")] + expand_shards(toy / "train")[:1]
    proc = ClipProcessor(train=True, batch_size=4, max_tracks=5)
    batches = _take(StepIndexedBatches(urls, proc, seed=0), 8)
    assert all(len(b["key"]) == 4 for b in batches)
    assert proc.stats.total > 0 and set(proc.stats.counts) <= {"missing", "json", "video", "tracks", "tar"}
