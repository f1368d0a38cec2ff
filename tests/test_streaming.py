"""Inference engines (ardrag.streaming) against the training-side sampler, lazy conditions, compiled blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ardrag import ARDragPipeline
from ardrag.codecs import build_codec
from ardrag.conditioning import Conditioner
from ardrag.pipeline import PipelineConfig
from ardrag.sampling import Denoiser, iter_rollout, sample_bidirectional
from ardrag.streaming import StreamEngine, sample_bidirectional_fast

T = 10


def make_pipe(**cfg) -> ARDragPipeline:
    base = {
        "height": 32,
        "width": 32,
        "text_encoder": {"type": "hash", "dim": 16, "max_length": 8},
        "cache_frames": 3,
        "reference_frames": "all",
        "motion_preview_radius": 4.0,
    }
    model = cfg.pop("model", {})
    pipe = ARDragPipeline.from_preset("tiny", PipelineConfig(**{**base, **cfg}), seed=0, **model)
    with torch.no_grad():  # an untrained model with zero-init parts would ignore its conditions
        for p in pipe.transformer.parameters():
            p.normal_(0, 0.1)
    return pipe


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tracks = np.stack([np.linspace([5, 5], [25, 28], T), np.linspace([20, 10], [20, 10], T)], axis=1)
    return image, tracks.astype(np.float32)


@pytest.mark.parametrize("fill", [0.0, 1.5])
@pytest.mark.parametrize("reference_frames", ["first", "all"])
def test_conditioner_frames_equal_the_slices_of_all_frames(fill, reference_frames):
    cond = Conditioner(build_codec({"type": "pixel", "factor": 4}), 2.0, reference_frames, 6.0, fill)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    tracks = torch.rand(2, 9, 3, 2, generator=g) * 32
    tracks[:, :, 2] = tracks[:, :1, 2]  # a drag that never moves
    visible = torch.rand(2, 9, 3, generator=g) > 0.2
    full = cond(ref, tracks, visible)
    for c in (1, 3, 4):
        for s in range(0, 9, c):
            part = cond.frames(ref, tracks, visible, s, min(s + c, 9))
            if fill == 0 and s == 0 and c == 1:  # frame 0's preview: the reference, not its paste onto itself
                torch.testing.assert_close(part, full[:, :, :1], rtol=0, atol=1e-5)
            else:
                assert torch.equal(part, full[:, :, s : s + c]), (c, s)


CASES = {
    "frame-wise": {},
    "chunk 3, partial last chunk": {"chunk_size": 3, "cache_frames": 6},
    "sink": {"sink_frames": 1, "cache_frames": 4},
    "guidance": {"guidance_scale": 3.0, "negative_prompt": "blurry"},
    "context noise": {"context_timestep": 100.0},
    "sample prediction on the reference": {
        "model": {"prediction_type": "sample", "sample_base": (48, 96)},
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_stream_engine_equals_iter_rollout(case, inputs):
    pipe = make_pipe(**dict(CASES[case]))
    image, tracks = inputs
    with torch.no_grad():
        prep = pipe._prepare(image, tracks, None, "a red disc", None, 3)
        g = prep.generator.get_state()
        den = Denoiser(pipe.transformer, prep.conditions, pipe.config.guidance_scale)
        ref = [
            ch.clean for ch in iter_rollout(den, prep.noise, pipe.config.rollout(), generator=prep.generator)
        ]
        for fold in (True, False):
            prep.generator.set_state(g)
            eng = StreamEngine(pipe.transformer, prep.conditions, pipe.config.rollout(), fold_write=fold)
            out = list(eng.run(prep.noise, generator=prep.generator))
            assert [o.shape for o in out] == [r.shape for r in ref]
            err = (torch.cat(out, 2) - torch.cat(ref, 2)).abs().max().item()
            assert err < 1e-4, (case, fold, err)
    # the pipeline (lazy conditions, frame-by-frame decode) gives the training-side sampler's video
    fast = np.stack(list(pipe.stream(image, tracks, prompt="a red disc", seed=3)))
    pipe.fast = False
    slow = np.stack(list(pipe.stream(image, tracks, prompt="a red disc", seed=3)))
    assert np.abs(fast.astype(int) - slow).max() <= 1


def test_stream_engine_takes_drag_updates_like_the_reference(inputs):
    pipe = make_pipe()
    image, tracks = inputs
    moved = tracks.copy()
    moved[:, 0] = [[28, 4]] * T

    def run():
        st = pipe.stream(image, tracks, seed=2)
        frames = [next(st), next(st), st.send({"tracks": moved})]
        return np.stack(frames + list(st))

    fast = run()
    pipe.fast = False
    slow = run()
    assert np.abs(fast.astype(int) - slow).max() <= 1
    pipe.fast = True
    unchanged = np.stack(list(pipe.stream(image, tracks, seed=2)))
    assert np.abs(unchanged[:2].astype(int) - fast[:2]).max() <= 1  # frames made before the update stay
    assert np.abs(unchanged[3:].astype(int) - fast[3:]).max() > 10  # the later ones follow the new drag


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_bidirectional_engine_equals_sample_bidirectional(guidance, inputs):
    pipe = make_pipe(mode="bidirectional", num_steps=4, timesteps=None, shift=3.0, guidance_scale=guidance)
    image, tracks = inputs
    with torch.no_grad():
        prep = pipe._prepare(image, tracks, None, "a red disc", "", 0)
        den = Denoiser(pipe.transformer, prep.conditions, guidance)
        ref = sample_bidirectional(den, prep.noise, pipe.config.schedule())
        out = sample_bidirectional_fast(
            pipe.transformer, prep.conditions, prep.noise, pipe.config.schedule(), guidance
        )
    assert (out - ref).abs().max().item() < 1e-4


@pytest.mark.slow
def test_compiled_blocks_equal_eager_without_per_layer_recompiles(inputs):
    """Compiled videos equal eager ones within one uint8 level; one graph per input shape (c query frames alone
    and over the cache, 2c, for a stream; the clip for the teacher), never one per layer."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    image, tracks = inputs
    first_eager = None
    for cfg in ({}, {"mode": "bidirectional", "num_steps": 2, "timesteps": None}):
        pipe = make_pipe(**cfg, model={"num_layers": 3})
        eager = pipe(image, tracks, seed=5)
        pipe.config.compile = True
        before = counters["stats"]["unique_graphs"]
        _, sources = run_and_get_code(pipe.warmup, T)
        code = "\n".join(line for src in sources for line in src.splitlines() if "#" not in line)
        if torch._C.has_mkl:  # frozen graphs: every block linear on pre-packed MKL weights, none as addmm
            assert "mkl_linear" in code and "cpu_addmm" not in code and "extern_kernels.addmm" not in code
        graphs = counters["stats"]["unique_graphs"] - before
        assert graphs <= (1 if cfg else 3), graphs
        compiled = pipe(image, tracks, seed=5)
        streamed = np.stack(list(pipe.stream(image, tracks, seed=5)))
        assert counters["stats"]["unique_graphs"] - before == graphs  # no recompile after the warm-up
        assert np.abs(compiled.astype(int) - eager).max() <= 1
        assert np.abs(streamed.astype(int) - eager).max() <= 1
        first_eager = first_eager if cfg else eager
    # another model of the same shapes gets graphs of its own (frozen weights are constants): its own video
    other = make_pipe(model={"num_layers": 3})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.transformer.parameters():
            p.normal_(0, 0.1, generator=g)
    own = other(image, tracks, seed=5)
    assert np.abs(own.astype(int) - first_eager).max() > 10
    other.config.compile = True
    assert np.abs(other(image, tracks, seed=5).astype(int) - own).max() <= 1


def test_engine_constants_follow_changed_weights(inputs):
    """The fused weights and modulations kept per model are rebuilt once a parameter changes in place."""
    pipe = make_pipe()
    image, tracks = inputs
    before = pipe(image, tracks, seed=1)
    with torch.no_grad():
        for p in pipe.transformer.blocks[0].parameters():
            p.mul_(1.5)
        pipe.transformer.scale_shift_table.add_(0.3)
    after = pipe(image, tracks, seed=1)
    pipe.fast = False
    reference = pipe(image, tracks, seed=1)
    assert np.abs(after.astype(int) - reference).max() <= 1
    assert np.abs(after.astype(int) - before).max() > 10
