"""DeRa's mixing rule and the sequence-level quantities every evaluation needs.

The model aligned at β/λ is the geometric mixture π_sft^(1−λ)·π_β^λ (normalised). DeRa samples
it token by token:

    p_λ(y_t | x, y_<t) = softmax(λ · h_aligned + (1 − λ) · h_sft)

Mixing each model's log-softmax rather than its raw logits gives the same distribution (the
weights sum to one, so per-row constants cancel) and is the numerically safe form for λ > 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mix_log_probs(sft_log_probs: jax.Array, aligned_log_probs: jax.Array,
                  lam: jax.Array) -> jax.Array:
  """Unnormalised DeRa scores λ·la + (1 − λ)·ls (up to a per-row constant), float32.

  - Exact at the ends: λ = 0 returns `sft_log_probs` and λ = 1 returns `aligned_log_probs`
    bit for bit, so DeRa at λ = 0 / 1 samples exactly what each model samples alone.
  - Inside [0, 1] the scores are the convex combination itself. Outside (extrapolation, or
    λ < 0) they are computed as |λ|·(v − max v) with v = sign(λ)·(la − ls) + ls/|λ|: the same
    distribution, but no intermediate overflows, so any λ that is finite in float32 gives
    finite scores (the largest is 0).
  - A token impossible (-inf) under a model that carries weight stays impossible: for λ > 1
    the SFT term has a negative weight, and 0^(1−λ) would otherwise make it certain. A finite
    but tiny SFT probability is extrapolated like any other: that is the geometric mixture.
  - If the two models share no possible token, the mixture is undefined and the row is NaN.

  Args:
    sft_log_probs: [..., V] log-probabilities of the SFT model.
    aligned_log_probs: [..., V] of the aligned model.
    lam: λ, a scalar or an array broadcastable to the leading dims [...].
  Returns:
    [..., V] float32.
  """
  ls = jnp.asarray(sft_log_probs, jnp.float32)
  la = jnp.asarray(aligned_log_probs, jnp.float32)
  lam = jnp.asarray(lam, jnp.float32)[..., None]
  support = (jnp.isfinite(ls) | (lam == 1)) & (jnp.isfinite(la) | (lam == 0))

  # Interpolation, 0 <= λ <= 1: a convex combination cannot overflow.
  aligned_term = jnp.where(lam == 0, 0.0, lam * la)
  sft_term = jnp.where(lam == 1, 0.0, (1.0 - lam) * ls)
  inside = jnp.where(support, aligned_term + sft_term, -jnp.inf)

  # Extrapolation (λ > 1 or λ < 0): λ·la + (1 − λ)·ls = |λ|·v, shifted so its maximum is 0.
  magnitude = jnp.where((lam >= 0) & (lam <= 1), 1.0, jnp.abs(lam))
  v = jnp.sign(lam) * (la - ls) + ls / magnitude
  v = jnp.where(support, v, -jnp.inf)
  v_max = jnp.max(v, axis=-1, keepdims=True)
  outside = jnp.where(support, magnitude * (v - v_max), -jnp.inf)

  return jnp.where((lam >= 0) & (lam <= 1), inside, outside)


def mix_logits(sft_logits: jax.Array, aligned_logits: jax.Array, lam) -> jax.Array:
  """float32 log-probs of softmax(λ · aligned_logits + (1 − λ) · sft_logits).

  Args:
    sft_logits: [..., V] logits of the SFT model (any float dtype).
    aligned_logits: [..., V] logits of the aligned model.
    lam: λ, a scalar or one value per row (shape [...]). λ = 0 is the SFT model, λ = 1 the
      aligned model, 0 < λ < 1 interpolates and λ > 1 extrapolates.
  Returns:
    [..., V] float32 log-probabilities.
  """
  ls = jax.nn.log_softmax(jnp.asarray(sft_logits, jnp.float32), axis=-1)
  la = jax.nn.log_softmax(jnp.asarray(aligned_logits, jnp.float32), axis=-1)
  return jax.nn.log_softmax(mix_log_probs(ls, la, lam), axis=-1)


def sequence_log_prob(token_log_probs: jax.Array, lengths: jax.Array) -> jax.Array:
  """Σ_t log p(y_t | …) over the first `lengths` tokens.

  Args:
    token_log_probs: [..., M] per-token log-probs (entries past the length are ignored).
    lengths: [...] number of generated tokens, stop token included.
  Returns:
    [...] float32.
  """
  m = token_log_probs.shape[-1]
  valid = jnp.arange(m) < jnp.asarray(lengths)[..., None]
  return jnp.sum(jnp.where(valid, token_log_probs, 0.0), axis=-1, dtype=jnp.float32)


def kl_estimate(policy_seq_log_probs: jax.Array, reference_seq_log_probs: jax.Array,
                axis: int = -1) -> jax.Array:
  """Monte-Carlo KL(policy ‖ reference) from samples y ~ policy: mean of log π − log π_ref.

  Unbiased when the policy log-probs are those of the distribution that produced the samples
  (no top-k / top-p truncation, same temperature).
  """
  diff = jnp.asarray(policy_seq_log_probs) - jnp.asarray(reference_seq_log_probs)
  return jnp.mean(diff, axis=axis)
