"""Method adapters: static, warp (motion follows the targets), videos:DIR (files, missing counted), pipeline:."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _compare import frames_close, max_level_diff

from benchmark.methods import (
    MissingVideo,
    VideoFolderMethod,
    build_method,
    method_key,
    warp_image_along_tracks,
)
from benchmark.metrics.motion import motion_metrics


def _texture(size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 2.0)
    return ((tex - tex.min()) / (tex.max() - tex.min()) * 255).astype(np.uint8)


def _item(frames: int = 8) -> dict:
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    start = np.array([[20.0, 20.0], [44.0, 40.0]], np.float32)
    tracks = start[None] + t * np.array([[1.5, 0.5], [-1.0, 1.0]], np.float32)[None]
    return {
        "key": "k0",
        "image": _texture(),
        "tracks": tracks,
        "visible": np.ones((frames, 2), bool),
        "prompt": "a texture",
        "negative_prompt": "",
        "num_frames": frames,
        "size": (64, 64),
    }


def test_static_repeats_the_image():
    item = _item()
    video = build_method("static").generate(item, seed=5)
    assert video.shape == (8, 64, 64, 3) and video.dtype == np.uint8
    assert (video == item["image"][None]).all()


def test_warp_moves_content_along_the_targets():
    item = _item()
    video = build_method("warp").generate(item, seed=0)
    assert video.shape == (8, 64, 64, 3)
    assert (video[0] == item["image"]).all()
    # the tracker finds the content close to where the targets say, while static is off by the displacement
    # (not exactly 0: the two points' patches overlap as they approach, and LK's window straddles the falloff)
    m = motion_metrics(video, item["tracks"], item["visible"], instrument="lk")
    static = motion_metrics(build_method("static").generate(item, 0), item["tracks"], item["visible"])
    disp = np.linalg.norm(item["tracks"][1:] - item["tracks"][:1], axis=-1).mean()
    assert static["objmc"] == pytest.approx(disp, abs=0.1)
    assert m["coverage"] == 1.0 and m["objmc"] < 1.0 and m["objmc"] < 0.15 * static["objmc"]
    # far from every point the field fades: a corner stays (almost) still
    assert np.abs(video[-1, :4, -4:].astype(int) - item["image"][:4, -4:]).mean() < 2.0
    # the streamed frames are the same frames
    assert np.array_equal(np.stack(list(build_method("warp").stream(item, 0))), video)


def test_warp_exact_translation_when_one_point():
    img = _texture()
    tracks = np.array([[[32.0, 32.0]], [[35.0, 30.0]]], np.float32)
    out = warp_image_along_tracks(img, tracks, radius=1e6)  # one rigid patch: a pure translation by (3, -2)
    assert np.array_equal(out[1, 10:50, 10:50], img[12:52, 7:47])


def test_videos_folder_reads_seed_files_and_reports_missing(tmp_path):
    item = _item()
    clip = build_method("warp").generate(item, 0)
    (tmp_path / "k0").mkdir()
    np.save(tmp_path / "k0" / "seed1.npy", clip)
    from ardrag.video import write_video

    write_video(tmp_path / "k0" / "seed2.mp4", clip, fps=8)
    (tmp_path / "k0" / "seed3.mp4").write_bytes(b"not a video")
    m = build_method(f"videos:{tmp_path}")
    assert isinstance(m, VideoFolderMethod) and not m.generates and not m.deterministic
    assert np.array_equal(m.generate(item, 1), clip)
    mp4 = m.generate(item, 2)
    assert mp4.shape == clip.shape and np.abs(mp4.astype(int) - clip).mean() < 8  # lossy mp4v
    with pytest.raises(MissingVideo, match="seed0"):
        m.generate(item, 0)
    with pytest.raises(MissingVideo, match="cannot read"):
        m.generate(item, 3)
    key_before = method_key(m)
    np.save(tmp_path / "k0" / "seed0.npy", clip)  # a new file changes the cache key
    assert method_key(build_method(f"videos:{tmp_path}")) != key_before


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method spec 'magic'"):
        build_method("magic")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_method("videos:/nonexistent/folder")


def test_pipeline_adapter_on_an_exported_untrained_model(tmp_path):
    from ardrag import ARDragPipeline

    pipe = ARDragPipeline.from_preset("tiny", seed=0)  # the unit-test size of the same classes
    pipe.save_pretrained(tmp_path / "init")
    item = _item(frames=3)
    m = build_method(f"pipeline:{tmp_path / 'init'}")
    assert m.generates and not m.deterministic
    video = m.generate(item, seed=3)
    assert video.shape == (3, pipe.height, pipe.width, 3) and video.dtype == np.uint8
    # the adapter passes conditions and seed through: the same video as a direct call with seed 3 (and not the
    # default seed 0's), and its stream yields the same frames
    # (a loaded copy and the in-memory pipeline are different tensors, so kernels may round differently: <= 1 level)
    direct = pipe(item["image"], item["tracks"], item["visible"], prompt=item["prompt"], seed=3)
    assert frames_close(video, direct)
    seed0 = pipe(item["image"], item["tracks"], item["visible"], prompt=item["prompt"])
    assert max_level_diff(seed0, video) > 10  # another seed is another video, far beyond rounding
    assert frames_close(np.stack(list(m.stream(item, 3))), video)
    # config options override the exported config (e.g. the teacher's number of steps)
    m2 = build_method(f"pipeline:{tmp_path / 'init'}", {"timesteps": None, "num_steps": 2})
    assert m2.pipe.config.num_steps == 2 and method_key(m2) != method_key(m)


def test_folder_fingerprint_is_keyed_by_content_not_file_times(tmp_path):
    import os
    import shutil

    from benchmark.methods import folder_fingerprint

    a = tmp_path / "a"
    (a / "transformer").mkdir(parents=True)
    (a / "transformer" / "w.bin").write_bytes(b"\x00\x01" * 1000)
    (a / "cfg.json").write_text('{"x": 1}')
    before = folder_fingerprint(a)
    os.utime(a / "cfg.json", (1, 1))  # re-exporting the same bytes: new file times, same key
    b = tmp_path / "b"
    shutil.copytree(a, b)  # a copy elsewhere: same key
    (a / ".cfg.json.tmp").write_text("editor/atomic temp files are ignored")
    assert folder_fingerprint(a) == before == folder_fingerprint(b)
    (b / "transformer" / "w.bin").write_bytes(b"\x00\x02" + b"\x00\x01" * 999)  # one byte differs
    assert folder_fingerprint(b) != before
    (b / "transformer" / "w.bin").rename(b / "transformer" / "v.bin")  # same bytes, other name
    assert folder_fingerprint(b) != before
