"""The explicit KV-cache pytree of one decoder model.

Layout (S = cache length, slots in time order, shared write index for all rows):

    slot:        0    1    2    3    4    5    6    7
    row 0:      pad  pad  The  cat  sat | new  new  ...      (prompt of 3, left-padded to 5)
    row 1:       A    dog  ran  far  off| new  new  ...      (prompt of 5)
    mask[0]:     0    0    1    1    1  |  1    1
    positions[0]:0    0    0    1    2  |  3    4
                                        ^ index after prefill = 5 for every row

Prompts are left-padded so every row writes its next token at the same slot `index`; what
differs between rows is only which slots are valid (`mask`) and the RoPE position each slot
holds (`positions`, counted from the row's first real token). A query at slot i attends to the
slots s <= i with mask[b, s] set.

Keys and values come in two layouts, matching the model's: stacked, one [L, B, S, KV, hd]
array each (scanned over with stacked weights), or per layer, a tuple of L [B, S, KV, hd]
arrays (`Transformer.for_decoding()`), so that each layer's write is an in-place update of
its own buffer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Keys and values of every layer, plus per-slot validity and positions.

  Attributes:
    k: [L, B, S, KV, head_dim] keys (RoPE already applied), or per layer a tuple of L
      [B, S, KV, head_dim] arrays.
    v: values, laid out like `k`.
    mask: [B, S] bool, True where a slot holds a real token.
    positions: [B, S] int32, RoPE position of the token in each slot.
    index: [] int32, the next slot to write (the same for every row).
  """

  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  mask: jax.Array
  positions: jax.Array
  index: jax.Array

  @classmethod
  def init(cls, *, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int,
           head_dim: int, dtype=jnp.float32, per_layer: bool = False) -> "KVCache":
    shape = (batch_size, max_len, num_kv_heads, head_dim)
    if per_layer:
      zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
    else:
      zeros = lambda: jnp.zeros((num_layers, *shape), dtype)
    return cls(
        k=zeros(),
        v=zeros(),
        mask=jnp.zeros((batch_size, max_len), bool),
        positions=jnp.zeros((batch_size, max_len), jnp.int32),
        index=jnp.zeros((), jnp.int32),  # int64 under jax_enable_x64
    )

  @property
  def per_layer(self) -> bool:
    """True when k and v are tuples of per-layer arrays."""
    return isinstance(self.k, tuple)

  @property
  def max_len(self) -> int:
    return self.mask.shape[1]

  @property
  def batch_size(self) -> int:
    return self.mask.shape[0]

  def next_positions(self) -> jax.Array:
    """[B] int32: the position a row's next real token takes (its count of valid slots)."""
    return jnp.sum(self.mask, axis=1, dtype=jnp.int32)

  def repeat(self, repeats: int) -> "KVCache":
    """Tile the batch `repeats` times: row r of the result is row r % B of this cache."""
    tile = lambda x, axis: jnp.concatenate([x] * repeats, axis=axis)
    kv_axis = 0 if self.per_layer else 1  # the batch axis of a k/v array
    tile_kv = lambda kv: jax.tree.map(lambda x: tile(x, kv_axis), kv)
    return KVCache(k=tile_kv(self.k), v=tile_kv(self.v), mask=tile(self.mask, 0),
                   positions=tile(self.positions, 0), index=self.index)
