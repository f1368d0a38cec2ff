"""Named backbone sizes. Full scale is Wan2.1 1.3B; the tiny ones run the same classes on a CPU."""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Wan2.1-T2V-1.3B transformer (diffusers config): 30 layers, 12 heads x 128, ffn 8960, UMT5 text (4096).
    "wan2.1-1.3b": {
        "num_attention_heads": 12,
        "attention_head_dim": 128,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 4096,
        "freq_dim": 256,
        "ffn_dim": 8960,
        "num_layers": 30,
    },
    # ~1.2M parameters: learns to move toy-world sprites on a CPU in minutes (pixel codec, factor 4: 48 ch).
    "toy": {
        "num_attention_heads": 4,
        "attention_head_dim": 32,
        "in_channels": 48,
        "out_channels": 48,
        "text_dim": 64,
        "freq_dim": 64,
        "ffn_dim": 384,
        "num_layers": 4,
    },
    # For unit tests: a handful of milliseconds per forward.
    "tiny": {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 12,
        "out_channels": 12,
        "text_dim": 16,
        "freq_dim": 16,
        "ffn_dim": 64,
        "num_layers": 2,
    },
}


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Config kwargs of a named preset with overrides (e.g. in_channels from the codec, cond_in_channels)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = {**_COMMON, **PRESETS[name]}
    unknown = (
        set(overrides)
        - set(cfg)
        - {
            "cond_in_channels",
            "image_dim",
            "added_kv_proj_dim",
            "pos_embed_seq_len",
            "prediction_type",
            "sample_sigma_min",
            "sample_base",
            "attention_backend",
        }
    )
    if unknown:
        raise ValueError(f"unknown model config keys {sorted(unknown)}")
    cfg.update(overrides)
    return cfg
