"""`Transformer`: an NNX decoder-only LM with stacked layers and an explicit KV cache.

Parameters of the L layers are stored stacked along a leading "layers" axis and the forward
pass is one `lax.scan` over them, so compile time does not grow with depth. For decoding,
`for_decoding()` gives the same model with one module per layer, run by a Python loop: each
layer's weights are then a separate buffer (see `for_decoding` for why). Every parameter
carries logical axis names (vocab, embed, heads, kv_heads, head_dim, mlp, layers) as metadata;
`dera_jax.parallel` maps them to a device mesh.

One call serves training, prefill and decode:

    logits, cache = model(tokens[B, T], positions[B, T], mask[B, T], cache)

`mask` is True for real tokens and False for (left) padding. With `cache=None` the chunk
attends only to itself (training, scoring); with a cache the chunk is written at `cache.index`
and attends to everything the cache holds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dera_jax.models import layers
from dera_jax.models.config import TransformerConfig
from dera_jax.models.kv_cache import KVCache


def param_specs(config: TransformerConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...],
                                                                 str]]:
  """name -> (shape, logical axes, initialiser) of every parameter (names as in weights.py)."""
  c = config
  norm = "zeros" if c.norm_add_one else "ones"  # Gemma stores w of (1 + w)
  layer = {
      "attn_norm": ((c.d_model,), ("embed",), norm),
      "q": ((c.d_model, c.num_heads, c.head_dim), ("embed", "heads", "head_dim"), "normal"),
      "k": ((c.d_model, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"),
            "normal"),
      "v": ((c.d_model, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"),
            "normal"),
      "o": ((c.num_heads, c.head_dim, c.d_model), ("heads", "head_dim", "embed"), "normal"),
      "mlp_norm": ((c.d_model,), ("embed",), norm),
      "gate": ((c.d_model, c.mlp_dim), ("embed", "mlp"), "normal"),
      "up": ((c.d_model, c.mlp_dim), ("embed", "mlp"), "normal"),
      "down": ((c.mlp_dim, c.d_model), ("mlp", "embed"), "normal"),
  }
  if c.qkv_bias:
    layer["q_bias"] = ((c.num_heads, c.head_dim), ("heads", "head_dim"), "zeros")
    layer["k_bias"] = ((c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), "zeros")
    layer["v_bias"] = ((c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), "zeros")
  specs = {"embed": ((c.vocab_size, c.d_model), ("vocab", "embed"), "normal"),
           "final_norm": ((c.d_model,), ("embed",), norm)}
  if not c.tie_embeddings:
    specs["lm_head"] = ((c.d_model, c.vocab_size), ("embed", "vocab"), "normal")
  for name, (shape, axes, init) in layer.items():
    specs[f"layers.{name}"] = ((c.num_layers, *shape), ("layers", *axes), init)
  return specs


@functools.partial(jax.jit, static_argnums=0)
def _initial_values(config: TransformerConfig, key: jax.Array) -> dict[str, jax.Array]:
  """All initial parameter values in one compiled program (one compile per config)."""
  specs = param_specs(config)
  keys = jax.random.split(key, len(specs))
  out = {}
  for k, (name, (shape, _, init)) in zip(keys, specs.items()):
    if init == "normal":
      value = config.init_std * jax.random.normal(k, shape, jnp.float32)
    else:
      value = (jnp.zeros if init == "zeros" else jnp.ones)(shape, jnp.float32)
    out[name] = value.astype(config.param_dtype)
  return out


def _param(values: dict, specs: dict, name: str) -> nnx.Param:
  return nnx.Param(values[name], out_sharding=specs[name][1], eager_sharding=False)


_LAYER_NAMES = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")
_BIAS_NAMES = ("q_bias", "k_bias", "v_bias")


def _layer_arrays(module: nnx.Module, dtype) -> dict[str, jax.Array]:
  """A layer module's weights as arrays in the compute dtype (norm weights stay in storage
  precision: rms_norm upcasts them itself)."""
  names = _LAYER_NAMES + (_BIAS_NAMES if hasattr(module, "q_bias") else ())
  out = {}
  for name in names:
    value = getattr(module, name)[...]
    out[name] = value if name.endswith("norm") else value.astype(dtype)
  return out


class DecoderLayers(nnx.Module):
  """The weights of all L decoder layers, stacked on a leading axis: each [L, ...]."""

  def __init__(self, config: TransformerConfig, values: dict[str, jax.Array]):
    specs = param_specs(config)
    for name in specs:
      if name.startswith("layers."):
        setattr(self, name[len("layers."):], _param(values, specs, name))

  def arrays(self, dtype) -> dict[str, jax.Array]:
    """The stacked weights as a dict of [L, ...] arrays in the compute dtype."""
    return _layer_arrays(self, dtype)


class DecoderLayer(nnx.Module):
  """The weights of one decoder layer: `DecoderLayers`' attributes without the L axis."""

  def __init__(self, config: TransformerConfig, values: dict[str, jax.Array]):
    """values: "layers.<name>" -> this layer's array."""
    specs = {name: (shape[1:], axes[1:], init)
             for name, (shape, axes, init) in param_specs(config).items()
             if name.startswith("layers.")}
    for name in specs:
      setattr(self, name[len("layers."):], _param(values, specs, name))

  def arrays(self, dtype) -> dict[str, jax.Array]:
    """This layer's weights as a dict of arrays in the compute dtype."""
    return _layer_arrays(self, dtype)


