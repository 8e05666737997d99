"""`TransformerConfig`: the static description of a decoder-only language model.

One frozen dataclass covers the Llama, Mistral, Qwen2 and Gemma (v1) families through a few
switches; the defaults are Llama's. The config is hashable, so it can be a static argument of
`jax.jit` and the key of a compilation cache.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
  """Shape and family switches of a decoder LM.

  Attributes:
    vocab_size: V, rows of the embedding table and columns of the logits.
    d_model: D, width of the residual stream.
    num_layers: L.
    num_heads: H, query heads.
    num_kv_heads: key/value heads (== H: multi-head; 1: multi-query; else grouped-query).
    head_dim: width of one head (need not equal D / H, as in Gemma).
    mlp_dim: F, hidden width of the gated MLP.
    max_seq_len: the longest prompt + continuation the model is meant for (RoPE has no table,
      so this only bounds caches and validates inputs).
    rope_theta: RoPE base frequency.
    norm_eps: epsilon of RMSNorm.
    norm_add_one: Gemma's RMSNorm, which scales by (1 + w) instead of w.
    activation: gate activation of the MLP: "silu" (SwiGLU), "gelu_tanh" (GeGLU, Gemma) or
      "gelu" (exact erf GeLU).
    tie_embeddings: the output projection is the transposed input embedding.
    qkv_bias: biases on the q, k and v projections (Qwen2).
    scale_embeddings: multiply embeddings by sqrt(D) (Gemma).
    sliding_window: attend only to the last `sliding_window` positions (Mistral); None: no limit.
    query_scale: multiplier of q·k; None means head_dim ** -0.5.
    dtype: compute dtype of activations and the KV cache.
    param_dtype: storage dtype of the parameters.
    init_std: standard deviation of the normal initialiser (HF's `initializer_range`).
  """

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_seq_len: int = 2048
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  norm_add_one: bool = False
  activation: Literal["silu", "gelu_tanh", "gelu"] = "silu"
  tie_embeddings: bool = False
  qkv_bias: bool = False
  scale_embeddings: bool = False
  sliding_window: int | None = None
  query_scale: float | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: float = 0.02

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_dim", "max_seq_len"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"TransformerConfig.{name}={value!r}: must be a positive integer")
      object.__setattr__(self, name, int(value))  # NumPy ints become plain ints (hashable)
    for name in ("norm_add_one", "tie_embeddings", "qkv_bias", "scale_embeddings"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"TransformerConfig.{name}={getattr(self, name)!r}: must be True or "
                         "False")
    for name in ("rope_theta", "norm_eps", "init_std", "query_scale"):
      value = getattr(self, name)
      if name == "query_scale" and value is None:
        continue
      if (isinstance(value, bool) or not isinstance(value, numbers.Real)
          or not math.isfinite(value) or value <= 0):
        allowed = "None or " if name == "query_scale" else ""
        raise ValueError(f"TransformerConfig.{name}={value!r}: must be {allowed}a finite "
                         "number > 0")
      object.__setattr__(self, name, float(value))
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"TransformerConfig.num_kv_heads={self.num_kv_heads}: must divide "
          f"num_heads={self.num_heads} (1 for multi-query, num_heads for multi-head)")
    if self.head_dim % 2:
      raise ValueError(f"TransformerConfig.head_dim={self.head_dim}: must be even for RoPE")
    if self.activation not in ACTIVATIONS:
      raise ValueError(
          f"TransformerConfig.activation={self.activation!r}: must be one of {ACTIVATIONS}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(
            f"TransformerConfig.{name}={getattr(self, name)!r}: must be one of {DTYPES}")
    if self.sliding_window is not None and (
        isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int)
        or self.sliding_window < 1):
      raise ValueError(
          f"TransformerConfig.sliding_window={self.sliding_window!r}: must be None or a "
          "positive integer")

  @property
  def attention_scale(self) -> float:
    return self.head_dim ** -0.5 if self.query_scale is None else self.query_scale

  @property
  def num_params(self) -> int:
    """Parameter count (embeddings counted once when tied)."""
    d, f, hd = self.d_model, self.mlp_dim, self.head_dim
    attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.qkv_bias:
      attn += hd * (self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else d * self.vocab_size
    return self.vocab_size * d + self.num_layers * per_layer + d + head


def tiny_config(vocab_size: int = 256, **overrides) -> TransformerConfig:
  """A 2-layer GQA Llama-style config for tests and demos (~0.1M params + embeddings)."""
  fields = dict(vocab_size=vocab_size, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=16, mlp_dim=128, max_seq_len=512)
  fields.update(overrides)
  return TransformerConfig(**fields)


def config_100m(vocab_size: int = 32_000, **overrides) -> TransformerConfig:
  """A ~100M-parameter Llama-style config (12 layers, D=768, tied 32k-token embeddings)."""
  fields = dict(vocab_size=vocab_size, d_model=768, num_layers=12, num_heads=12, num_kv_heads=4,
                head_dim=64, mlp_dim=2048, max_seq_len=2048, tie_embeddings=True)
  fields.update(overrides)
  return TransformerConfig(**fields)
