"""ardrag: real-time, trajectory-controlled, frame-wise autoregressive video diffusion (AR-Drag)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ARDragPipeline", "__version__"]


def __getattr__(name: str):
    # Lazy: `import ardrag.tracking` must not pay for diffusers/transformers imports.
    if name == "ARDragPipeline":
        from ardrag.pipeline import ARDragPipeline

        return ARDragPipeline
    raise AttributeError(f"module 'ardrag' has no attribute {name!r}")
