"""Data: WebDataset shards of clips with point tracks, the toy world, real-video preparation, the datamodule."""

from __future__ import annotations

__all__ = ["ARDragDataModule", "SkipStats", "iter_samples", "write_toy_world"]


def __getattr__(name: str):
    # Lazy, so `import datamodules.shards` (used by the benchmark) does not pay for Lightning.
    if name == "ARDragDataModule":
        from datamodules.datamodule import ARDragDataModule

        return ARDragDataModule
    if name in ("SkipStats", "iter_samples"):
        from datamodules import shards

        return getattr(shards, name)
    if name == "write_toy_world":
        from datamodules.toy_world import write_toy_world

        return write_toy_world
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
