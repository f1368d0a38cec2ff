"""SFT stage under `ardrag-fit`: every toy config (Self-Rollout, the no-rollout and chunk-3 ablations) trains a few
steps and exports a student with its settings; the full-scale config parses and refuses cleanly without weights;
checkpoints hold no teacher and resume to the same losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ardrag import ARDragPipeline
from ardrag.cli import fit
from ardrag.models import CausalWanTransformer, preset_config
from ardrag.pipeline import PipelineConfig
from datamodules.toy_world import write_toy_world


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one torch thread is several times faster than two on a busy 2-core CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A small toy world and a tiny exported teacher (16x16 frames, pixel codec factor 2)."""
    root = tmp_path_factory.mktemp("sft")
    write_toy_world(
        root / "w",
        num_train=8,
        num_val=4,
        num_test=2,
        size=32,
        frames=9,
        samples_per_shard=4,
        min_shards=2,
        progress=False,
    )
    cfg = PipelineConfig(
        height=16,
        width=16,
        codec={"type": "pixel", "factor": 2},
        mode="bidirectional",
        timesteps=None,
        num_steps=4,
        cache_frames=3,
        text_encoder={"type": "hash", "dim": 16, "max_length": 8},
    )
    pipe = ARDragPipeline.from_preset("tiny", cfg, seed=0)
    with torch.no_grad():  # zero-initialised parts would make the teacher ignore its conditions
        for p in pipe.transformer.parameters():
            p.normal_(0, 0.1)
    pipe.save_pretrained(root / "teacher")
    return {"root": root, "teacher": root / "teacher", "train": root / "w/train", "val": root / "w/val"}


def tiny_args(world: dict[str, Path], run: Path, steps: int = 3) -> list[str]:
    return [
        f"--model.init_args.teacher={world['teacher']}",
        "--model.init_args.student.cache_frames=3",
        f"--trainer.default_root_dir={run}",
        f"--trainer.max_steps={steps}",
        "--trainer.log_every_n_steps=1",
        f"--data.init_args.train_shards={world['train']}",
        f"--data.init_args.val_shards={world['val']}",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_frames=5",
        "--data.init_args.height=16",
        "--data.init_args.width=16",
        "--data.init_args.num_workers=0",
        "--data.init_args.max_tracks=2",
    ]


