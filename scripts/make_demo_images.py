"""Write the toy-world first frames that `ardrag-demo` offers as bundled images (small PNGs in the package).

    python scripts/make_demo_images.py            # -> src/ardrag/demo/static/images/toy-*.png

The frames are the first frames of toy-world test clips (datamodules.toy_world, seed 0), the kind of image the
committed toy checkpoints were trained on; `ardrag` itself does not import `datamodules`, hence the files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from ardrag.video import atomic_write_bytes
from datamodules.toy_world import ToyWorldConfig, clip_seed, render_clip

OUT = Path(__file__).resolve().parent.parent / "src" / "ardrag" / "demo" / "static" / "images"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", type=int, nargs="+", default=[0, 1, 2], help="toy-world test clip indices")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    for i in args.clips:
        frame = render_clip(clip_seed(args.seed, "test", i), ToyWorldConfig()).video[0]
        ok, buf = cv2.imencode(
            ".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]
        )
        assert ok
        path = args.out / f"toy-{i}.png"
        atomic_write_bytes(path, buf.tobytes())
        print(f"wrote {path} ({len(buf)} bytes)")


if __name__ == "__main__":
    main()
