"""Self-Rollout training rollout: what enters the KV cache under each cache_update rule, context noise, and the
gradient rule of the bounded-memory backward (only exit-step predictions, cached K/V constant unless asked)."""

from __future__ import annotations

import copy
import dataclasses
import math
import weakref

import numpy as np
import pytest
import torch

from ardrag import ARDragPipeline
from ardrag.models import CausalConfig, CausalWanTransformer, preset_config
from ardrag.pipeline import PipelineConfig
from ardrag.sampling import Conditions, Denoiser, RolloutConfig, iter_rollout
from ardrag.training.self_rollout import sample_exit_steps, student_rollout

T = 6


def _pipe(**cfg) -> ARDragPipeline:
    base = {"height": 16, "width": 16, "codec": {"type": "pixel", "factor": 2}, "cache_frames": 3}
    base["text_encoder"] = {"type": "hash", "dim": 16, "max_length": 8}
    pipe = ARDragPipeline.from_preset("tiny", PipelineConfig(**{**base, **cfg}), seed=0)
    with torch.no_grad():  # zero-init condition channels would make the model ignore its conditions
        for p in pipe.transformer.parameters():
            p.normal_(0, 0.1)
    return pipe


def _inputs():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    tracks = np.linspace([3, 3], [12, 10], T, dtype=np.float32)[:, None]
    return image, tracks


class _CacheWrites:
    """Spy on the transformer: records every latent chunk written into a KV cache (forward_cached write=True)."""

    def __init__(self, model: CausalWanTransformer):
        self.frames: list[torch.Tensor] = []
        inner = model.forward_cached

        def spy(hidden_states, *args, write=False, **kw):
            if write:
                self.frames.append(hidden_states.detach().clone())
            return inner(hidden_states, *args, write=write, **kw)

        model.forward_cached = spy

    def take(self) -> torch.Tensor:
        out, self.frames = torch.cat(self.frames, dim=2), []
        return out


@pytest.mark.parametrize("context_timestep", [0.0, 40.0])
def test_training_rollout_writes_the_inference_frames_into_the_cache(context_timestep):
    """Self-Rollout (full_denoise): the cache receives exactly what ARDragPipeline's inference writes, same noise."""
    pipe = _pipe(context_timestep=context_timestep)
    image, tracks = _inputs()
    pipe.fast = (
        False  # the reference sampler (iter_rollout): the streaming engine's equality is test_streaming's
    )
    spy = _CacheWrites(pipe.transformer)
    video = pipe(image, tracks, prompt="a disc", seed=5)
    inference = spy.take()
    # every chunk but the last is written (nothing reads the last chunk's keys and values)
    c = pipe.config.chunk_size
    w = inference.shape[2]
    assert video.shape[0] == T and w == (math.ceil(T / c) - 1) * c

    prep = pipe._prepare(image, tracks, None, "a disc", None, 5)  # the pipeline's own noise and generator
    den = Denoiser(pipe.transformer, prep.conditions)
    cfg = pipe.config.rollout()
    exits = sample_exit_steps(T, 3, torch.Generator().manual_seed(1))
    assert len(set(exits)) > 1
    roll = student_rollout(den, prep.noise, cfg, exits, generator=prep.generator)
    training = spy.take()
    # same calls on the same numbers: equal to float tolerance (the exit step runs with autograd bookkeeping)
    assert (training - inference).abs().max().item() <= 1e-5
    assert (roll.cached[:, :, :w] - inference).abs().max().item() <= 1e-5
    if context_timestep > 0:  # the cache holds noised frames, not the clean output
        clean = torch.cat([c.clean for c in roll.chunks], 2)
        assert (roll.cached - clean).abs().mean().item() > 1e-2

    # Self-Forcing's collapsed update writes something else; teacher forcing writes the data
    prep = pipe._prepare(image, tracks, None, "a disc", None, 5)
    sf = student_rollout(den, prep.noise, dataclasses.replace(cfg, cache_update="exit_prediction"), exits)
    assert (sf.cached[:, :, :w] - inference).abs().max().item() > 5e-2 and torch.equal(
        spy.take(), sf.cached[:, :, :w]
    )
    data = torch.randn_like(prep.noise)
    gt_cfg = dataclasses.replace(cfg, cache_update="ground_truth", context_timestep=0.0)
    gt = student_rollout(den, prep.noise, gt_cfg, exits, ground_truth=data)
    assert torch.equal(gt.cached, data) and torch.equal(spy.take(), data[:, :, :w])
    # the generator's sample is the exit predictions, whatever the cache rule
    for r in (roll, sf, gt):
        assert torch.equal(r.x, torch.cat([c.grad_x0 for c in r.chunks], 2)) and not r.x.requires_grad
    assert torch.equal(sf.x[:, :, :1], gt.x[:, :, :1])  # frame 0 sees no cache: same under both rules


