"""ardrag-fit and the teacher stage: the loss falls, resume is exact (also after SIGKILL), DDP ranks see different
samples, the export loads and generates, the full-scale config refuses cleanly without weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ardrag import ARDragPipeline
from ardrag.cli.fit import main as fit_main
from ardrag.training.teacher import ModelInit, TeacherModule, TeacherOptim
from datamodules import ARDragDataModule
from datamodules.toy_world import write_toy_world

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def small_toy(root: Path, seed: int, num_train: int = 16) -> Path:
    """A 32 x 32, 9-frame toy world in `root` and `root/pipeline.json` (toy pipeline settings at that size)."""
    write_toy_world(
        root,
        num_train=num_train,
        num_val=4,
        num_test=4,
        size=32,
        frames=9,
        seed=seed,
        samples_per_shard=4,
        progress=False,
    )
    cfg = json.loads((ROOT / "configs/pipeline/toy.json").read_text())
    cfg.update(height=32, width=32)
    (root / "pipeline.json").write_text(json.dumps(cfg))
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return small_toy(tmp_path_factory.mktemp("toyfit"), seed=1)


def _args(toy: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--config",
        str(ROOT / "configs/toy/teacher.yaml"),
        f"--trainer.default_root_dir={out}",
        f"--trainer.max_steps={steps}",
        "--trainer.precision=32-true",
        "--trainer.val_check_interval=3",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.callbacks=[]",
        "--checkpoint_every=3",
        f"--model.init_args.model.pipeline_config={toy / 'pipeline.json'}",
        "--model.init_args.model.preset=tiny",
        "--model.init_args.model.preset_overrides={}",
        "--model.init_args.optim.warmup_steps=2",
        "--model.init_args.sampling.num_steps=4",
        f"--data.init_args.train_shards={toy / 'train'}",
        f"--data.init_args.val_shards={toy / 'val'}",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        "--data.init_args.num_frames=9",
        *extra,
    ]


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from every TensorBoard events file of a run (a resumed run's later file wins)."""
    from ardrag.training.tblog import read_run_scalars

    return read_run_scalars(run)[0]


def _losses(run: Path) -> dict[int, float]:
    return scalars(run).get("train/loss", {})


