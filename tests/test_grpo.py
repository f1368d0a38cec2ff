"""GRPO pieces: group advantages, KL, re-scoring equals the rollout's log-probs, the last-step SDE problem, and the
trajectory reward's ordering and causality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ardrag.models.causal_wan import CausalWanTransformer
from ardrag.models.presets import preset_config
from ardrag.sampling import Conditions, Denoiser, FlowSchedule, RolloutConfig, iter_rollout, sde_step
from ardrag.training.grpo import (
    GRPOConfig,
    clipped_objective,
    collect,
    gaussian_kl,
    group_advantages,
    rescore,
)
from ardrag.training.rewards import RewardConfig, compute_rewards, frame_rewards_to_latent
from datamodules.toy_world import clip_seed, render_clip


def test_group_advantages_are_standardised_per_group_and_frame():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(12, 5, generator=g) * torch.arange(1, 6)  # 3 groups of 4, frames of different scales
    r[4:8, 2] = 0.7  # a degenerate group at frame 2: all equal
    a = group_advantages(r, 4).view(3, 4, 5)
    assert torch.isfinite(a).all()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 2] = False
    assert a.mean(1)[mask].abs().max() < 1e-5
    assert (a.std(1, unbiased=False)[mask] - 1).abs().max() < 1e-3  # std 1 up to the 1e-4 regulariser
    assert a[1, :, 2].abs().max() == 0  # nothing to learn from an all-equal group
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6, 2), 4)


def test_reward_to_go_credit_and_batch_scaled_advantages():
    g = torch.Generator().manual_seed(1)
    r = torch.rand(8, 4, generator=g)
    r[:, 0] = 1.0 + 1e-3 * torch.rand(8, generator=g)  # frame 0: spread at the measurement-noise level only
    # to_go: frame m is credited with the rewards of frames m..M-1 (the last frame with its own)
    to_go = group_advantages(r, 4, credit="to_go", norm="group")
    rtg = r.flip(1).cumsum(1).flip(1)
    assert torch.allclose(to_go, group_advantages(rtg, 4, norm="group"), atol=1e-6)
    assert torch.allclose(to_go[:, -1], group_advantages(r, 4)[:, -1], atol=1e-6)
    # batch scale: centred per group and frame, one scale for the whole batch -> RMS 1 over the batch, and the
    # noise-level frame gets a small advantage where the per-group std makes it +-1
    a = group_advantages(r, 4, norm="batch").view(2, 4, 4)
    assert a.mean(1).abs().max() < 1e-6
    assert abs(float(a.pow(2).mean().sqrt()) - 1) < 1e-3
    assert a[:, :, 0].abs().max() < 0.02
    assert group_advantages(r, 4, norm="group").view(2, 4, 4)[:, :, 0].abs().max() > 0.9
    assert torch.equal(group_advantages(torch.ones(8, 3), 4, norm="batch"), torch.zeros(8, 3))
    with pytest.raises(ValueError, match="credit"):
        group_advantages(r, 4, credit="future")
    with pytest.raises(ValueError, match="adv_norm"):
        group_advantages(r, 4, norm="global")


def test_kl_is_zero_for_equal_policies_and_grows_with_divergence():
    mu = [torch.randn(2, 3, 1, 4, 4)]
    assert gaussian_kl(mu, mu, [0.3]).abs().max() == 0
    kls = [float(gaussian_kl([mu[0] + d], mu, [0.3]).mean()) for d in (0.01, 0.1, 0.5)]
    assert kls[0] < kls[1] < kls[2] and kls[2] == pytest.approx(0.5**2 / (2 * 0.3**2), rel=1e-5)


def test_clipped_objective_on_policy_is_the_plain_policy_gradient():
    lp = torch.randn(4, 3, requires_grad=True)
    adv = torch.randn(4, 3)
    loss, st = clipped_objective(lp, lp.detach(), adv, 1e-3)
    assert st["clip_frac"] == 0 and st["ratio_mean"] == 1
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv / adv.numel())  # d/dlp of -A exp(lp - old) at lp = old


def _tiny_setup(frames: int = 4, b: int = 2):
    torch.manual_seed(0)
    cfg = preset_config("tiny", cond_in_channels=5)
    model = CausalWanTransformer(**cfg).eval()
    for p in model.parameters():  # random non-zero weights everywhere (zero-init output layers hide bugs)
        torch.nn.init.normal_(p, std=0.05)
    conds = Conditions(torch.randn(b, 3, 16), torch.randn(b, 5, frames, 4, 4))
    return model, conds, torch.randn(b, 12, frames, 4, 4)


@pytest.mark.parametrize("chunk", [1, 2])
def test_rescoring_in_one_teacher_forcing_pass_equals_the_rollout_log_probs(chunk):
    from ardrag.models.attention import CausalConfig

    model, conds, noise = _tiny_setup()
    cfg = RolloutConfig(causal=CausalConfig(chunk_size=chunk, cache_frames=3), noise_level=0.7)
    den = Denoiser(model, conds)
    n_chunks = 4 // chunk
    with torch.no_grad():
        chunks = list(
            iter_rollout(
                den,
                noise,
                cfg,
                sde_steps=[m % 2 for m in range(n_chunks)],
                generator=torch.Generator().manual_seed(1),
            )
        )
        ro = collect(chunks, cfg)
        logp, _, _ = rescore(den, ro, cfg, 0.7)
    # the cached rollout and one masked [clean | noisy] forward agree to float32 rounding of the velocity,
    # amplified by 1 / std^2 of the per-element Gaussian: |dlogp| <= 1e-3 (a wrong frame or step is > 0.1)
    assert (logp - ro.old_log_prob).abs().max() < 1e-3
    _, st = clipped_objective(logp, ro.old_log_prob, torch.ones_like(logp), 1e-2)
    assert st["clip_frac"] == 0


def test_every_step_may_be_the_stochastic_one_and_the_last_leaves_a_bounded_noise():
    """Flow-GRPO's step at the last of the paper's three steps (s = 0.522 -> 0) would leave noise of std ~0.59 in the
    clean frame; with `last_step_std` the last step is a Gaussian of that std around the clean frame, so every step,
    the last included, can be the trained action."""
    sig = FlowSchedule().sigmas().tolist()
    x0 = torch.zeros(1, 4, 1, 32, 32)
    eps = torch.randn(1, 4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    s = sig[-2]
    x = (1 - s) * x0 + s * eps
    out = sde_step(x, eps - x0, s, 0.0, 0.7, torch.Generator().manual_seed(1), last_step_std=0.02)
    assert float(out.sample.std()) < 0.021  # not ~0.59
    cfg = GRPOConfig()
    assert cfg.sde_choices(3) == 3 and cfg.sde_type == "cps"
    assert GRPOConfig(exclude_last_step=True).sde_choices(3) == 2
    with pytest.raises(ValueError, match="last_step_std"):
        GRPOConfig(last_step_std=0.0)


def _sprite_video(path: np.ndarray, size: int = 48) -> np.ndarray:
    """A textured square moving along `path` (T, 2) over a static textured background."""
    rng = np.random.default_rng(0)
    bg = (rng.random((size, size, 3)) * 80 + 40).astype(np.uint8)
    tex = (rng.random((9, 9, 3)) * 155 + 100).astype(np.uint8)
    frames = []
    for x, y in path:
        f = bg.copy()
        xi, yi = int(round(x)), int(round(y))
        f[yi - 4 : yi + 5, xi - 4 : xi + 5] = tex
        frames.append(f)
    return np.stack(frames)


def test_motion_reward_prefers_following_and_is_causal():
    t = 12
    path = np.stack([np.linspace(20, 34, t), np.linspace(20, 30, t)], axis=1)
    tracks = np.stack([path + [dx, dy] for dx, dy in ((0, 0), (2, 1), (-2, 2))], axis=1)[None].astype(
        np.float32
    )
    visible = np.ones((1, t, 3), bool)
    follow = _sprite_video(path)
    static = _sprite_video(np.repeat(path[:1], t, axis=0))
    wrong = _sprite_video(path[0] - (path - path[0]) * 0.8)  # moves the other way
    cfg = RewardConfig()
    r = {
        k: compute_rewards(cfg, v[None], tracks, visible)
        for k, v in (("follow", follow), ("static", static), ("wrong", wrong))
    }
    m = {k: float(v["motion"][0, 1:].mean()) for k, v in r.items()}
    assert m["follow"] > 0.9 and m["follow"] > m["static"] + 0.3 and m["static"] > m["wrong"]
    # frame t's reward depends only on frames <= t: corrupt the last frames, earlier rewards stay the same
    late = follow.copy()
    late[8:] = 0
    r2 = compute_rewards(cfg, late[None], tracks, visible)
    np.testing.assert_allclose(r2["motion"][0, :8], r["follow"]["motion"][0, :8])
    np.testing.assert_allclose(r2["quality"][0, :8], r["follow"]["quality"][0, :8])
    assert r2["quality"][0, 8:].mean() < r["follow"]["quality"][0, 8:].mean()


def test_frame_rewards_map_to_latent_frames():
    r = np.arange(9, dtype=np.float32)[None]
    np.testing.assert_allclose(frame_rewards_to_latent(r, 9, 1)[0], r[0])
    np.testing.assert_allclose(
        frame_rewards_to_latent(r, 3, 4)[0], [0, 2.5, 6.5]
    )  # Wan VAE: 1 + 4 + 4 frames


def test_toy_clip_ground_truth_earns_high_motion_reward():
    clip = render_clip(clip_seed(0, "test", 1))
    sel = np.flatnonzero(clip.visible[0])[:4]
    r = compute_rewards(
        RewardConfig(), clip.video[None], clip.tracks[None][:, :, sel], clip.visible[None][:, :, sel]
    )
    assert r["motion"][0, 1:].mean() > 0.8
