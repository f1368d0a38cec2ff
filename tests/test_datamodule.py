"""ARDragDataModule: DDP/worker splits are disjoint and complete, batches agree with the shards, corrupt
samples are counted, track picking prefers moving tracks, Lightning runs it and logs the skip count."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from test_shards import write_corrupt_shard

from datamodules import ARDragDataModule
from datamodules.datamodule import SkipStatsLogger, select_tracks
from datamodules.shards import iter_samples
from datamodules.toy_world import write_toy_world


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_world(root, num_train=24, num_val=20, num_test=12, seed=2, samples_per_shard=4, progress=False)
    return root


def _dm(toy, **kw):
    base = dict(
        train_shards=str(toy / "train"),
        val_shards=str(toy / "val"),
        test_shards=str(toy / "test"),
        num_workers=0,
    )
    return ARDragDataModule(**{**base, **kw})


@pytest.mark.parametrize("how", ["override", "env"])
def test_two_ranks_two_workers_are_disjoint_and_cover_the_split(toy, how, monkeypatch):
    all_keys = sorted(s["key"] for s in iter_samples(toy / "val"))
    assert len(all_keys) == 20
    per_rank = []
    for rank in range(2):
        if how == "env":  # what torchrun sets; webdataset's split_by_node reads it
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            dm = _dm(toy, batch_size=3, num_workers=2)
        else:
            dm = _dm(toy, batch_size=3, num_workers=2, rank=rank, world_size=2)
        keys = [k for b in dm.val_dataloader() for k in b["key"]]
        assert len(keys) == len(set(keys))  # workers of a rank do not repeat each other
        per_rank.append(set(keys))
    assert per_rank[0].isdisjoint(per_rank[1])
    assert sorted(per_rank[0] | per_rank[1]) == all_keys
    assert min(len(k) for k in per_rank) >= 8  # shards split roughly evenly (5 shards of 4 clips)


def test_batches_agree_with_stored_samples(toy):
    stored = {s["key"]: s for s in iter_samples(toy / "train")}
    dm = _dm(toy, batch_size=4, num_frames=9, max_tracks=3, epoch_length=12, train_sampling="stream")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3  # explicit epoch length: ceil(12 / 4) batches
    for b in batches:
        assert b["video"].shape == (4, 3, 9, 64, 64) and b["video"].dtype == torch.float32
        assert b["tracks"].shape == (4, 9, 3, 2) and b["visible"].shape == (4, 9, 3)
        assert -1.0 <= b["video"].min() and b["video"].max() <= 1.0
        for i, key in enumerate(b["key"]):
            s = stored[key]
            video = ((b["video"][i].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
            # The crop is a window of the stored clip: find its start from the pixels.
            starts = [
                t for t in range(s["video"].shape[0] - 8) if np.array_equal(s["video"][t : t + 9], video)
            ]
            assert len(starts) == 1
            t0 = starts[0]
            n = int(b["visible"][i, 0].sum())
            assert 1 <= n <= 3 and not b["visible"][i, :, n:].any()  # padding tracks are all invisible
            for j in range(n):
                tr = b["tracks"][i, :, j].numpy()
                match = [
                    m
                    for m in range(s["tracks"].shape[1])
                    if np.array_equal(s["tracks"][t0 : t0 + 9, m], tr)
                    and np.array_equal(s["visible"][t0 : t0 + 9, m], b["visible"][i, :, j].numpy())
                ]
                assert match, f"track {j} of {key} is not a stored track"
            assert b["prompt"][i] == s["meta"]["prompt"] and b["negative_prompt"][i]


def test_eval_batches_are_deterministic(toy):
    a = [(b["key"], b["tracks"]) for b in _dm(toy, batch_size=5).test_dataloader()]
    b = [(b["key"], b["tracks"]) for b in _dm(toy, batch_size=5, num_workers=2).test_dataloader()]
    da = {k: t[i] for keys, t in a for i, k in enumerate(keys)}
    db = {k: t[i] for keys, t in b for i, k in enumerate(keys)}
    assert sorted(da) == sorted(db) and len(da) == 12
    for k in da:  # same tracks picked whatever the worker split
        torch.testing.assert_close(da[k], db[k])


def test_select_tracks_prefers_moving_ones():
    t = np.linspace(0, 1, 10)[:, None, None]
    tracks = np.zeros((10, 10, 2), np.float32) + np.arange(10)[None, :, None]
    tracks[:, :2] += 10 * t  # tracks 0 and 1 move 14 px, the other 8 stay
    visible = np.ones((10, 10), bool)
    visible[0, 9] = False  # not visible on the first frame: never a candidate
    rng = np.random.default_rng(0)
    picks = [select_tracks(tracks, visible, 1, rng, static_weight=0.25) for _ in range(4000)]
    moving = np.mean([p[0] < 2 for p in picks])
    assert abs(moving - 2 / (2 + 7 * 0.25)) < 0.03  # 0.53, against 2 / 9 for a uniform pick
    assert not any(9 in p for p in picks)
    sizes = np.bincount([len(select_tracks(tracks, visible, 4, rng)) for _ in range(4000)], minlength=5)
    assert sizes[0] == 0 and np.all(np.abs(sizes[1:] / 4000 - 0.25) < 0.03)  # k uniform on 1..K
    assert select_tracks(tracks, np.zeros_like(visible), 3, rng).size == 0


def test_corrupt_samples_are_counted_across_workers(toy, tmp_path):
    write_corrupt_shard(tmp_path / "bad-000000.tar")
    dm = _dm(
        toy, val_shards=[str(tmp_path / "bad-000000.tar"), str(toy / "val")], batch_size=4, num_workers=2
    )
    keys = [k for b in dm.val_dataloader() for k in b["key"]]
    assert len(keys) == 4 + 20
    assert dm.skip_stats.total == 3
    assert dm.skip_stats.as_dict()["missing"] == 1 and dm.skip_stats.as_dict()["json"] == 1


def test_missing_shards_say_what_to_run(tmp_path):
    dm = ARDragDataModule(train_shards=str(tmp_path / "nothing"), val_shards=None)
    with pytest.raises(FileNotFoundError, match="ardrag-toyworld") as e:
        dm.setup("fit")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="rank"):
        ARDragDataModule(rank=0)


class _Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        assert batch["video"].shape[1:] == (3, 17, 64, 64) and batch["visible"][:, 0].any(dim=1).all()
        return ((batch["video"].mean() - self.w) ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_logs_skip_count(toy, tmp_path):
    write_corrupt_shard(tmp_path / "bad-000000.tar")
    # No shuffle buffer, so the stream is the shard in order, over and over: 4 good and 3 corrupt per pass.
    dm = _dm(
        toy,
        train_shards=str(tmp_path),
        val_shards=None,
        batch_size=2,
        epoch_length=8,
        shuffle_buffer=0,
        train_sampling="stream",
    )
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[SkipStatsLogger()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(_Probe(), datamodule=dm)
    assert trainer.global_step == 4
    logged = trainer.callback_metrics["data/skipped_total"].item()
    # 8 good samples = two passes, and the 3 corrupt ones of each pass come before its last good sample.
    assert logged == dm.skip_stats.total == 6


def test_constructible_from_a_lightning_cli_config(toy):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(ARDragDataModule, "data")
    cfg = parser.parse_args(
        [
            f"--data.train_shards={toy / 'train'}",
            "--data.max_tracks=3",
            "--data.num_frames=9",
            "--data.num_workers=0",
        ]
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    dm = instantiate(cfg).data
    assert isinstance(dm, ARDragDataModule) and dm.hparams.max_tracks == 3
    b = next(iter(dm.train_dataloader()))
    assert b["tracks"].shape[1:] == (9, 3, 2)
