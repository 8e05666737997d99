"""Scalar heads on a decoder trunk: reward models and value models.

    rm = ScalarHeadModel(Transformer(config, rngs=rngs), rngs=rngs)
    values = rm.values(tokens, positions, mask)          # [B, T], one scalar per position
    reward = rm.score(tokens, mask, last_index)          # [B], read at each row's last token

The head is `nnx.Linear(D -> 1)` on the final-norm hidden states (`Transformer.features`).
Rewards can be normalised to mean 0 / std 1 on a reference set (e.g. SFT samples): the affine
constants live in the module as `Normalizer` variables (saved with the weights, not trained):
score = (raw − shift) / scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dera_jax.models.transformer import Transformer, positions_from_mask


class Normalizer(nnx.Variable):
  """Non-trainable affine constants of a scalar head (not an `nnx.Param`)."""


def last_index(mask: jax.Array) -> jax.Array:
  """[B, T] bool -> [B] int32 index of the last True of each row (0 for an empty row)."""
  mask = jnp.asarray(mask, bool)
  t = mask.shape[1]
  idx = jnp.where(mask, jnp.arange(t, dtype=jnp.int32)[None, :], -1).max(axis=1)
  return jnp.maximum(idx, 0).astype(jnp.int32)


class ScalarHeadModel(nnx.Module):
  """A `Transformer` trunk (its `features`) with a Linear(D -> 1) head.

  Attributes:
    backbone: the decoder (its LM head, if any, is unused).
    head: nnx.Linear(d_model, 1), float32.
    shift, scale: `Normalizer` scalars (0 and 1 until `set_normalization`).
  """

  def __init__(self, backbone: Transformer, *, rngs: nnx.Rngs, head_init_std: float = 0.0):
    self.backbone = backbone
    d = backbone.config.d_model
    init = (nnx.initializers.zeros if head_init_std == 0.0
            else nnx.initializers.normal(head_init_std))
    self.head = nnx.Linear(d, 1, kernel_init=init, rngs=rngs)
    self.shift = Normalizer(jnp.zeros((), jnp.float32))
    self.scale = Normalizer(jnp.ones((), jnp.float32))

  @property
  def config(self):
    return self.backbone.config

  def raw_values(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, T] unnormalised head output at every position (float32)."""
    hidden, _ = self.backbone.features(tokens, positions, mask)
    return self.head(hidden.astype(jnp.float32))[..., 0]

  def values(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, T] normalised scalar at every position (the value head of PPO)."""
    return (self.raw_values(tokens, positions, mask) - self.shift[...]) / self.scale[...]

  def score(self, tokens: jax.Array, mask: jax.Array, index: jax.Array | None = None
            ) -> jax.Array:
    """[B] scalar read at `index` (default: each row's last real token, from `mask`).

    Positions come from the mask, so left- and right-padded rows both work.
    """
    mask = jnp.asarray(mask, bool)
    positions = positions_from_mask(mask)
    if index is None:
      index = last_index(mask)
    v = self.values(tokens, positions, mask)
    return jnp.take_along_axis(v, index[:, None].astype(jnp.int32), axis=1)[:, 0]

  def set_normalization(self, shift, scale) -> None:
    """Store score = (raw − shift) / scale (e.g. the mean and std of raw SFT-sample rewards)."""
    scale = float(scale)
    if not scale > 0:
      raise ValueError(f"set_normalization: scale={scale!r} must be > 0")
    self.shift[...] = jnp.asarray(shift, jnp.float32)
    self.scale[...] = jnp.asarray(scale, jnp.float32)


def save_scalar_head_model(model: ScalarHeadModel, path: str, *, overwrite: bool = False) -> None:
  """Write a reward/value model: the trunk as a `save_checkpoint` directory `path/backbone`
  and the head and normalisation constants in `path/head.npz` (atomically, as a whole)."""
  import os

  import numpy as np

  from dera_jax.models.atomic import atomic_directory
  from dera_jax.models.checkpoint import save_checkpoint

  with atomic_directory(path, overwrite=overwrite, what="save_scalar_head_model") as tmp:
    save_checkpoint(model.backbone, os.path.join(tmp, "backbone"))
    np.savez(os.path.join(tmp, "head.npz"), kernel=np.asarray(model.head.kernel[...]),
             bias=np.asarray(model.head.bias[...]), shift=np.asarray(model.shift[...]),
             scale=np.asarray(model.scale[...]))


def load_scalar_head_model(path: str) -> ScalarHeadModel:
  """Read a model written by `save_scalar_head_model`."""
  import os

  import numpy as np

  from dera_jax.models.checkpoint import load_checkpoint

  head_path = os.path.join(os.fspath(path), "head.npz")
  if not os.path.exists(head_path):
    raise ValueError(f"load_scalar_head_model: {head_path} is missing")
  model = ScalarHeadModel(load_checkpoint(os.path.join(os.fspath(path), "backbone")),
                          rngs=nnx.Rngs(0))
  with np.load(head_path) as arrays:
    model.head.kernel[...] = jnp.asarray(arrays["kernel"])
    model.head.bias[...] = jnp.asarray(arrays["bias"])
    model.shift[...] = jnp.asarray(arrays["shift"])
    model.scale[...] = jnp.asarray(arrays["scale"])
  return model
