"""Backbone, attention layouts and size presets."""

from ardrag.models.attention import CausalConfig, KVCache, causal_frame_mask, teacher_forcing_frame_mask
from ardrag.models.causal_wan import CausalWanTransformer, count_parameters
from ardrag.models.presets import PRESETS, preset_config

__all__ = [
    "PRESETS",
    "CausalConfig",
    "CausalWanTransformer",
    "KVCache",
    "causal_frame_mask",
    "count_parameters",
    "preset_config",
    "teacher_forcing_frame_mask",
]
