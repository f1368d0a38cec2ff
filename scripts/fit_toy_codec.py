"""Fit the toy pipeline's PCA codec on toy-world training clips and write it into a pipeline JSON.

    python scripts/fit_toy_codec.py [--config configs/pipeline/toy.json] [--clips 64] [--channels 12] [--seed 0]

The clips are rendered from their seeds (no data folder needed), so the fit is a pure function of the arguments.
Prints the reconstruction PSNR on held-out validation clips. See `ardrag.codecs.PcaCodec` for why the toy uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ardrag.codecs import fit_pca_codec  # noqa: E402
from datamodules.toy_world import clip_seed, render_clip  # noqa: E402


def frames(split: str, n: int, seed: int) -> torch.Tensor:
    video = np.concatenate([render_clip(clip_seed(seed, split, i)).video for i in range(n)])  # (N T, H, W, 3)
    return torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1


def dump(cfg: dict) -> str:
    """The pipeline JSON as the repo keeps it: one key per line, the codec's basis one component per line."""
    lines = []
    for key, value in cfg.items():
        if key == "codec" and "basis" in value:
            head = {k: v for k, v in value.items() if k != "basis"}
            rows = ",\n".join("      " + json.dumps(r) for r in value["basis"])
            lines.append(f'  "codec": {json.dumps(head)[:-1]}, "basis": [\n{rows}\n  ]}}')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", default=str(ROOT / "configs/pipeline/toy.json"), help="pipeline JSON to update"
    )
    ap.add_argument("--clips", type=int, default=64, help="training clips the fit sees")
    ap.add_argument("--channels", type=int, default=12, help="principal components kept (latent channels)")
    ap.add_argument("--factor", type=int, default=4, help="space-to-depth factor (latent stride)")
    ap.add_argument("--seed", type=int, default=0, help="toy-world seed of the clips")
    args = ap.parse_args(argv)
    codec = fit_pca_codec(frames("train", args.clips, args.seed), args.factor, args.channels)
    val = frames("val", 16, args.seed)[:, :, None]  # (N, 3, 1, H, W): one-frame videos
    rec = codec.decode(codec.encode(val)).clamp(-1, 1)
    psnr = float(10 * torch.log10(4 / ((rec - val) ** 2).mean()))
    path = Path(args.config)
    cfg = json.loads(path.read_text())
    cfg["codec"] = codec.describe()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(dump(cfg))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    print(f"wrote a {args.channels}-channel pca codec into {path}; validation PSNR {psnr:.2f} dB")


if __name__ == "__main__":
    main()
