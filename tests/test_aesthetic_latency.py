"""Aesthetic head math with a tiny random CLIP saved locally (no downloads), the absent path, and the latency
bookkeeping with a fake clock (timings themselves are never asserted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.metrics import latency as lat
from benchmark.metrics.aesthetic import AestheticHead, AestheticScore, aesthetic_score, load_aesthetic


def _laion_like_mlp(dim: int) -> nn.Sequential:
    """The LAION predictor's layout (Linear/Dropout chain, no activations) at a tiny width."""
    return nn.Sequential(
        nn.Linear(dim, 12), nn.Dropout(0.2), nn.Linear(12, 8), nn.Dropout(0.2), nn.Linear(8, 4), nn.Dropout(0.1),
        nn.Linear(4, 3), nn.Linear(3, 1),
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=16,
    )  # fmt: skip
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder)
    mlp = _laion_like_mlp(16).eval()
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, folder / "head.pth")
    return folder, mlp


def test_head_equals_the_laion_mlp_on_normalised_embeddings(tiny_clip):
    _, mlp = tiny_clip
    sd = {f"layers.{k}": v for k, v in mlp.state_dict().items()}
    head = AestheticHead(sd).eval()
    emb = torch.randn(5, 16) * 3
    expected = mlp(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(head(emb), expected, rtol=1e-6, atol=1e-6)
    # a plain linear predictor (LAION v1 layout: weight/bias only) works too
    lin = nn.Linear(16, 1)
    torch.testing.assert_close(
        AestheticHead(lin.state_dict())(emb), lin(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    )
    with pytest.raises(ValueError, match="one output"):
        AestheticHead(nn.Linear(16, 2).state_dict())


def test_scorer_on_a_local_tiny_clip(tiny_clip):
    folder, mlp = tiny_clip
    scorer = load_aesthetic({"clip": str(folder), "head": str(folder / "head.pth")})
    rng = np.random.default_rng(0)
    video = (rng.random((6, 40, 56, 3)) * 255).astype(np.uint8)
    out = aesthetic_score(video, scorer, frame_stride=2)
    # by hand: shortest side to 32, centre crop, CLIP normalisation, projected embedding, head
    with torch.no_grad():
        emb = scorer.model(pixel_values=scorer.preprocess(video[::2])).image_embeds
        expected = mlp(emb / emb.norm(dim=-1, keepdim=True)).mean().item()
    assert out["value"] == pytest.approx(expected, rel=1e-5)
    assert out["n_scored"] == 3
    assert scorer.preprocess(video[:1]).shape == (1, 3, 32, 32)
    metric = AestheticScore(scorer, frame_stride=2)
    metric.update(torch.from_numpy(video))
    assert metric.compute()["value"] == pytest.approx(expected, rel=1e-5)


def test_absent_without_weights_is_none_not_zero(tmp_path):
    assert load_aesthetic({"clip": None, "head": None}) is None
    video = np.zeros((3, 8, 8, 3), np.uint8)
    assert aesthetic_score(video, None)["value"] is None
    metric = AestheticScore(None)
    metric.update(video)
    assert metric.compute()["value"] is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_aesthetic({"clip": str(tmp_path / "nope"), "head": str(tmp_path / "nope.pth")})


def test_latency_excludes_warmup_and_times_each_frame(monkeypatch):
    # Fake clock: the warm-up run is slow (10 s per frame), timed runs take 2 s to the first frame then 0.5 s.
    clock = {"now": 0.0}
    monkeypatch.setattr(lat.time, "perf_counter", lambda: clock["now"])
    calls = {"n": 0}

    def stream():
        calls["n"] += 1
        warm = calls["n"] == 1
        for i in range(4):
            clock["now"] += 10.0 if warm else (2.0 if i == 0 else 0.5)
            yield np.zeros((4, 4, 3), np.uint8)

    out = lat.measure_latency(stream, warmup=1, repeats=3)
    assert calls["n"] == 4
    assert out["ttff"] == pytest.approx(2.0)
    assert out["per_frame_mean"] == pytest.approx(0.5)
    assert out["per_frame_by_index"] == pytest.approx([2.0, 0.5, 0.5, 0.5])
    assert out["total"] == pytest.approx(3.5) and out["fps"] == pytest.approx(4 / 3.5)
    assert out["peak_memory_mb"] > 0 and "torch threads" in out["hardware"]


def test_the_rl_aesthetic_reward_is_the_scorer_per_frame(tiny_clip):
    """The paper's R_quality as an RL reward term: the LAION score of each frame / 10, weighted into the total,
    refused with a clear error when the weights are not given."""
    from ardrag.training.rewards import RewardConfig, check_reward_config, compute_rewards

    folder, _ = tiny_clip
    cfg = RewardConfig(
        motion=1.0,
        quality=0.2,
        aesthetic=0.5,
        aesthetic_clip=str(folder),
        aesthetic_head=str(folder / "head.pth"),
    )
    check_reward_config(cfg)
    rng = np.random.default_rng(0)
    videos = (rng.random((2, 5, 40, 40, 3)) * 255).astype(np.uint8)
    tracks = np.tile(np.array([[20.0, 20.0]], np.float32), (2, 5, 1, 1))
    visible = np.ones((2, 5, 1), bool)
    out = compute_rewards(cfg, videos, tracks, visible)
    scorer = load_aesthetic({"clip": str(folder), "head": str(folder / "head.pth")})
    expected = scorer(videos.reshape(10, 40, 40, 3)).reshape(2, 5) / 10
    np.testing.assert_allclose(out["aesthetic"], expected, rtol=1e-5, atol=1e-6)
    total = out["motion"] + 0.2 * out["quality"] + 0.5 * out["aesthetic"]
    np.testing.assert_allclose(out["total"], total, rtol=1e-6)
    later = videos.copy()
    later[:, 3:] = 255 - later[:, 3:]  # changing frames 3-4 leaves frames 0-2's aesthetic rewards alone
    np.testing.assert_allclose(
        compute_rewards(cfg, later, tracks, visible)["aesthetic"][:, :3], expected[:, :3]
    )
    assert "aesthetic" not in compute_rewards(RewardConfig(), videos, tracks, visible)
    with pytest.raises(ValueError, match="needs local weights"):
        check_reward_config(RewardConfig(aesthetic=1.0))