def test_exit_prediction_at_the_last_step_is_full_denoise():
    pipe = _pipe()
    prep = pipe._prepare(*_inputs(), None, "", None, 0)
    den, cfg = Denoiser(pipe.transformer, prep.conditions), pipe.config.rollout()
    a = student_rollout(den, prep.noise, cfg, [2] * T)
    b = student_rollout(den, prep.noise, dataclasses.replace(cfg, cache_update="exit_prediction"), [2] * T)
    assert (a.cached - b.cached).abs().max().item() <= 1e-5


def test_finish_denoises_every_chunk_while_the_cache_keeps_exit_predictions():
    """exit_prediction with `finish`: the cache receives what it receives without (the exit predictions), and each
    chunk's clean frames are its full N-step result given that cache: frame 0 (no cache) equals Self-Rollout's."""
    pipe = _pipe()
    prep = pipe._prepare(*_inputs(), None, "", None, 0)
    den = Denoiser(pipe.transformer, prep.conditions)
    sf_cfg = dataclasses.replace(pipe.config.rollout(), cache_update="exit_prediction")
    exits = [0, 1, 0, 2, 1, 0]
    plain = student_rollout(den, prep.noise, sf_cfg, exits)
    spy = _CacheWrites(pipe.transformer)
    done = student_rollout(den, prep.noise, sf_cfg, exits, finish=True)
    assert (done.cached - plain.cached).abs().max().item() <= 1e-5  # same cache, same exit predictions
    assert (done.x - plain.x).abs().max().item() <= 1e-5
    assert torch.equal(spy.take(), done.cached[:, :, : T - 1])
    full = student_rollout(den, prep.noise, pipe.config.rollout(), exits)
    assert (done.clean[:, :, :1] - full.clean[:, :, :1]).abs().max().item() <= 1e-5
    # frames that exited before the last step: clean is the finished chain, not the exit prediction
    early = [i for i, n in enumerate(exits) if n < 2]
    assert all((done.clean[:, :, i] - done.x[:, :, i]).abs().max().item() > 1e-3 for i in early)
    assert all((plain.clean[:, :, i] - plain.x[:, :, i]).abs().max().item() <= 1e-6 for i in range(T))