def test_training_conditions_are_built_by_the_pipelines_own_conditioner(toy):
    """Training must condition exactly as inference does: a pipeline setting such as reference_frames reaches the
    training batch (a second Conditioner built from part of the config once silently dropped it)."""
    import dataclasses

    from ardrag.pipeline import PipelineConfig

    cfg = PipelineConfig.from_dict(json.loads((toy / "pipeline.json").read_text()))
    path = toy / "pipeline_all.json"
    path.write_text(json.dumps({**dataclasses.asdict(cfg), "reference_frames": "all"}))
    m = TeacherModule(model=ModelInit(pipeline_config=str(path), preset="tiny"))
    dm = ARDragDataModule(train_shards=str(toy / "train"), val_shards=None, batch_size=2, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    x0, conds = m.conditions(batch)
    c = m.codec.latent_channels
    ref = m.codec.encode(batch["video"][:, :, :1])
    for f in range(x0.shape[2]):  # the reference latent sits in every latent frame, as the pipeline builds it
        torch.testing.assert_close(conds.cond[:, c : 2 * c, f : f + 1], ref, rtol=0, atol=1e-6)


def test_teacher_loss_falls_on_a_fixed_batch(toy):
    torch.manual_seed(0)
    m = TeacherModule(
        model=ModelInit(pipeline_config=str(toy / "pipeline.json"), preset="tiny"),
        optim=TeacherOptim(lr=3e-3, ema_decay=0.0),
    )
    dm = ARDragDataModule(train_shards=str(toy / "train"), val_shards=None, batch_size=4, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    x0, conds = m.conditions(batch)
    sig = torch.linspace(0.1, 0.9, 4)

    def fixed_loss() -> float:
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            return float(sum(m.flow_matching_loss(x0, conds, g, s.repeat(4)) for s in sig) / len(sig))

    before = fixed_loss()
    opt = torch.optim.AdamW(m.transformer.parameters(), lr=3e-3)
    for step in range(60):
        loss = m.flow_matching_loss(x0, conds, torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = fixed_loss()
    assert after <= 0.7 * before, (before, after)  # >= 30% lower on the same batch and noise


@pytest.mark.parametrize("prediction_type", ["velocity", "sample"])
def test_sample_weighting_is_the_x0_error(toy, prediction_type):
    """loss.weighting = sample averages ||x0_hat - x0||^2 (x0_hat = x_s - s v_hat, s clamped as the model does),
    whatever the backbone predicts; velocity weighting is the plain velocity error."""
    from ardrag.training.teacher import TeacherLoss

    overrides = {"prediction_type": prediction_type}
    if prediction_type == "sample":
        c = json.loads((toy / "pipeline.json").read_text())["codec"]
        c = len(c["basis"]) if c["type"] == "pca" else 3 * c["factor"] ** 2
        overrides["sample_base"] = [c, 2 * c]  # condition channels [trajectory c | reference c | mask]
    init = ModelInit(pipeline_config=str(toy / "pipeline.json"), preset="tiny", preset_overrides=overrides)
    m = TeacherModule(model=init, loss=TeacherLoss(weighting="sample"))
    m_v = TeacherModule(model=init, loss=TeacherLoss(weighting="velocity"))
    dm = ARDragDataModule(train_shards=str(toy / "train"), val_shards=None, batch_size=3, num_workers=0)
    x0, conds = m.conditions(next(iter(dm.train_dataloader())))
    sigma = torch.tensor([0.02, 0.3, 0.9])  # 0.02 is below the x0-model's clamp (0.05)
    with torch.no_grad():
        got = m.flow_matching_loss(x0, conds, torch.Generator().manual_seed(5), sigma)
        got_v = m_v.flow_matching_loss(x0, conds, torch.Generator().manual_seed(5), sigma)
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
        s = sigma.view(-1, 1, 1, 1, 1)
        x_s = (1 - s) * x0 + s * eps
        v = m.transformer(x_s, sigma * 1000, conds.context, cond=conds.cond).float()
        s_conv = s.clamp_min(0.05) if prediction_type == "sample" else s
        x0_hat = x_s - s_conv * v
        want = ((x0_hat - x0) ** 2).mean()
        want_v = ((v - (x_s - x0) / s_conv) ** 2).mean()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got_v, want_v, rtol=1e-4, atol=1e-7)
    # x0 error / s: the 1 / s^2 weight of the velocity loss dominates at s = 0.02
    if prediction_type == "sample":
        assert float(got_v) > 10 * float(got), (float(got_v), float(got))


def test_resume_gives_the_uninterrupted_losses_and_exports(toy, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert fit_main(_args(toy, full, 6)) == 0
    # --checkpoint_every=3: every periodic checkpoint is kept, plus last.ckpt
    kept = sorted(p.name for p in (full / "checkpoints").glob("*.ckpt"))
    assert kept == ["last.ckpt", "step0000003.ckpt", "step0000006.ckpt"], kept
    assert fit_main(_args(toy, parts, 3)) == 0  # stops at step 3 (last.ckpt written at max_steps)
    assert (parts / "checkpoints" / "last.ckpt").exists()
    assert fit_main(_args(toy, parts, 6, "--ckpt_path=last")) == 0
    a, b = _losses(full), _losses(parts)
    assert sorted(a) == sorted(b) == list(range(6))
    for step in range(6):  # same batches, same noise, same updates: equal to float rounding
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    # the exported pipeline is the bidirectional teacher and generates
    pipe = ARDragPipeline.from_pretrained(full / "export")
    assert pipe.config.mode == "bidirectional" and pipe.config.num_steps == 4
    tracks = np.stack([np.linspace([8, 8], [24, 20], 9)], axis=1).astype(np.float32)
    video = pipe(np.zeros((32, 32, 3), np.uint8), tracks, seed=0)
    assert video.shape == (9, 32, 32, 3) and video.dtype == np.uint8 and video.std() > 0
    # a stopped run exports from its checkpoint too
    from ardrag.cli.export import main as export_main

    assert (
        export_main(["--ckpt", str(parts / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "ex")]) == 0
    )
    assert ARDragPipeline.from_pretrained(tmp_path / "ex").config == pipe.config


def _run(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run(
        [sys.executable, "-m", "ardrag.cli.fit", *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_sigkill_after_a_periodic_checkpoint_resumes_exactly(toy, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert fit_main(_args(toy, full, 6)) == 0
    kill = '--trainer.callbacks=[{"class_path": "_fit_probes.KillAt", "init_args": {"step": 4}}]'
    r = _run(_args(toy, killed, 6) + [kill], ROOT)
    assert r.returncode == -9, r.stderr[-2000:]  # killed at step 4; the step-3 checkpoint is on disk
    assert (killed / "checkpoints" / "last.ckpt").exists()
    assert fit_main(_args(toy, killed, 6, "--ckpt_path=last")) == 0
    a, b = _losses(full), _losses(killed)
    for step in range(6):
        assert b[step] == pytest.approx(a[step], rel=1e-5), step


@pytest.mark.slow
def test_ddp_two_cpu_processes_see_different_samples(toy, tmp_path):
    rec = tmp_path / "keys"
    probe = f'--trainer.callbacks=[{{"class_path": "_fit_probes.RecordKeys", "init_args": {{"folder": "{rec}"}}}}]'
    args = _args(toy, tmp_path / "ddp", 2, "--trainer.strategy=ddp", "--trainer.devices=2", probe)
    r = _run(args, ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = [
        {k for line in (rec / f"rank{i}.jsonl").read_text().splitlines() for k in json.loads(line)}
        for i in range(2)
    ]
    assert len((rec / "rank0.jsonl").read_text().splitlines()) == 2  # 2 steps on each rank
    assert keys[0] and keys[1] and keys[0].isdisjoint(keys[1])  # ranks read disjoint shards


def test_full_scale_config_refuses_cleanly_without_weights(tmp_path, capsys):
    rc = fit_main(["--config", str(ROOT / "configs/teacher.yaml"), f"--trainer.default_root_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "/path/to/Wan2.1-T2V-1.3B-Diffusers/transformer" in err[0] and "nothing is downloaded" in err[0]


def test_full_scale_teacher_builds_on_meta():
    import yaml

    from ardrag.models.causal_wan import CausalWanTransformer, count_parameters
    from ardrag.models.presets import preset_config

    cfg = yaml.safe_load((ROOT / "configs/teacher.yaml").read_text())
    pipe_cfg = json.loads((ROOT / cfg["model"]["init_args"]["model"]["pipeline_config"]).read_text())
    assert pipe_cfg["codec"]["type"] == "wan_vae"
    with torch.device("meta"):
        model = CausalWanTransformer(**preset_config("wan2.1-1.3b", cond_in_channels=2 * 16 + 1))
    # Wan2.1 1.3B plus the zero-initialised condition patch embedding (33 channels x 1536 x 1 x 2 x 2)
    assert count_parameters(model) == 1_418_996_800 + 33 * 1536 * 4


def test_bad_config_key_is_one_line(tmp_path, capsys):
    rc = fit_main(["--config", str(ROOT / "configs/toy/teacher.yaml"), "--model.init_args.nonsense=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nonsense" in err[0]


@pytest.mark.parametrize(
    ("name", "max_ratio"),
    [
        # the toy teacher. Measured on AMD EPYC: 4.06 px vs 9.84 px (0.41; per clip 0.3-7.1 px); results/teacher_check: 4.02
        # vs 10.12 over 8 clips x 3 seeds.
        ("teacher", 0.5),
        # the AR-Drag toy student after RL, 3 steps per frame with the rolling cache. Measured on AMD EPYC
        # (scripts/motion_probe.py, same clips): 6.32 px vs 9.84 px (0.64); the bound leaves room for other CPUs.
        ("rl", 0.75),
    ],
)
def test_committed_toy_checkpoint_moves_the_dragged_sprites(name, max_ratio):
    """A committed toy pipeline's samples follow the drags: on 6 held-out toy clips (rendered from their seeds, their
    moving tracks) the penalised ObjMC-LK of its samples is below max_ratio x the static video's."""
    from benchmark.metrics.motion import motion_metrics
    from datamodules.toy_world import clip_seed, render_clip

    pipe = ARDragPipeline.from_pretrained(ROOT / "results/toy/checkpoints" / name)
    ours, static = [], []
    for i in range(6):
        clip = render_clip(clip_seed(0, "test", i))
        moved = np.linalg.norm(clip.tracks - clip.tracks[:1], axis=-1).max(0) > 1.0
        idx = np.flatnonzero(moved & clip.visible[0])[:8]
        tracks, visible = clip.tracks[:, idx], clip.visible[:, idx]
        video = pipe(clip.video[0], tracks, visible, prompt=clip.meta["prompt"], seed=0)
        ours.append(motion_metrics(video, tracks, visible)["objmc_penalised"])
        still = np.repeat(clip.video[:1], len(clip.video), 0)
        static.append(motion_metrics(still, tracks, visible)["objmc_penalised"])
    assert np.mean(ours) < max_ratio * np.mean(static), (np.mean(ours), np.mean(static))


@pytest.mark.parametrize(
    ("precision", "accelerator", "mode", "native", "want"),
    [
        ("bf16-mixed", "cpu", "auto", False, "32-true"),  # emulated bf16: train in fp32
        ("bf16-true", "auto", "auto", False, "32-true"),  # (no CUDA in the test environment)
        ("bf16-mixed", "cpu", "auto", True, None),  # AVX-512 BF16 / AMX: the config's choice
        ("bf16-mixed", "cpu", "auto", None, None),  # flags unknown: the config's choice
        ("bf16-mixed", "cpu", "keep", False, None),  # the user forces it
        ("32-true", "cpu", "auto", False, None),
        ("bf16-mixed", "gpu", "auto", False, None),
    ],
)
def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32(
    monkeypatch, capsys, precision, accelerator, mode, native, want
):
    import ardrag.hardware
    from ardrag.cli.fit import cpu_precision

    if accelerator == "auto" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    monkeypatch.setattr(ardrag.hardware, "cpu_has_native_bf16", lambda: native)
    assert cpu_precision(precision, accelerator, mode, quiet=True) == want  # (recipe_notes.py asks so)
    assert capsys.readouterr().err == ""
    assert cpu_precision(precision, accelerator, mode) == want
    assert ("training in 32-true" in capsys.readouterr().err) == (want == "32-true")


def test_cpu_flags_decide_native_bf16(monkeypatch):
    import ardrag.hardware as hw

    for flags, want in (
        ({"avx2", "avx512f"}, False),
        ({"avx512f", "avx512_bf16"}, True),
        ({"amx_bf16"}, True),
    ):
        monkeypatch.setattr(hw, "cpu_flags", lambda f=flags: f)
        assert hw.cpu_has_native_bf16() is want
    monkeypatch.setattr(hw, "cpu_flags", lambda: None)
    assert hw.cpu_has_native_bf16() is None


def test_fit_says_when_it_trains_bf16_config_in_fp32(toy, tmp_path, monkeypatch, capsys):
    import ardrag.hardware

    monkeypatch.setattr(ardrag.hardware, "cpu_has_native_bf16", lambda: False)
    args = _args(toy, tmp_path / "run", 1)
    assert fit_main([*args, "--trainer.precision=bf16-mixed"]) == 0
    assert "training in 32-true" in capsys.readouterr().err
    assert (
        fit_main([*args, "--trainer.precision=bf16-mixed", "--cpu_bf16=keep", "--trainer.max_steps=2"]) == 0
    )
    assert "training in 32-true" not in capsys.readouterr().err