def scalars(run: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize(
    "overlay,cache_update,chunk",
    [
        (None, "full_denoise", 1),
        ("sft_no_rollout", "exit_prediction", 1),
        ("sft_chunk3", "exit_prediction", 3),
    ],
)
def test_toy_sft_configs_train_a_few_steps_and_export_the_student(
    world, tmp_path, overlay, cache_update, chunk
):
    configs = ["--config", "configs/toy/sft.yaml"]
    if overlay:
        configs += ["--config", f"configs/toy/{overlay}.yaml"]
    run = tmp_path / "run"
    assert fit.main(configs + tiny_args(world, run)) == 0
    saved = (run / "tb" / "config.yaml").read_text()
    assert f"cache_update: {cache_update}" in saved and f"chunk_size: {chunk}" in saved
    logs = scalars(run)
    # the generator every k = 2 steps (steps 0 and 2), the critic every step; losses finite
    assert sorted(logs["train/critic"]) == [0, 1, 2] and sorted(logs["train/dmd"]) == [0, 2]
    assert all(torch.isfinite(torch.tensor(list(logs["train/loss"].values()))))
    # step 0: the critic is still the teacher and the toy guidance is 1, so the DMD gradient is exactly zero
    assert logs["train/dmd_grad_norm"][0] == 0.0 and logs["train/dmd_grad_norm"][2] > 0
    student = ARDragPipeline.from_pretrained(run / "export")
    assert student.config.mode == "autoregressive" and student.config.chunk_size == chunk
    assert student.config.timesteps == [1000.0, 755.0, 522.0] and student.config.guidance_scale == 1.0
    video = student(torch.randint(0, 255, (16, 16, 3), dtype=torch.uint8).numpy(), [[[4.0, 4.0]]] * 5, seed=0)
    assert video.shape == (5, 16, 16, 3)
    # the checkpoint holds student, critic and EMA but not the frozen teacher (re-read from its export)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("student.") for k in keys) and any(k.startswith("critic.") for k in keys)
    assert not any(k.startswith("teacher.") for k in keys)


def test_resume_continues_with_the_same_losses(world, tmp_path):
    args = ["--config", "configs/toy/sft.yaml"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert fit.main(args + tiny_args(world, straight, steps=4)) == 0
    assert fit.main(args + tiny_args(world, stopped, steps=2)) == 0
    assert fit.main(args + tiny_args(world, stopped, steps=4) + ["--ckpt_path", "last"]) == 0
    a, b = scalars(straight)["train/loss"], scalars(stopped)["train/loss"]
    for step in (2, 3):
        assert b[step] == pytest.approx(a[step], rel=1e-5)


def errors(capsys) -> list[str]:
    """stderr lines besides Lightning's seed notice; a traceback would show up here."""
    return [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("INFO: Seed set")]


def test_full_scale_config_parses_and_refuses_without_weights(tmp_path, capsys):
    assert fit.main(["--config", "configs/sft.yaml"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "teacher export not found at runs/wan/teacher/export" in err[0]
    # the full-scale config's error points at the full-scale teacher run, never at toy configs or checkpoints
    assert "trainer.default_root_dir=runs/wan/teacher" in err[0] and "toy" not in err[0]
    # an export folder without its safetensors: refused with one line naming the folder
    folder = tmp_path / "teacher"
    (folder / "transformer").mkdir(parents=True)
    (folder / "ardrag_pipeline.json").write_text(json.dumps({"mode": "bidirectional"}))
    assert fit.main(["--config", "configs/sft.yaml", f"--model.init_args.teacher={folder}"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "teacher weights missing" in err[0] and str(folder) in err[0]


def test_full_scale_models_build_on_meta():
    """The three full-scale models of configs/sft.yaml (student, critic, teacher; the EMA is a fourth copy) from
    the wan2.1-1.3b preset with the condition channels of the Wan VAE (2 x 16 + 1), without memory."""
    pipeline = json.loads(Path("configs/pipeline/wan2.1-1.3b.json").read_text())
    assert pipeline["codec"]["type"] == "wan_vae"
    with torch.device("meta"):
        models = [CausalWanTransformer(**preset_config("wan2.1-1.3b", cond_in_channels=33)) for _ in range(3)]
    counts = {sum(p.numel() for p in m.parameters()) for m in models}
    assert counts == {1_419_199_552}
    budget = json.loads(Path("results/training/sft_memory.json").read_text())
    assert budget["parameters"] == 1_419_199_552


ROOT = Path(__file__).resolve().parents[1]
TOY_TEACHER = ROOT / "results/toy/checkpoints/teacher"


@pytest.mark.skipif(
    not (TOY_TEACHER / "ardrag_pipeline.json").exists(), reason="needs the committed toy teacher"
)
def test_distilled_student_samples_are_closer_to_the_teachers(tmp_path):
    """A pixel-statistics Frechet distance between the student's 3-step AR samples and the teacher's 20-step
    bidirectional samples (16 held-out conditions, other noise): the committed SFT student (configs/toy/sft.yaml,
    180 steps) is closer to the teacher than the initial student (the teacher's weights run causally with 3 steps).
    Measured on an Intel Xeon: 0.157 -> 0.112 against a teacher-vs-teacher floor of 0.027, the gap down 34%; the
    assertion asks for 20%. (40 DMD steps of the same config, tried here, moved it to 0.211 first.) Needs a gap to
    start with (else skipped, saying so); the DMD direction itself is tested without a trained teacher in
    test_dmd.py."""

    from ardrag.sampling import randn
    from ardrag.training.dmd import DMDConfig
    from ardrag.training.sft import OptimConfig, SFTModule, StudentConfig
    from benchmark.metrics.frechet import frechet_distance_from_features
    from datamodules import ARDragDataModule

    write_toy_world(
        tmp_path,
        num_train=8,
        num_val=16,
        num_test=2,
        frames=9,
        samples_per_shard=4,
        min_shards=2,
        progress=False,
    )
    torch.manual_seed(0)
    args = yaml.safe_load((ROOT / "configs/toy/sft.yaml").read_text())["model"]["init_args"]
    module = SFTModule(  # the toy config's DMD and student settings, a generator step every step, no EMA
        str(TOY_TEACHER),
        student=StudentConfig(**args["student"]),
        dmd=DMDConfig(**args["dmd"]),
        optim=OptimConfig(**{**args["optim"], "generator_every": 1, "ema_decay": 0.0}),
    )
    kw = dict(test_shards=None, num_workers=0, num_frames=5, max_tracks=3, seed=0)
    val = ARDragDataModule(
        train_shards=str(tmp_path / "val"), val_shards=str(tmp_path / "val"), batch_size=16, **kw
    )
    val.setup("fit")
    x0, conds = module.conditions(next(iter(val.val_dataloader())))

    def features(latents):  # frames average-pooled to 8x8 RGB: (N frames, 192)
        v = module.codec.decode(latents).clamp(-1, 1)
        b, c, t, h, w = v.shape
        return (
            torch.nn.functional.avg_pool2d(v.transpose(1, 2).reshape(b * t, c, h, w), h // 8)
            .flatten(1)
            .numpy()
        )

    def noise(seed):
        return randn(x0.shape, torch.Generator().manual_seed(seed), "cpu")

    teacher = features(module.sample(conds, noise(1), "teacher"))
    floor = frechet_distance_from_features(features(module.sample(conds, noise(2), "teacher")), teacher)
    before = frechet_distance_from_features(features(module.sample(conds, noise(2), "student")), teacher)
    if (
        before < 1.1 * floor
    ):  # measured: a 500-step toy teacher samples noise, FD 4.27 vs 4.51 between its own draws
        pytest.skip(
            f"the teacher's samples are indistinguishable from the initial student's ({before:.2f} vs "
            f"teacher-vs-teacher {floor:.2f}): a teacher that generates structure is needed for this check"
        )
    # the committed student: the same config trained for 180 steps (its RECIPE.md)
    committed = ARDragPipeline.from_pretrained(ROOT / "results/toy/checkpoints/sft").transformer.float()
    module.student.load_state_dict(committed.state_dict())
    after = frechet_distance_from_features(features(module.sample(conds, noise(2), "student")), teacher)
    print(f"pixel FD(student, teacher): {before:.3f} -> {after:.3f}; teacher vs teacher {floor:.3f}")
    assert after - floor < 0.8 * (before - floor)
