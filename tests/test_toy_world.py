"""Toy world: ground-truth tracks sit on the rendered sprites (checked from pixels), shards round-trip."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np

from benchmark.methods import folder_fingerprint
from datamodules.shards import iter_samples
from datamodules.toy_world import ToyWorldConfig, clip_seed, main, render_clip, write_toy_world


def _absdiff(a, b):
    return np.abs(a.video.astype(float) - b.video.astype(float)).max(axis=-1)


def _sprite_maps(seed, k, n):
    """From the images alone: (shown, alone), float (T, H, W). ``alone`` is how strongly sprite k paints a
    pixel when drawn by itself; ``shown`` is the fraction of it left visible in the clip (1 - coverage of
    the sprites in front), from rendering the clip with and without it."""
    others = [j for j in range(n) if j != k]
    alone = _absdiff(render_clip(seed, hide=others), render_clip(seed, hide=range(n)))
    with_k = _absdiff(render_clip(seed), render_clip(seed, hide=k))
    shown = np.where(alone > 0, with_k / np.maximum(alone, 1e-9), 0.0)
    return shown, alone


def _solid(mask):
    """Pixels whose whole 3x3 neighbourhood is in ``mask``: away from anti-aliased edges."""
    return np.stack([cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0 for m in mask])


def test_tracks_coincide_with_rendered_sprites():
    checked_hidden = checked_centres = 0
    for index in range(12):
        seed = clip_seed(0, "train", index)
        clip = render_clip(seed)
        owner = np.array(clip.meta["track_owner"])
        role = np.array(clip.meta["track_role"])
        t_len, size = clip.video.shape[:2]
        for k, sprite in enumerate(clip.meta["sprites"]):
            shown, alone = _sprite_maps(seed, k, len(clip.meta["sprites"]))
            solid_shown = _solid(shown > 0.5)
            solid_hidden = _solid((alone > 0) & (shown < 0.5))
            mine = np.flatnonzero(owner == k)
            centre = mine[role[mine] == "centre"][0]
            for t in range(t_len):
                xy = np.rint(clip.tracks[t, mine]).astype(int)
                vis = clip.visible[t, mine]
                # Visible points of sprite k sit on pixels it paints; points hidden behind another sprite sit
                # on pixels where it is covered (away from anti-aliased edges, where both are half true).
                assert (shown[t, xy[:, 1], xy[:, 0]][vis] > 0).all()
                assert not solid_hidden[t, xy[:, 1], xy[:, 0]][vis].any()
                assert not solid_shown[t, xy[:, 1], xy[:, 0]][~vis].any()
                checked_hidden += int(solid_hidden[t, xy[:, 1], xy[:, 0]][~vis].sum())
                # The centre track is the centroid of the sprite's own pixels, to pixel quantisation (shapes
                # are symmetric about it; the triangle's centre is its centroid).
                ys, xs = np.nonzero(alone[t] > 0)
                if xs.min() > 0 and ys.min() > 0 and xs.max() < size - 1 and ys.max() < size - 1:
                    np.testing.assert_allclose(
                        [xs.mean(), ys.mean()], clip.tracks[t, centre], atol=0.5, err_msg=sprite["shape"]
                    )
                    checked_centres += 1
        # Background points never move.
        bg = np.flatnonzero(owner == -1)
        assert np.ptp(clip.tracks[:, bg], axis=0).max() == 0
    assert checked_hidden >= 5 and checked_centres >= 100  # the clips did exercise occlusion


def test_clip_statistics_match_the_spec():
    cfg = ToyWorldConfig()
    clips = [render_clip(clip_seed(3, "train", i), cfg) for i in range(40)]
    n_sprites = [len(c.meta["sprites"]) for c in clips]
    assert set(n_sprites) == {1, 2, 3}
    for c in clips:
        owner = np.array(c.meta["track_owner"])
        centres = c.tracks[:, np.array(c.meta["track_role"]) == "centre"]
        travel = np.linalg.norm(centres[-1] - centres[0], axis=-1)
        static = np.array([s["static"] for s in c.meta["sprites"]])
        assert (travel[static] == 0).all() and (travel[~static] > 3).all()
        assert (~static).any()  # at least one sprite moves
        # Smooth: per-frame speed changes slowly (no teleports).
        speed = np.linalg.norm(np.diff(centres, axis=0), axis=-1)
        assert speed.max() < 0.12 * cfg.size
        assert np.abs(np.diff(speed, axis=0)).max() < 2.0
        radii = [s["radius"] for s in c.meta["sprites"]]
        assert min(radii) >= 6 and max(radii) <= 10
        assert (owner >= -1).all() and c.meta["prompt"].startswith(("a ", "an "))
    # Distinct clips across splits with the same index.
    a, b = render_clip(clip_seed(0, "train", 0)), render_clip(clip_seed(0, "val", 0))
    assert not np.array_equal(a.video, b.video)
    # Deterministic.
    np.testing.assert_array_equal(render_clip(clip_seed(0, "train", 0)).video, a.video)


def test_toy_world_shards_are_byte_identical_when_written_again(tmp_path):
    """The benchmark keys its caches by the suite's bytes: a toy world written twice (another day, another
    machine) must give the same shards, tar member times included (was: the time of writing)."""
    a = write_toy_world(tmp_path / "a", num_train=3, num_val=2, num_test=2, seed=3, progress=False)
    time.sleep(1.1)  # tar stores whole seconds
    write_toy_world(tmp_path / "b", num_train=3, num_val=2, num_test=2, seed=3, progress=False)
    files = [p for split in a["shards"].values() for p in split]
    assert len(files) >= 3
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert folder_fingerprint(tmp_path / "a" / "test") == folder_fingerprint(tmp_path / "b" / "test")


def test_write_toy_world_roundtrip(tmp_path):
    m = write_toy_world(
        tmp_path, num_train=20, num_val=8, num_test=8, seed=1, samples_per_shard=6, progress=False
    )
    assert {k: len(v) for k, v in m["shards"].items()} == {"train": 7, "val": 8, "test": 8}
    stats = {}
    samples = list(iter_samples(tmp_path / "train", stats=stats))
    assert len(samples) == 20 and stats.get("total", 0) == 0
    for i, s in enumerate(samples[:5]):
        ref = render_clip(clip_seed(1, "train", i))
        np.testing.assert_array_equal(s["tracks"], ref.tracks)
        np.testing.assert_array_equal(s["visible"], ref.visible)
        assert s["meta"]["prompt"] == ref.meta["prompt"] and s["meta"]["negative_prompt"]
        # MP4 is lossy: mean absolute error of a few grey levels on 0..255.
        assert np.abs(s["video"].astype(int) - ref.video).mean() < 6.0
    # Re-running with the same settings is a no-op; other settings need --overwrite.
    again = write_toy_world(tmp_path, num_train=20, num_val=8, num_test=8, seed=1, samples_per_shard=6)
    assert again["seconds"] == m["seconds"]
    # A folder from an older generator version with the same settings is rewritten, not reused.
    manifest = json.loads((tmp_path / "toyworld.json").read_text())
    (tmp_path / "toyworld.json").write_text(json.dumps({**manifest, "version": 1}))
    redone = write_toy_world(tmp_path, num_train=20, num_val=8, num_test=8, seed=1, samples_per_shard=6)
    assert redone["version"] == m["version"] and len(list(iter_samples(tmp_path / "val"))) == 8
    assert main([str(tmp_path), "--num-train", "3", "--quiet"]) == 2
    assert (
        main(
            [str(tmp_path), "--num-train", "3", "--num-val", "1", "--num-test", "1", "--overwrite", "--quiet"]
        )
        == 0
    )
    assert len(list(iter_samples(tmp_path / "train"))) == 3
