"""Decoder language models, their KV cache and configs."""

from dera_jax.models.config import TransformerConfig, config_100m, tiny_config
from dera_jax.models.kv_cache import KVCache
from dera_jax.models.transformer import Transformer, positions_from_mask

__all__ = ["TransformerConfig", "Transformer", "KVCache", "positions_from_mask", "tiny_config",
           "config_100m"]
