"""Save and restore a `Transformer` with orbax, its `TransformerConfig` as JSON beside it.

Layout of a checkpoint directory:

    path/config.json     the TransformerConfig fields (dataclasses.asdict)
    path/state/          orbax StandardCheckpointer tree of the model's parameters

`save_checkpoint` writes into a temporary directory next to `path` and renames it into place,
so a failed save leaves nothing half-written. `load_checkpoint` builds the model abstractly
(`nnx.eval_shape`) from the stored config and restores the arrays into it; given an expected
config it first names every field that differs.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from dera_jax.models.atomic import atomic_directory
from dera_jax.models.config import TransformerConfig
from dera_jax.models.transformer import Transformer

_CONFIG = "config.json"
_STATE = "state"


def config_to_json(config: TransformerConfig) -> str:
  return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def config_from_json(text: str, *, source: str = _CONFIG) -> TransformerConfig:
  """The inverse of `config_to_json`; names unknown or missing fields."""
  try:
    fields = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{source}: not valid JSON ({e})") from e
  if not isinstance(fields, dict):
    raise ValueError(f"{source}: expected a JSON object of TransformerConfig fields")
  known = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"{source}: unknown TransformerConfig fields {unknown}")
  try:
    return TransformerConfig(**fields)
  except TypeError as e:  # a required field is missing
    raise ValueError(f"{source}: {e}") from e


def config_differences(stored: TransformerConfig, expected: TransformerConfig) -> list[str]:
  """'field: checkpoint has X, expected Y' for every field that differs."""
  out = []
  for f in dataclasses.fields(TransformerConfig):
    a, b = getattr(stored, f.name), getattr(expected, f.name)
    if a != b:
      out.append(f"{f.name}: checkpoint has {a!r}, expected {b!r}")
  return out


def save_checkpoint(model: Transformer, path: str, *, overwrite: bool = False) -> None:
  """Write `model`'s parameters (orbax) and config (JSON) to the directory `path`.

  Raises:
    FileExistsError if `path` exists and not `overwrite`.
  """
  import orbax.checkpoint as ocp

  with atomic_directory(path, overwrite=overwrite, what="save_checkpoint") as tmp:
    with open(os.path.join(tmp, _CONFIG), "w", encoding="utf-8") as f:
      f.write(config_to_json(model.config))
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, _STATE), state)
      checkpointer.wait_until_finished()


def load_config(path: str) -> TransformerConfig:
  """The `TransformerConfig` stored in checkpoint directory `path`."""
  config_path = os.path.join(os.fspath(path), _CONFIG)
  if not os.path.exists(config_path):
    raise ValueError(f"load_checkpoint: {config_path} is missing")
  with open(config_path, encoding="utf-8") as f:
    return config_from_json(f.read(), source=config_path)


def load_checkpoint(path: str, *, config: TransformerConfig | None = None) -> Transformer:
  """Restore a `Transformer` saved by `save_checkpoint`.

  Args:
    path: the checkpoint directory.
    config: the config the caller expects; if given, every differing field is named.
  Raises:
    ValueError if files are missing, the config differs from `config`, or the stored arrays
    do not fit the stored config.
  """
  import orbax.checkpoint as ocp

  path = os.path.abspath(os.fspath(path))
  stored = load_config(path)
  if config is not None:
    differences = config_differences(stored, config)
    if differences:
      raise ValueError(f"load_checkpoint: {path} holds a different model: "
                       + "; ".join(differences))
  state_path = os.path.join(path, _STATE)
  if not os.path.isdir(state_path):
    raise ValueError(f"load_checkpoint: {state_path} is missing")
  model = nnx.eval_shape(lambda: Transformer(stored, rngs=nnx.Rngs(0)))
  abstract = nnx.state(model, nnx.Param)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      nnx.to_pure_dict(abstract))
  with ocp.StandardCheckpointer() as checkpointer:
    _check_arrays(state_path, checkpointer.metadata(state_path), target)
    restored = checkpointer.restore(state_path, target)
  nnx.replace_by_pure_dict(abstract, restored)
  nnx.update(model, abstract)
  return model


def _check_arrays(state_path: str, metadata, target) -> None:
  """Names every array whose stored name, shape or dtype differs from the config's."""
  tree = getattr(metadata, "item_metadata", metadata)
  key = lambda path: ".".join(str(getattr(k, "key", k)) for k in path)
  stored = {key(p): v for p, v in jax.tree.leaves_with_path(tree)}
  wanted = {key(p): v for p, v in jax.tree.leaves_with_path(target)}
  problems = []
  missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
  if missing or extra:
    problems.append(f"missing {missing}, unexpected {extra}")
  for name in sorted(set(wanted) & set(stored)):
    s, w = stored[name], wanted[name]
    if tuple(s.shape) != tuple(w.shape) or jnp.dtype(s.dtype) != jnp.dtype(w.dtype):
      problems.append(f"{name} is {s.dtype}{list(s.shape)}, the config needs "
                      f"{jnp.dtype(w.dtype)}{list(w.shape)}")
  if problems:
    raise ValueError(f"load_checkpoint: {state_path} does not fit the stored config: "
                     + "; ".join(problems))
