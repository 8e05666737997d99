"""Stub language models with known logits, for testing the sampler without a trained model
(the t5x way): a bigram table, a model that predicts its own position, and wrappers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StubCache:
  """The stubs need no keys or values; a [B] counter keeps the pytree non-trivial."""
  fed: jax.Array

  def repeat(self, k: int) -> "StubCache":
    return StubCache(fed=jnp.concatenate([self.fed] * k))


class BigramLM(nnx.Module):
  """logits(next | history) = table[last token]: a fixed-logit model.

  Attributes:
    table: [V, V] logits; row i is the distribution after token i.
  """

  def __init__(self, table):
    table = np.asarray(table, np.float32)
    self.table = nnx.Param(jnp.asarray(table))
    self.vocab_size = table.shape[1]

  def init_cache(self, batch_size: int, max_len: int) -> StubCache:
    return StubCache(fed=jnp.zeros((batch_size,), jnp.int32))

  def __call__(self, tokens, positions, mask, cache=None):
    logits = jnp.take(self.table[...], tokens, axis=0)
    if cache is not None:
      cache = StubCache(fed=cache.fed + jnp.sum(mask, axis=1, dtype=jnp.int32))
    return logits, cache


class ConstantLM(BigramLM):
  """The same logits after every token."""

  def __init__(self, logits):
    logits = np.asarray(logits, np.float32)
    super().__init__(np.tile(logits, (logits.shape[0], 1)))


class PositionLM(nnx.Module):
  """Predicts token (position + 1) % V with high confidence: greedy decoding of a prompt of
  length n must yield n, n+1, … whatever the padding, if positions come from the mask."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size
    self.sharpness = nnx.Param(jnp.asarray(20.0))

  def init_cache(self, batch_size: int, max_len: int) -> StubCache:
    return StubCache(fed=jnp.zeros((batch_size,), jnp.int32))

  def __call__(self, tokens, positions, mask, cache=None):
    target = (positions + 1) % self.vocab_size
    logits = self.sharpness[...] * jax.nn.one_hot(target, self.vocab_size)
    return logits, cache


class ShiftedLM(nnx.Module):
  """Adds a row- and position-dependent constant to another model's logits."""

  def __init__(self, inner, scale: float = 37.0):
    self.inner = inner
    self.vocab_size = inner.vocab_size
    self.scale = scale

  def init_cache(self, batch_size: int, max_len: int):
    return self.inner.init_cache(batch_size, max_len)

  def __call__(self, tokens, positions, mask, cache=None):
    logits, cache = self.inner(tokens, positions, mask, cache)
    shift = self.scale * jnp.sin(1.0 + tokens + 3 * positions).astype(jnp.float32)
    return logits + shift[..., None], cache


class CountingLM(BigramLM):
  """A bigram model that counts, at run time, how many times it is called."""

  calls = 0

  def __call__(self, tokens, positions, mask, cache=None):
    def bump():
      CountingLM.calls += 1
    jax.debug.callback(bump)
    return super().__call__(tokens, positions, mask, cache)
