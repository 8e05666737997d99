"""Load a model from any checkpoint format this library reads, picked by what the path holds.

    model, tokenizer = load_any(path, dtype="float32")

Formats (`checkpoint_format(path)` says which, without loading anything):
- "gguf": a llama.cpp .gguf file (`dera_jax.models.gguf.load_gguf`); always has a tokenizer.
- "hf": a HF directory with config.json and *.safetensors (`dera_jax.models.hf.load_hf`);
  tokenizer None if the directory has no tokenizer files.
- "checkpoint": an orbax directory written by `save_checkpoint` (config.json + state/);
  its tokenizer is read if tokenizer files were put beside it, else None.

`load_tokenizer(path)` reads only the tokenizer of a HF directory, a tokenizer directory or a
.gguf file.
"""

from __future__ import annotations

import dataclasses
import json
import os

from dera_jax.models.config import DTYPES

FORMATS = ("hf", "gguf", "checkpoint")
_GGUF_MAGIC = b"GGUF"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def _is_gguf_file(path: str) -> bool:
  if path.endswith(".gguf"):
    return True
  try:
    with open(path, "rb") as f:
      return f.read(4) == _GGUF_MAGIC
  except OSError:
    return False


def checkpoint_format(path: str | os.PathLike) -> str:
  """"hf", "gguf" or "checkpoint": the format of `path`, judged from its files alone.

  Raises:
    ValueError naming the path when it does not exist or holds none of the formats.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"{path}: no such file or directory")
  if os.path.isfile(path):
    if _is_gguf_file(path):
      return "gguf"
    raise ValueError(f"{path}: a file, but not a .gguf checkpoint (expected a .gguf file, a HF "
                     "directory or an orbax checkpoint directory)")
  names = set(os.listdir(path))
  if "config.json" in names and os.path.isdir(os.path.join(path, "state")):
    return "checkpoint"
  if "config.json" in names and any(n.endswith(".safetensors") for n in names):
    return "hf"
  gguf = sorted(n for n in names if n.endswith(".gguf"))
  hint = f" (it holds {gguf[0]}: pass that file)" if gguf else ""
  raise ValueError(f"{path}: not a checkpoint directory{hint}; expected config.json with "
                   "*.safetensors (HF) or config.json with state/ (save_checkpoint)")


def has_tokenizer(path: str | os.PathLike) -> bool:
  """Whether the directory `path` holds tokenizer files (tokenizer.json / tokenizer.model)."""
  return any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES)


def _cast_checkpoint(model, dtype: str):
  """`model` with compute and parameter dtype `dtype` (a fresh model; arrays cast)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from dera_jax.models.transformer import Transformer

  config = dataclasses.replace(model.config, dtype=dtype, param_dtype=dtype)
  target = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  cast = jax.tree.map(lambda x: jnp.asarray(x, dtype), nnx.to_pure_dict(state))
  abstract = nnx.state(target, nnx.Param)
  nnx.replace_by_pure_dict(abstract, cast)
  nnx.update(target, abstract)
  return target


def load_any(path: str | os.PathLike, *, dtype: str = "float32"):
  """Load `path` whatever its format (see the module docstring).

  Args:
    path: a .gguf file, a HF checkpoint directory or a `save_checkpoint` directory.
    dtype: compute and parameter dtype of the model ("float32", "bfloat16", "float16").
  Returns:
    (model, tokenizer or None).
  Raises:
    ValueError naming the path (or the loader's file / field) for anything unusable.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: must be one of {list(DTYPES)}")
  path = os.fspath(path)
  kind = checkpoint_format(path)
  if kind == "gguf":
    from dera_jax.models.gguf import load_gguf
    return load_gguf(path, dtype=dtype)
  if kind == "hf":
    from dera_jax.models.hf import load_hf
    return load_hf(path, dtype=dtype)
  from dera_jax.models.checkpoint import load_checkpoint
  model = load_checkpoint(path)
  if (model.config.dtype, model.config.param_dtype) != (dtype, dtype):
    model = _cast_checkpoint(model, dtype)
  tokenizer = load_tokenizer(path) if has_tokenizer(path) else None
  return model, tokenizer


def load_tokenizer(path: str | os.PathLike):
  """The tokenizer of a .gguf file or of a directory with tokenizer.json / tokenizer.model.

  Raises:
    ValueError naming the path when it has no tokenizer.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"{path}: no such file or directory")
  if os.path.isfile(path):
    if not _is_gguf_file(path):
      raise ValueError(f"{path}: a tokenizer comes from a directory (tokenizer.json or "
                       "tokenizer.model) or a .gguf file")
    from dera_jax.models.gguf import load_gguf_tokenizer
    return load_gguf_tokenizer(path)
  if not has_tokenizer(path):
    raise ValueError(f"{path}: no tokenizer files (need one of {list(_TOKENIZER_FILES)})")
  from dera_jax.data.tokenizer import Tokenizer
  return Tokenizer.from_pretrained(path, eos_ids=_config_eos_ids(path))


def _config_eos_ids(path: str) -> list[int] | None:
  """As `load_hf`: generation_config.json's eos ids win (None: the tokenizer reads them);
  else config.json's `eos_token_id`; else None."""

  def read(name):
    try:
      with open(os.path.join(path, name), encoding="utf-8") as f:
        value = json.load(f)
    except (OSError, ValueError):
      return {}
    return value if isinstance(value, dict) else {}

  if read("generation_config.json").get("eos_token_id") is not None:
    return None
  eos = read("config.json").get("eos_token_id")
  if isinstance(eos, int) and not isinstance(eos, bool):
    return [eos]
  if isinstance(eos, list) and all(isinstance(i, int) for i in eos):
    return list(eos)
  return None
