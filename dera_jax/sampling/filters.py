"""Token filters and the per-row sampler of one decoding step, all in float32.

Every control is a per-row traced value, so changing it never recompiles:
temperature (0 = greedy), top-k (0 = off) and top-p (1 = off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_temperature(scores: jax.Array, temperature: jax.Array) -> jax.Array:
  """log_softmax(scores / T) per row; rows with T == 0 (greedy) use T = 1.

  Args:
    scores: [N, V] unnormalised log-probabilities.
    temperature: [N] >= 0.
  Returns:
    [N, V] float32 log-probabilities.
  """
  t = jnp.where(temperature > 0, temperature, 1.0).astype(jnp.float32)[:, None]
  return jax.nn.log_softmax(scores.astype(jnp.float32) / t, axis=-1)


def top_k_top_p(log_probs: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Mask (to -inf) tokens outside the top-k, then outside the top-p nucleus.

  Top-p keeps the smallest set of most likely tokens whose mass (renormalised over the top-k)
  reaches p; ties at the cut-off are kept. Rows with top_k == 0 and top_p >= 1 are unchanged.

  Args:
    log_probs: [N, V] normalised log-probabilities.
    top_k: [N] int, 0 disables.
    top_p: [N] float in (0, 1].
  Returns:
    [N, V] with filtered entries set to -inf.
  """
  v = log_probs.shape[-1]
  sorted_lp = -jnp.sort(-log_probs, axis=-1)  # descending
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v).astype(jnp.int32)
  in_top_k = jnp.arange(v)[None, :] < k[:, None]
  probs = jnp.where(in_top_k, jnp.exp(sorted_lp), 0.0)
  total = jnp.sum(probs, axis=-1, keepdims=True)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = in_top_k & ((mass_before < top_p[:, None] * total) | (top_p[:, None] >= 1.0))
  keep = keep.at[:, 0].set(True)  # the most likely token is always kept (even if p -> 0)
  last_kept = jnp.sum(keep, axis=-1) - 1
  threshold = jnp.take_along_axis(sorted_lp, last_kept[:, None], axis=-1)
  return jnp.where(log_probs >= threshold, log_probs, -jnp.inf)


def maybe_filter(log_probs: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """`top_k_top_p`, skipping the sort when no row asks for filtering."""
  needed = jnp.any((top_k > 0) | (top_p < 1.0))
  return jax.lax.cond(needed, top_k_top_p, lambda lp, *_: lp, log_probs, top_k, top_p)


def row_keys(seed: jax.Array, row_ids: jax.Array, step: jax.Array) -> jax.Array:
  """[N] PRNG keys folded from (seed, row id, step): a row's draw ignores the other rows."""
  base = jax.random.key(seed)
  return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(base, r), step))(row_ids)


def sample_tokens(keys: jax.Array, filtered: jax.Array, greedy_scores: jax.Array,
                  temperature: jax.Array) -> jax.Array:
  """Draw one token per row: categorical from `filtered`, argmax of `greedy_scores` if T == 0.

  Args:
    keys: [N] PRNG keys.
    filtered: [N, V] log-probabilities after temperature and filtering.
    greedy_scores: [N, V] scores whose argmax is the greedy choice.
    temperature: [N].
  Returns:
    [N] int32 token ids.
  """
  # An all-greedy batch skips the draw (V random numbers per row per step).
  drawn = jax.lax.cond(jnp.any(temperature > 0),
                       lambda: jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32),
                       lambda: jnp.zeros(filtered.shape[:1], jnp.int32))
  greedy = jnp.argmax(greedy_scores, axis=-1)
  return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)
