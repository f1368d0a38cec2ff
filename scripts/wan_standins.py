"""Stand-in Wan2.1 folders with the real layout at a size a CPU trains in seconds, plus the overlays that point the
full-scale stage configs (configs/{teacher,sft,rl}.yaml) at them.

    .venv/bin/python scripts/wan_standins.py OUT [--height 32 --width 32 --frames 9 --shards DATA]

OUT/vae: diffusers `AutoencoderKLWan` with Wan2.1's 16 latent channels, 8x spatial and 4x temporal compression
(base width 8 instead of 96, one res block per level); OUT/text_encoder: a one-layer `UMT5EncoderModel` of Wan's
width (d_model 4096) with a word-level tokenizer; OUT/transformer: diffusers `WanTransformer3DModel` of the `tiny`
preset (Wan's patch size 1x2x2, 16 channels in and out, text width 4096, 2 layers of 2 heads x 16). OUT/pipeline.json
is configs/pipeline/wan2.1-1.3b.json with these paths and the small size. OUT/overlay_{teacher,sft,rl}.yaml set
the CPU trainer (32-true, batch 1, no loader workers), the data (`--shards`: a folder with train/ and val/
ardrag-prepare or toy-world shards) and the weights; the SFT overlay reads OUT/runs/teacher/export, the RL overlay
OUT/runs/sft/export (write them with the previous stage, or with `ardrag-export --base` for a quick start).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ["<pad>", "</s>", "<unk>"] + (
    "a the red green blue yellow white black square disc circle sprite moves left right up down to and of in on "
    "blurry static bunny bike rides camera background"
).split()


def write_standins(out: str | Path, height: int = 32, width: int = 32, seed: int = 0) -> Path:
    """Write OUT/{vae,text_encoder,transformer} and OUT/pipeline.json (see the module docstring)."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from ardrag.models import preset_config

    out = Path(out)
    torch.manual_seed(seed)
    AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16,
        latents_std=[1.0] * 16,
    ).save_pretrained(out / "vae")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(out / "text_encoder")
    cfg = UMT5Config(vocab_size=len(VOCAB), d_model=4096, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    UMT5EncoderModel(cfg).save_pretrained(out / "text_encoder")
    base = WanTransformer3DModel(**preset_config("tiny", in_channels=16, out_channels=16, text_dim=4096))
    with torch.no_grad():  # diffusers zero-initialises some layers; a trained base has none
        for p in base.parameters():
            p.normal_(0, 0.05)
    base.save_pretrained(out / "transformer")
    pipe = json.loads((ROOT / "configs/pipeline/wan2.1-1.3b.json").read_text())
    pipe.update(height=height, width=width)
    pipe["codec"]["path"] = str(out / "vae")
    pipe["text_encoder"].update(path=str(out / "text_encoder"), max_length=8)
    (out / "pipeline.json").write_text(json.dumps(pipe, indent=2) + "\n")
    return out


def write_overlays(
    out: str | Path, shards: str | Path, frames: int = 9, height: int = 32, width: int = 32
) -> None:
    """OUT/overlay_{teacher,sft,rl}.yaml: the full-scale stage configs on the stand-ins and `shards`, 2 steps."""
    import yaml

    out, shards = Path(out), Path(shards)
    data = {
        "init_args": {
            "train_shards": str(shards / "train"),
            "val_shards": str(shards / "val"),
            "batch_size": 1,
            "num_workers": 0,
            "num_frames": frames,
            "height": height,
            "width": width,
            "pin_memory": False,
        }
    }
    trainer = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "max_steps": 2,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    stages = {
        "teacher": {
            "pipeline_config": str(out / "pipeline.json"),
            "base": str(out / "transformer"),
            "sampling": {"num_steps": 2},
        },
        "sft": {"teacher": str(out / "runs" / "teacher" / "export")},
        "rl": {"init": str(out / "runs" / "sft" / "export"), "grpo": {"group_size": 2}},
    }
    for stage, args in stages.items():
        init = dict(args)
        if stage == "teacher":
            init = {
                "model": {"pipeline_config": init.pop("pipeline_config"), "base": init.pop("base")},
                **init,
            }
        overlay = {
            "trainer": {**trainer, "default_root_dir": str(out / "runs" / stage)},
            "model": {"init_args": init},
            "data": data,
        }
        (out / f"overlay_{stage}.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--frames", type=int, default=9, help="clip length (1 + 4k for the Wan VAE)")
    p.add_argument("--shards", default="data/prepared", help="folder with train/ and val/ shards")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    write_standins(a.out, a.height, a.width, a.seed)
    write_overlays(a.out, a.shards, a.frames, a.height, a.width)
    print(f"stand-in Wan folders and overlays in {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