def test_context_noise_is_added_seeded_and_matches_the_masked_reference():
    pipe = _pipe()
    prep = pipe._prepare(*_inputs(), None, "", None, 0)
    den = Denoiser(pipe.transformer, prep.conditions)
    cfg = dataclasses.replace(pipe.config.rollout(), context_timestep=100.0)
    chunks = list(iter_rollout(den, prep.noise, cfg, generator=torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(
        3
    )  # no SDE step: the generator draws only the context noise, chunk by chunk
    for ch in chunks:
        eps = torch.randn(ch.clean.shape, generator=g)
        assert torch.allclose(ch.cached, 0.9 * ch.clean + 0.1 * eps, atol=1e-6)
    again = list(iter_rollout(den, prep.noise, cfg, generator=torch.Generator().manual_seed(3)))
    assert all(torch.equal(a.clean, b.clean) for a, b in zip(chunks, again))
    masked_cfg = dataclasses.replace(cfg, use_kv_cache=False)
    masked = list(iter_rollout(den, prep.noise, masked_cfg, generator=torch.Generator().manual_seed(3)))
    assert max((a.clean - b.clean).abs().max().item() for a, b in zip(chunks, masked)) <= 1e-4
    with pytest.raises(ValueError, match="cache_update"):
        RolloutConfig(cache_update="collapse")


# ---------------------------------------------------------------------------------------------- gradient rule
def _tiny() -> tuple[CausalWanTransformer, Conditions]:
    model = CausalWanTransformer(**preset_config("tiny", cond_in_channels=2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model, Conditions(torch.randn(1, 4, 16), torch.randn(1, 2, 5, 4, 4))


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _rel(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    num = sum((a[k] - b[k]).square().sum() for k in a) ** 0.5
    return float(num / sum(a[k].square().sum() for k in a) ** 0.5)


CFG = RolloutConfig(causal=CausalConfig(chunk_size=1, cache_frames=2), context_timestep=20.0)
EXITS = [0, 2, 1, 1, 0]


def test_gradient_reaches_the_student_only_through_exit_predictions():
    model, conds = _tiny()
    den = Denoiser(model, conds)
    noise, w = torch.randn(1, 12, 5, 4, 4), torch.randn(1, 12, 5, 4, 4)  # loss = <w, x>: dL/dx = w

    # in-graph route: iter_rollout with grad enabled keeps every chunk's exit graph until backward
    chunks = list(iter_rollout(den, noise, CFG, grad_steps=EXITS, generator=torch.Generator().manual_seed(0)))
    assert all(not c.clean.requires_grad and not c.cached.requires_grad for c in chunks)
    (torch.cat([c.grad_x0 for c in chunks], 2) * w).sum().backward()
    g_graph = _grads(model)

    # bounded route: no graph during the rollout, recompute exit forwards one chunk at a time
    roll = student_rollout(den, noise, CFG, EXITS, generator=torch.Generator().manual_seed(0))
    assert not any(p.grad is not None for p in model.parameters())
    x_re = roll.backward(den, w, CFG)
    g_replay = _grads(model)
    assert (x_re - roll.x).abs().max().item() <= 1e-5
    assert _rel(g_replay, g_graph) <= 1e-5

    # reference: the cache filled by a frozen copy of the weights (so certainly a constant); the exit forward by
    # the trained model. Equal gradient = no gradient flows through cached keys/values.
    frozen = copy.deepcopy(model).requires_grad_(False)
    cache = frozen.new_cache(CFG.causal, 4, 4)
    sig = CFG.schedule.sigmas().tolist()
    for m, ch in enumerate(roll.chunks):
        s = sig[EXITS[m]]
        v = model.forward_cached(
            ch.grad_state,
            torch.full((1, 1), 1000 * s),
            conds.context,
            cache,
            m,
            cond=conds.cond_slice(m, m + 1),
        )
        ((ch.grad_state - s * v) * w[:, :, m : m + 1]).sum().backward()
        frozen.forward_cached(
            ch.cached,
            torch.full((1, 1), 20.0),
            conds.context,
            cache,
            m,
            cond=conds.cond_slice(m, m + 1),
            write=True,
        )
    assert _rel(_grads(model), g_replay) <= 1e-5

    # through_context=True: one teacher-forcing pass; its gradient also flows through the context K/V and equals
    # the masked reference rollout (use_kv_cache=False), which recomputes the context with gradient
    model.enable_gradient_checkpointing()
    x_tf = roll.backward(den, w, CFG, through_context=True)
    g_tf = _grads(model)
    model.disable_gradient_checkpointing()
    assert (x_tf - roll.x).abs().max().item() <= 1e-4
    masked_cfg = dataclasses.replace(CFG, use_kv_cache=False)
    chunks = list(
        iter_rollout(den, noise, masked_cfg, grad_steps=EXITS, generator=torch.Generator().manual_seed(0))
    )
    (torch.cat([c.grad_x0 for c in chunks], 2) * w).sum().backward()
    g_masked = _grads(model)
    assert _rel(g_tf, g_masked) <= 1e-4
    assert _rel(g_tf, g_replay) > 1e-2  # the flag really changes the rule


class _SavedBytes:
    """Live bytes of tensors saved for backward (autograd graph memory), and their peak."""

    def __init__(self):
        self.live = self.peak = 0

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda box: box.t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def _pack(self, t):
        box = type("Box", (), {})()
        box.t, n = t, t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._free, n)
        return box

    def _free(self, n):
        self.live -= n


def test_bounded_route_keeps_one_chunk_graph_alive():
    model, _ = _tiny()
    peaks = {}
    for frames in (2, 6):
        conds = Conditions(torch.randn(1, 4, 16), torch.randn(1, 2, frames, 4, 4))
        den, noise = Denoiser(model, conds), torch.randn(1, 12, frames, 4, 4)
        w, exits = torch.randn_like(noise), [1] * frames
        with _SavedBytes() as graph:
            chunks = list(iter_rollout(den, noise, CFG, grad_steps=exits))
            (torch.cat([c.grad_x0 for c in chunks], 2) * w).sum().backward()
        with _SavedBytes() as replay:
            student_rollout(den, noise, CFG, exits).backward(den, w, CFG)
        peaks[frames] = (graph.peak, replay.peak)
        assert graph.live == 0 and replay.live == 0
        model.zero_grad()
    print("saved-tensor peak bytes (graph, replay):", peaks)
    assert peaks[6][0] > 2.5 * peaks[2][0]  # in-graph route: grows with the frame count
    assert peaks[6][1] <= 1.05 * peaks[2][1]  # bounded route: one chunk's graph at a time
