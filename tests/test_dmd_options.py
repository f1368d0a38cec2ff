"""DMD options of the SFT stage: the critic's x0-space weighting, DMD on the produced frames (straight-through the
exit predictions), and one exit step per video."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ardrag import ARDragPipeline
from ardrag.pipeline import PipelineConfig
from ardrag.sampling import NUM_TRAIN_TIMESTEPS, Denoiser, randn
from ardrag.training.dmd import DMDConfig, add_noise, critic_loss, generator_loss, sample_sigma
from ardrag.training.self_rollout import backward_loss_through_rollout, student_rollout
from ardrag.training.sft import StudentConfig


def _setup(prediction_type: str = "velocity"):
    cfg = PipelineConfig(
        height=16,
        width=16,
        codec={"type": "pixel", "factor": 2},
        cache_frames=3,
        text_encoder={"type": "hash", "dim": 16, "max_length": 8},
    )
    pipe = ARDragPipeline.from_preset("tiny", cfg, seed=0, prediction_type=prediction_type)
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.normal_(0, 0.1)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    tracks = np.linspace([3, 3], [12, 10], 5, dtype=np.float32)[:, None]
    prep = pipe._prepare(image, tracks, None, "a red square", None, 0)
    return pipe, prep


def test_critic_sample_weighting_is_the_x0_error():
    torch.manual_seed(0)
    for ptype in ("velocity", "sample"):
        pipe, prep = _setup(ptype)
        critic = Denoiser(pipe.transformer, prep.conditions)
        x = torch.randn_like(prep.noise)
        cfg = DMDConfig(critic_weighting="sample")
        out = critic_loss(x, critic, cfg, generator=torch.Generator().manual_seed(3))
        # the same draws by hand: s, eps, then mean ||x0_hat - x0||^2 with x0_hat = x_s - s' v (s' = the model's s)
        g = torch.Generator().manual_seed(3)
        s = sample_sigma(1, cfg, g, x.device)
        eps = randn(x.shape, g, x.device)
        xs = add_noise(x, eps, s)
        with torch.no_grad():
            v = critic.full(xs, (s * NUM_TRAIN_TIMESTEPS)[:, None].expand(-1, x.shape[2]))
        s_conv = s.clamp_min(0.05) if ptype == "sample" else s
        x0_hat = xs - s_conv.view(-1, 1, 1, 1, 1) * v
        want = ((x0_hat - x) ** 2).mean()
        torch.testing.assert_close(out.flow, want, rtol=1e-4, atol=1e-6)
        plain = critic_loss(x, critic, DMDConfig(), generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(out.flow, plain.flow * float(s_conv) ** 2, rtol=1e-4, atol=1e-7)


def _dmd_grads(pipe, prep, exits, dmd_sample):
    student_model = pipe.transformer
    teacher = Denoiser(copy.deepcopy(student_model).requires_grad_(False), prep.conditions)
    critic_m = copy.deepcopy(student_model).requires_grad_(False)
    torch.manual_seed(5)
    with torch.no_grad():  # a critic that differs from the teacher, so the DMD gradient is not zero
        for p in critic_m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    critic = Denoiser(critic_m, prep.conditions)
    student_model.zero_grad(set_to_none=True)
    student = Denoiser(student_model, prep.conditions)
    rollout_cfg = StudentConfig(timesteps=[1000.0, 600.0], cache_frames=3, dmd_sample=dmd_sample).rollout()
    roll = student_rollout(student, prep.noise, rollout_cfg, exits)
    final = torch.cat([c.clean for c in roll.chunks], 2)
    seen = {}

    def loss_fn(x):
        if dmd_sample == "final":
            x = final + (x - x.detach())
        seen["x"] = x.detach()
        return generator_loss(
            x, teacher, critic, DMDConfig(), generator=torch.Generator().manual_seed(1)
        ).loss

    loss = backward_loss_through_rollout(loss_fn, roll, student, rollout_cfg)
    grads = torch.cat([p.grad.flatten() for p in student_model.parameters() if p.grad is not None])
    return loss, grads, seen["x"], roll, final


def test_dmd_on_the_final_frames_equals_exit_dmd_when_every_exit_is_the_last_step():
    torch.manual_seed(0)
    pipe, prep = _setup()
    f = prep.noise.shape[2]
    l_exit, g_exit, _, _, _ = _dmd_grads(pipe, prep, [1] * f, "exit")
    l_fin, g_fin, x_fin, roll, final = _dmd_grads(pipe, prep, [1] * f, "final")
    torch.testing.assert_close(roll.x, final, atol=1e-5, rtol=0)  # the last step's x0-prediction is the frame
    torch.testing.assert_close(l_fin, l_exit, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(g_fin, g_exit, rtol=1e-3, atol=1e-7)
    assert float(g_fin.norm()) > 0
    # earlier exits: DMD scores the produced frames (not the exit predictions), and the gradient still reaches
    # the student (through the exit step's prediction)
    l0, g0, x0_seen, roll0, final0 = _dmd_grads(pipe, prep, [0] * f, "final")
    torch.testing.assert_close(x0_seen, final0)
    assert float((roll0.x - final0).abs().mean()) > 1e-3
    assert float(g0.norm()) > 0


def test_exit_step_per_video_draws_one_step_for_all_chunks():
    from ardrag.training.sft import SFTModule

    draws = []
    for mode in ("per_chunk", "per_video"):
        m = SFTModule.__new__(SFTModule)
        m.student_cfg = StudentConfig(exit_step=mode)
        m.rollout_cfg = m.student_cfg.rollout()
        g = torch.Generator().manual_seed(0)
        draws.append([m._exit_steps(9, g) for _ in range(20)])
    per_chunk, per_video = draws
    assert all(len(e) == 9 for e in per_chunk + per_video)
    assert all(len(set(e)) == 1 for e in per_video)
    assert any(len(set(e)) > 1 for e in per_chunk)
    assert {e[0] for e in per_video} == {0, 1, 2}
