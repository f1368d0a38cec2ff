"""The full-scale stage configs (configs/teacher.yaml, sft.yaml, rl.yaml) through ardrag-fit on stand-in Wan2.1
folders (scripts/wan_standins.py: the diffusers Wan VAE with 16 latent channels, a UMT5 of Wan's width, the Wan
transformer's patch size at the tiny preset's depth and width) to their exports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ardrag import ARDragPipeline
from ardrag.cli.export import main as export_main
from ardrag.cli.fit import main as fit_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fit import small_toy  # noqa: E402


def load_standins_script():
    spec = importlib.util.spec_from_file_location("wan_standins", ROOT / "scripts" / "wan_standins.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """Stand-in folders and overlays; the data are a 32 x 32, 9-frame toy world (the shard format ardrag-prepare
    writes)."""
    root = tmp_path_factory.mktemp("wanfit")
    data = small_toy(root / "data", seed=3, num_train=4)
    mod = load_standins_script()
    mod.write_standins(root)
    mod.write_overlays(root, data)
    return root


def _video(pipe: ARDragPipeline) -> np.ndarray:
    tracks = np.linspace([4, 4], [28, 20], 9, dtype=np.float32)[:, None]
    return pipe(np.full((32, 32, 3), 90, np.uint8), tracks, prompt="a red square moves right", seed=0)


def test_full_scale_teacher_exports_at_end_of_fit_and_from_last_ckpt(wan, tmp_path):
    args = ["--config", str(ROOT / "configs/teacher.yaml"), "--config", str(wan / "overlay_teacher.yaml")]
    assert fit_main([*args, f"--trainer.default_root_dir={tmp_path / 'run'}"]) == 0
    end = ARDragPipeline.from_pretrained(tmp_path / "run" / "export")
    # the Wan2.1 base was given zero-initialised condition channels: 2 x 16 latent channels + the mask
    assert end.transformer.config.cond_in_channels == 33
    assert end.transformer.cond_embedding.weight.abs().sum() > 0  # trained for 2 steps (EMA of the weights)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert export_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "from_ckpt")]) == 0
    again = ARDragPipeline.from_pretrained(tmp_path / "from_ckpt")
    assert again.config == end.config
    a, b = end.transformer.state_dict(), again.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    video = _video(end)
    assert video.shape == (9, 32, 32, 3) and video.std() > 0
    assert np.array_equal(video, _video(again))


def test_full_scale_sft_and_rl_configs_run_to_their_exports(wan, tmp_path):
    """configs/sft.yaml from an `ardrag-export --base` initial model (as a teacher), then configs/rl.yaml from the
    SFT export: 2 steps each, exported as autoregressive pipelines that generate."""
    teacher = tmp_path / "teacher"
    base = ["--pipeline-config", str(wan / "pipeline.json"), "--base", str(wan / "transformer")]
    assert export_main([*base, "--mode", "bidirectional", "--out", str(teacher)]) == 0
    sft = ["--config", str(ROOT / "configs/sft.yaml"), "--config", str(wan / "overlay_sft.yaml")]
    assert (
        fit_main(
            [*sft, f"--trainer.default_root_dir={tmp_path / 'sft'}", f"--model.init_args.teacher={teacher}"]
        )
        == 0
    )
    rl = ["--config", str(ROOT / "configs/rl.yaml"), "--config", str(wan / "overlay_rl.yaml")]
    init = f"--model.init_args.init={tmp_path / 'sft' / 'export'}"
    assert fit_main([*rl, f"--trainer.default_root_dir={tmp_path / 'rl'}", init]) == 0
    for stage in ("sft", "rl"):
        pipe = ARDragPipeline.from_pretrained(tmp_path / stage / "export")
        assert pipe.config.mode == "autoregressive" and pipe.config.timesteps == [1000.0, 755.0, 522.0]
        video = _video(pipe)
        assert video.shape == (9, 32, 32, 3) and video.std() > 0
