"""Assign named weight arrays to a `Transformer`, checking every name and shape.

Checkpoint importers (HF safetensors, GGUF, …) translate their tensors into this layout and
call `assign_weights`; nothing else needs to know where a parameter lives in the module.

Names and shapes (L layers, D d_model, H heads, KV kv heads, hd head_dim, F mlp_dim, V vocab):

    embed            [V, D]
    final_norm       [D]
    lm_head          [D, V]          (absent when tie_embeddings)
    layers.attn_norm [L, D]
    layers.q         [L, D, H, hd]
    layers.k         [L, D, KV, hd]
    layers.v         [L, D, KV, hd]
    layers.q_bias    [L, H, hd]      (qkv_bias only; k_bias, v_bias [L, KV, hd])
    layers.o         [L, H, hd, D]
    layers.mlp_norm  [L, D]
    layers.gate      [L, D, F]
    layers.up        [L, D, F]
    layers.down      [L, F, D]

Norm weights are stored as the checkpoint has them (Gemma's are the w of 1 + w).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx


def weight_shapes(model) -> dict[str, tuple[int, ...]]:
  """name -> shape of every parameter of `model`, in the layout above."""
  return {".".join(map(str, path)): tuple(v.get_value().shape)
          for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assign_weights(model, arrays: dict[str, np.ndarray], *, source: str = "checkpoint") -> None:
  """Set every parameter of `model` from `arrays` (cast to the config's param_dtype).

  Raises:
    ValueError naming `source` and the parameter, if a name is missing or unexpected or a
    shape differs.
  """
  expected = weight_shapes(model)
  missing = sorted(set(expected) - set(arrays))
  extra = sorted(set(arrays) - set(expected))
  if missing or extra:
    raise ValueError(f"{source}: weights do not match the model: missing {missing}, "
                     f"unexpected {extra}")
  dtype = jnp.dtype(model.config.param_dtype)
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  for path, variable in flat.items():
    name = ".".join(map(str, path))
    value = np.asarray(arrays[name])
    if tuple(value.shape) != expected[name]:
      raise ValueError(f"{source}: {name} has shape {tuple(value.shape)}, the config needs "
                       f"{expected[name]}")
    variable.set_value(jnp.asarray(value, dtype=dtype))