@jax.jit
def _unstack(stacked: dict[str, jax.Array]) -> list[dict[str, jax.Array]]:
  """{name: [L, ...]} -> L dicts {name: [...]}, new buffers, in one compiled program."""
  num_layers = len(next(iter(stacked.values())))
  return [{name: x[i] for name, x in stacked.items()} for i in range(num_layers)]


class Transformer(nnx.Module):
  """Decoder-only LM (Llama/Mistral/Qwen2/Gemma semantics, chosen by `TransformerConfig`)."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    specs = param_specs(config)
    values = _initial_values(config, rngs.params())
    self.embed = _param(values, specs, "embed")
    self.layers = DecoderLayers(config, values)
    self.final_norm = _param(values, specs, "final_norm")
    if not config.tie_embeddings:
      self.lm_head = _param(values, specs, "lm_head")

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size

  def init_cache(self, batch_size: int, max_len: int) -> KVCache:
    """An empty cache of `max_len` slots for `batch_size` rows, in the compute dtype."""
    if max_len > self.config.max_seq_len:
      raise ValueError(f"init_cache: max_len={max_len} exceeds the model's "
                       f"max_seq_len={self.config.max_seq_len}")
    c = self.config
    return KVCache.init(num_layers=c.num_layers, batch_size=batch_size, max_len=max_len,
                        num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, dtype=c.dtype,
                        per_layer=not self.stacked)

  @property
  def stacked(self) -> bool:
    """True for the stacked layout (one scan over layers), False after `for_decoding()`."""
    return isinstance(self.layers, DecoderLayers)

  def for_decoding(self) -> "Transformer":
    """The same model with its layers as L separate `DecoderLayer` modules (decode layout).

    Same weights, same outputs. On XLA:CPU a scan over stacked [L, ...] weights copies each
    layer's slice out of the stack at every step, which costs about as much as the matmuls at
    batch 1 (~100M Llama: 30 ms per forward pass against 19 ms with per-layer buffers). Here
    the layers run as an unrolled Python loop over separate buffers, and the KV cache
    (`init_cache`) holds one [B, S, KV, hd] array per layer, updated in place. Compile time
    grows with depth, so train with the stacked model. The layer weights are copied (one
    jitted slicing); embedding and final norm are shared with this model.
    """
    if not self.stacked:
      return self
    stacked = {name: getattr(self.layers, name[len("layers."):])[...]
               for name in param_specs(self.config) if name.startswith("layers.")}
    out = nnx.merge(*nnx.split(self))  # a new module tree over the same arrays
    out.layers = nnx.List([DecoderLayer(self.config, values) for values in _unstack(stacked)])
    return out

  def features(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array,
               cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """Final-norm hidden states.

    Args:
      tokens: [B, T] int token ids.
      positions: [B, T] int RoPE positions (from the mask, not from the time step).
      mask: [B, T] bool, True for real tokens.
      cache: a `KVCache` to write the chunk into and attend over, or None.
    Returns:
      hidden [B, T, D] in the compute dtype, and the updated cache (None without one).
    """
    c = self.config
    dtype = jnp.dtype(c.dtype)
    tokens = jnp.asarray(tokens, jnp.int32)
    positions = jnp.asarray(positions, jnp.int32)
    mask = jnp.asarray(mask, bool)
    t = tokens.shape[1]

    x = jnp.take(self.embed[...], tokens, axis=0).astype(dtype)
    if c.scale_embeddings:
      x = x * jnp.asarray(c.d_model ** 0.5, dtype)

    if cache is None:
      allowed = layers.attention_mask(
          query_slots=jnp.arange(t), query_positions=positions, key_slots=jnp.arange(t),
          key_positions=positions, key_mask=mask, sliding_window=c.sliding_window)
    else:
      index = cache.index
      if not isinstance(index, jax.core.Tracer) and int(index) + t > cache.max_len:
        raise ValueError(f"cache overflow: writing {t} token(s) at slot {int(index)} of a "
                         f"cache with max_len={cache.max_len}")
      zero = jnp.zeros_like(index)  # same integer type as index (int64 under jax_enable_x64)
      new_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (zero, index))
      new_pos = jax.lax.dynamic_update_slice(cache.positions, positions, (zero, index))
      allowed = layers.attention_mask(
          query_slots=index + jnp.arange(t), query_positions=positions,
          key_slots=jnp.arange(cache.max_len), key_positions=new_pos, key_mask=new_mask,
          sliding_window=c.sliding_window)

    def layer(x, w, k_cache, v_cache):
      h = layers.rms_norm(x, w["attn_norm"], eps=c.norm_eps, add_one=c.norm_add_one)
      q = jnp.einsum("btd,dhk->bthk", h, w["q"])
      k = jnp.einsum("btd,dhk->bthk", h, w["k"])
      v = jnp.einsum("btd,dhk->bthk", h, w["v"])
      if c.qkv_bias:
        q, k, v = q + w["q_bias"], k + w["k_bias"], v + w["v_bias"]
      q = layers.rope(q, positions, theta=c.rope_theta)
      k = layers.rope(k, positions, theta=c.rope_theta)
      if k_cache is not None:
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype),
                                               (zero, index, zero, zero))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype),
                                               (zero, index, zero, zero))
        k, v = k_cache.astype(dtype), v_cache.astype(dtype)
      attn = layers.attention(q, k, v, allowed, scale=c.attention_scale)
      x = x + jnp.einsum("bthk,hkd->btd", attn, w["o"])
      h = layers.rms_norm(x, w["mlp_norm"], eps=c.norm_eps, add_one=c.norm_add_one)
      x = x + layers.gated_mlp(h, w["gate"], w["up"], w["down"], act=c.activation)
      return x, k_cache, v_cache

    if cache is not None and cache.per_layer == self.stacked:
      raise ValueError(f"a {'per-layer' if cache.per_layer else 'stacked'} KV cache given to a "
                       f"model in the {'stacked' if self.stacked else 'per-layer'} layout; "
                       "make the cache with this model's init_cache")
    new_cache = None
    if self.stacked:  # one scan over the [L, ...] weights
      def body(x, xs):
        x, k, v = layer(x, *xs)
        return x, (k, v)
      weights = self.layers.arrays(dtype)
      if cache is None:
        x, _ = jax.lax.scan(lambda x, w: body(x, (w, None, None)), x, weights)
      else:
        x, (k_new, v_new) = jax.lax.scan(body, x, (weights, cache.k, cache.v))
    else:  # per-layer modules: an unrolled loop, each layer's weights and cache a buffer
      k_new, v_new = [], []
      for i, module in enumerate(self.layers):
        kv = (None, None) if cache is None else (cache.k[i], cache.v[i])
        x, k, v = layer(x, module.arrays(dtype), *kv)
        k_new.append(k)
        v_new.append(v)
      k_new, v_new = tuple(k_new), tuple(v_new)
    if cache is not None:
      new_cache = KVCache(k=k_new, v=v_new, mask=new_mask, positions=new_pos, index=index + t)
    x = layers.rms_norm(x, self.final_norm[...], eps=c.norm_eps, add_one=c.norm_add_one)
    return x, new_cache

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[B, T, D] hidden states -> [B, T, V] float32 logits."""
    dtype = jnp.dtype(self.config.dtype)
    if self.config.tie_embeddings:  # contract with [V, D] directly: no transposed copy
      return jnp.einsum("btd,vd->btv", hidden, self.embed[...].astype(dtype),
                        preferred_element_type=jnp.float32)
    return jnp.einsum("btd,dv->btv", hidden, self.lm_head[...].astype(dtype),
                      preferred_element_type=jnp.float32)

  def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array,
               cache: KVCache | None = None, *,
               last_only: bool = False) -> tuple[jax.Array, KVCache | None]:
    """tokens/positions/mask [B, T] -> float32 logits [B, T, V] and the updated cache.

    `last_only=True` computes the logits of the last slot only ([B, 1, V]), as a sampler needs
    after a prefill.
    """
    hidden, cache = self.features(tokens, positions, mask, cache)
    return self.logits(hidden[:, -1:] if last_only else hidden), cache


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """[B, T] bool mask of left-padded rows -> [B, T] int32 positions (0 on the pads)."""
  mask = jnp.asarray(mask, jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
