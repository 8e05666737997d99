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
  """Unnormalised DeRa scores λ·la + (1 − λ)·ls, float32.

  Exact at the ends: λ = 0 returns `sft_log_probs` and λ = 1 returns `aligned_log_probs`
  bit for bit. A token impossible under a model that carries weight stays impossible (for
  λ > 1 the SFT term has a negative weight, and 0^(1−λ) would otherwise make it certain).

  Args:
    sft_log_probs: [..., V] log-probabilities (or logits) of the SFT model.
    aligned_log_probs: [..., V] of the aligned model.
    lam: λ, a scalar or an array broadcastable to the leading dims [...].
  Returns:
    [..., V] float32.
  """
  ls = jnp.asarray(sft_log_probs, jnp.float32)
  la = jnp.asarray(aligned_log_probs, jnp.float32)
  lam = jnp.asarray(lam, jnp.float32)[..., None]
  aligned_term = jnp.where(lam == 0, 0.0, lam * la)
  sft_term = jnp.where(lam == 1, 0.0, (1.0 - lam) * ls)
  support = (jnp.isfinite(ls) | (lam == 1)) & (jnp.isfinite(la) | (lam == 0))
  return jnp.where(support, aligned_term + sft_term, -jnp.inf)


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
