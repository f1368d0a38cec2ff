"""Shard reading: corrupt samples are skipped and counted by reason, the others load intact."""

from __future__ import annotations

import numpy as np
import pytest
import webdataset as wds

from datamodules.shards import SkipStats, decode_sample, encode_sample, expand_shards, iter_samples
from datamodules.toy_world import clip_seed, render_clip


def _good(i):
    c = render_clip(clip_seed(5, "test", i))
    return encode_sample(f"ok{i}", c.video, c.tracks, c.visible, c.meta), c


def write_corrupt_shard(path):
    """A shard with 4 good samples and 3 bad ones: truncated video, missing tracks, bad JSON."""
    goods = []
    with wds.TarWriter(str(path)) as w:
        for i in range(7):
            s, c = _good(i)
            if i == 1:
                s["mp4"] = s["mp4"][: len(s["mp4"]) // 3]  # truncated video
                s["__key__"] = "badvideo"
            elif i == 3:
                del s["tracks.npy"]
                s["__key__"] = "notracks"
            elif i == 5:
                s["json"] = b'{"prompt": "a red disc", '  # cut-off JSON
                s["__key__"] = "badjson"
            else:
                goods.append((s["__key__"], c))
            w.write(s)
    return goods


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    goods = write_corrupt_shard(tmp_path / "mix-000000.tar")
    stats = SkipStats()
    samples = list(iter_samples(tmp_path, stats=stats))
    assert [s["key"] for s in samples] == [k for k, _ in goods]
    for s, (_, c) in zip(samples, goods):
        np.testing.assert_array_equal(s["tracks"], c.tracks)
        assert s["video"].shape == c.video.shape and s["video"].dtype == np.uint8
    assert stats.total == 3
    assert stats.as_dict() == {"total": 3, "tar": 0, "missing": 1, "json": 1, "video": 1, "tracks": 0}
    # A plain dict works as the counter too.
    counts = {}
    assert len(list(iter_samples(tmp_path / "mix-000000.tar", stats=counts))) == 4
    assert counts == {"video": 1, "missing": 1, "json": 1, "total": 3}


def test_truncated_shard_is_counted_not_fatal(tmp_path):
    write_corrupt_shard(tmp_path / "a-000000.tar")
    good = tmp_path / "a-000001.tar"
    with wds.TarWriter(str(good)) as w:
        for i in range(3):
            w.write(_good(10 + i)[0])
    data = good.read_bytes()
    (tmp_path / "a-000002.tar").write_bytes(data[: len(data) // 2 + 7])  # cut mid-member
    stats = SkipStats()
    keys = [s["key"] for s in iter_samples(sorted(map(str, tmp_path.glob("a-*.tar"))), stats=stats)]
    assert keys[:7] == ["ok0", "ok2", "ok4", "ok6", "ok10", "ok11", "ok12"]
    assert stats.counts["tar"] >= 1 and stats.total >= 4


def test_schema_checks():
    s, c = _good(0)
    with pytest.raises(ValueError, match="17-frame"):
        encode_sample("k", c.video, c.tracks[:5], c.visible[:5], {})
    s2 = dict(s)
    s2["visible.npy"] = s["tracks.npy"]
    with pytest.raises(ValueError, match="visible"):
        decode_sample(s2)
    with pytest.raises(ValueError, match="dots"):
        encode_sample("a.b", c.video, c.tracks, c.visible, {})
    with pytest.raises(FileNotFoundError, match="no shards"):
        expand_shards("/nonexistent/dir/*.tar")
