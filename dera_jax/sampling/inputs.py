"""Validation and batching of what callers hand the samplers: prompts and per-row controls.

Every error names the argument, the offending value and what would be accepted.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
  """`value` as an int in [low, high), or a ValueError naming `name`."""
  if hasattr(value, "__array__") and np.ndim(value) == 0 and not isinstance(value, bool):
    value = np.asarray(value)
    value = value.item() if np.issubdtype(value.dtype, np.integer) else value
  if not _is_int(value):
    raise ValueError(f"{name}={value!r}: must be an integer")
  value = int(value)
  if low is not None and value < low:
    raise ValueError(f"{name}={value}: must be >= {low}")
  if high is not None and value >= high:
    raise ValueError(f"{name}={value}: must be < {high}")
  return value


def left_pad(prompts, *, max_len: int, vocab_size: int, pad_id: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
  """Left-pad token-id prompts to `max_len`.

  Args:
    prompts: a non-empty sequence of non-empty sequences of ints in [0, vocab_size).
  Returns:
    tokens [N, max_len] int32 and mask [N, max_len] bool (True on real tokens).
  """
  if hasattr(prompts, "__array__") and np.ndim(prompts) == 2:  # NumPy / JAX [N, T] ids
    prompts = list(np.asarray(prompts))
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
    raise ValueError(f"prompts={_short(prompts)}: must be a non-empty list of token-id lists")
  tokens = np.full((len(prompts), max_len), pad_id, np.int32)
  mask = np.zeros((len(prompts), max_len), bool)
  for i, prompt in enumerate(prompts):
    try:
      ids = np.asarray(prompt)
    except (TypeError, ValueError) as e:
      raise ValueError(f"prompts[{i}]={_short(prompt)}: must be a list of token ids") from e
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
      raise ValueError(f"prompts[{i}]={_short(prompt)}: must be a flat list of integer ids")
    if ids.size == 0:
      raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token")
    if ids.size > max_len:
      raise ValueError(f"prompts[{i}] has {ids.size} tokens: must be at most "
                       f"max_prompt_len={max_len}")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
      raise ValueError(f"prompts[{i}] holds token id {int(ids[bad][0])}: ids must be in "
                       f"[0, {vocab_size})")
    tokens[i, max_len - ids.size:] = ids
    mask[i, max_len - ids.size:] = True
  return tokens, mask


def per_row(name: str, value, n: int, *, dtype, check) -> np.ndarray:
  """Broadcast a scalar or validate a length-n sequence; `check(x)` returns an error or None."""
  arr = np.asarray(value)
  if arr.dtype.name in ("bfloat16", "float16"):
    arr = arr.astype(np.float32)
  if arr.ndim == 0:
    arr = np.full((n,), arr)
  elif arr.ndim != 1 or arr.shape[0] != n:
    raise ValueError(f"{name} has shape {arr.shape}: must be a scalar or one value per row "
                     f"({n} values)")
  if np.issubdtype(dtype, np.integer):
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"{name}={_short(value)}: must be integers")
  elif arr.size and not (np.issubdtype(arr.dtype, np.floating) or
                         np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
    raise ValueError(f"{name}={_short(value)}: must be real numbers")
  for i, x in enumerate(arr.tolist()):
    problem = check(x)
    if problem:
      where = name if np.ndim(value) == 0 else f"{name}[{i}]"
      raise ValueError(f"{where}={x!r}: {problem}")
  return arr.astype(dtype)


_F32_MAX = float(np.finfo(np.float32).max)


def check_lambda(x) -> str | None:
  if math.isfinite(x) and abs(x) <= _F32_MAX:
    return None
  return f"λ must be finite in float32 (|λ| <= {_F32_MAX:.4g}); any such value is allowed"


def check_temperature(x) -> str | None:
  if math.isfinite(x) and 0 <= x <= _F32_MAX:
    return None
  return f"temperature must be in [0, {_F32_MAX:.4g}] (0 = greedy)"


def check_top_k(x) -> str | None:
  return None if x >= 0 else "top_k must be >= 0 (0 disables top-k)"


def check_top_p(x) -> str | None:
  # float32 is what the filter sees: 1e-46 would silently become 0 there.
  return None if 0 < np.float32(x) and x <= 1 else "top_p must be in (0, 1] (1 disables top-p)"


def lambda_grid(lambdas) -> np.ndarray:
  """A sweep's λ grid: a non-empty 1-D sequence of float32-finite reals -> [K] float32."""
  if np.ndim(lambdas) != 1 or np.size(lambdas) == 0 or isinstance(lambdas, (str, bytes)):
    raise ValueError(f"lambdas={_short(lambdas)}: sweep needs a non-empty list of λ values")
  return per_row("lambdas", lambdas, np.size(lambdas), dtype=np.float32, check=check_lambda)


def stop_id_list(stop_ids, vocab_size: int) -> tuple[int, ...]:
  """Stop ids as a tuple of ints in [0, vocab_size); one int is accepted too."""
  if hasattr(stop_ids, "__array__") and np.ndim(stop_ids) == 0 or _is_int(stop_ids):
    stop_ids = [stop_ids]
  if stop_ids is None or isinstance(stop_ids, (str, bytes)) or not hasattr(stop_ids,
                                                                           "__iter__"):
    raise ValueError(f"stop_ids={_short(stop_ids)}: must be a list of token ids (or one id)")
  return tuple(check_int(f"stop_ids[{i}]", s, low=0, high=vocab_size)
               for i, s in enumerate(stop_ids))


def check_row_id(x) -> str | None:
  return None if 0 <= x < 2**31 else "row ids must be in [0, 2**31)"


def _short(value, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "…"
