"""Animated GIF grid of a few toy test cases: one row per method, target trajectories drawn over every video.

    python scripts/sample_strip.py --suite data/toyworld/test --items 4 --seed 0 \
        --method "Ground truth=groundtruth" --method "AR-Drag=pipeline:results/toy/checkpoints/rl" \
        --out results/toy/samples.gif

Rings mark where each dragged point should be at that frame, lines the path so far; a method follows the drag
when its sprite stays under the rings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from ardrag.video import atomic_write_bytes, draw_tracks, encode_gif
from benchmark.methods import build_method
from benchmark.suites import Suite, SuiteConfig


def label_column(text: str, height: int, width: int) -> np.ndarray:
    """A (height, width, 3) dark tile with `text` written in it (row labels)."""
    tile = np.full((height, width, 3), 24, np.uint8)
    words, lines, cur = text.split(), [], ""
    for w in words:  # wrap to the tile width
        cand = f"{cur} {w}".strip()
        if cv2.getTextSize(cand, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] > width - 8 and cur:
            lines.append(cur)
            cur = w
        else:
            cur = cand
    lines.append(cur)
    for i, line in enumerate(lines):
        y = 16 + 14 * i
        cv2.putText(tile, line, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
    return tile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", action="append", required=True, help="NAME=SPEC (benchmark method spec)")
    p.add_argument("--suite", default="data/toyworld/test", help="shard folder of the suite")
    p.add_argument("--items", type=int, default=4, help="test cases (columns)")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--max-tracks", "--max_tracks", type=int, default=4, dest="max_tracks")
    p.add_argument("--seed", type=int, default=0, help="generation seed (same for every method)")
    p.add_argument("--scale", type=int, default=3, help="upscale factor of each tile")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--out", default="runs/samples.gif")
    a = p.parse_args(argv)
    suite = Suite(
        SuiteConfig(
            name="strip",
            path=a.suite,
            max_items=a.items,
            max_tracks=a.max_tracks,
            num_frames=a.frames,
            seed=0,
        )
    )
    items = suite.items()
    if not items:
        raise SystemExit(f"no usable items in {a.suite}")
    rows = []
    for spec_arg in a.method:
        if "=" not in spec_arg:
            p.error(f"--method needs NAME=SPEC, got {spec_arg!r}")
        name, spec = spec_arg.split("=", 1)
        method = build_method(spec)
        tiles = [
            draw_tracks(np.asarray(method.generate(it, a.seed)), it["tracks"], it["visible"], a.scale)
            for it in items
        ]
        h = tiles[0].shape[1]
        label = np.repeat(label_column(name, h, 110)[None], a.frames, axis=0)
        gap = np.full((a.frames, h, 4, 3), 255, np.uint8)
        row = [label]
        for tile in tiles:
            row += [gap, tile]
        rows.append(np.concatenate(row, axis=2))
        print(f"{name}: {len(items)} items", file=sys.stderr)
    hgap = np.full((a.frames, 4, rows[0].shape[2], 3), 255, np.uint8)
    grid = np.concatenate([x for r in rows for x in (r, hgap)][:-1], axis=1)
    atomic_write_bytes(Path(a.out), encode_gif(grid, a.fps))
    print(f"wrote {a.out} ({grid.shape[2]}x{grid.shape[1]}, {len(grid)} frames)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
