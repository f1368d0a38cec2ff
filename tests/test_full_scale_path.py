"""The full-scale code path (Wan VAE codec, UMT5 text encoder, diffusers Wan transformer) on tiny configs of the
same classes, saved to local folders as real checkpoints are: nothing here is toy-only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from ardrag import ARDragPipeline
from ardrag.cli.export import main as export_main
from ardrag.models import preset_config
from ardrag.pipeline import PipelineConfig
from ardrag.text import UMT5TextEncoder

VOCAB = ["<pad>", "</s>", "<unk>", "a", "red", "square", "blue", "disc", "blurry"]


@pytest.fixture(scope="module")
def wan_folders(tmp_path_factory):
    """Tiny stand-ins for Wan2.1-T2V-1.3B-Diffusers' transformer/, vae/ and text_encoder/ folders."""
    root = tmp_path_factory.mktemp("wan")
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    vae.save_pretrained(root / "vae")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(root / "text_encoder")
    cfg = UMT5Config(vocab_size=len(VOCAB), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    UMT5EncoderModel(cfg).save_pretrained(root / "text_encoder")
    base = WanTransformer3DModel(**preset_config("tiny", in_channels=4, out_channels=4, text_dim=16))
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, 0.1)
    base.save_pretrained(root / "transformer")
    return root


def test_umt5_encoder_zeroes_padding_and_the_empty_prompt(wan_folders):
    enc = UMT5TextEncoder(wan_folders / "text_encoder", max_length=6, torch_dtype=torch.float32)
    e = enc.encode(["a red square", ""])
    assert e.shape == (2, 6, 16)
    assert (e[0, :3].abs().sum(-1) > 0).all() and e[0, 3:].abs().sum() == 0 and e[1].abs().sum() == 0


def test_umt5_missing_folder_says_what_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        UMT5TextEncoder(tmp_path / "none")


@pytest.fixture(scope="module")
def full_pipe(wan_folders, tmp_path_factory):
    cfg = {
        "height": 32,
        "width": 32,
        "guidance_scale": 2.0,
        "negative_prompt": "blurry",
        "codec": {"type": "wan_vae", "path": str(wan_folders / "vae")},
        "text_encoder": {"type": "umt5", "path": str(wan_folders / "text_encoder"), "max_length": 6},
    }
    cfg_path = tmp_path_factory.mktemp("cfg") / "p.json"
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path_factory.mktemp("export") / "init"
    assert (
        export_main(
            [
                "--pipeline-config",
                str(cfg_path),
                "--base",
                str(wan_folders / "transformer"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return ARDragPipeline.from_pretrained(out)


def test_wan_vae_pipeline_streams_latent_frames_of_four_and_matches_call(full_pipe):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tracks = np.linspace([4, 4], [28, 20], 7, dtype=np.float32)[:, None]  # 7 frames: padded to 9 = 1 + 4 * 2
    video = full_pipe(image, tracks, prompt="a red square", seed=0)
    assert video.shape == (7, 32, 32, 3)
    streamed = np.stack(list(full_pipe.stream(image, tracks, prompt="a red square", seed=0)))
    assert np.abs(streamed.astype(int) - video).max() <= 1  # streaming causal decode == full decode
    ref = full_pipe(image, tracks, prompt="a red square", seed=0, use_kv_cache=False)
    assert np.abs(ref.astype(int) - video).max() <= 1
    assert full_pipe.transformer.config.cond_in_channels == 9  # 2 * 4 latent channels + mask


def test_initial_model_from_base_equals_base_transformer(full_pipe, wan_folders):
    base = WanTransformer3DModel.from_pretrained(wan_folders / "transformer").eval()
    x, ctx, t = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 6, 16), torch.tensor([800.0])
    cond = torch.randn(1, 9, 3, 8, 8)
    with torch.no_grad():
        diff = (full_pipe.transformer(x, t, ctx, cond=cond) - base(x, t, ctx).sample).abs().max().item()
    assert diff <= 1e-5  # zero-initialised condition channels: the loaded base model is unchanged


def test_full_scale_config_file_is_valid():
    cfg = PipelineConfig.from_dict(json.loads(open("configs/pipeline/wan2.1-1.3b.json").read()))
    assert cfg.codec["type"] == "wan_vae" and cfg.text_encoder["type"] == "umt5"
    assert cfg.timesteps == [1000.0, 755.0, 522.0] and cfg.cache_frames == 7 and cfg.chunk_size == 1
