"""Pure loss and advantage functions of the alignment trainers (no models, no state).

Every function takes arrays and returns arrays, so each has a float64 NumPy twin in the tests.
Shapes: B rows (sequences), M response tokens per row, k samples per prompt.

- `token_log_probs`: teacher-forced per-token log-probs of a [B, T] sequence at a temperature.
- `bradley_terry_loss`: reward-model loss −log σ(r_chosen − r_rejected).
- `dpo_loss`: −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]) on sequence log-probs.
- `token_kl`: Σ_t (log π − log π_ref) over response tokens (the sampled-token KL estimate).
- `rloo_advantages`, `rloo_loss`: leave-one-out baseline over k samples of one prompt.
- `gae`, `ppo_policy_loss`, `ppo_value_loss`: PPO's pieces.
- `masked_mean`, `masked_whiten`, `entropy_from_logits`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Mean of `x` where `mask` is True (0 where the mask is empty)."""
  mask = mask.astype(jnp.float32)
  return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
  """(x − mean) / std over the masked entries (population variance), 0 off the mask."""
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
  if not shift_mean:
    out = out + mean
  return jnp.where(mask, out, 0.0)


def token_log_probs(logits: jax.Array, targets: jax.Array, temperature=1.0) -> jax.Array:
  """log softmax(logits / T)[target] per position.

  Args:
    logits: [B, T, V] (any float dtype; computed in float32).
    targets: [B, T] int ids.
    temperature: scalar or [B] > 0 (a traced value).
  Returns:
    [B, T] float32.
  """
  t = jnp.asarray(temperature, jnp.float32)
  if t.ndim == 1:
    t = t[:, None, None]
  lp = jax.nn.log_softmax(logits.astype(jnp.float32) / t, axis=-1)
  return jnp.take_along_axis(lp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy_from_logits(logits: jax.Array, temperature=1.0) -> jax.Array:
  """[B, T, V] logits -> [B, T] entropy of softmax(logits / T) in nats (float32)."""
  t = jnp.asarray(temperature, jnp.float32)
  if t.ndim == 1:
    t = t[:, None, None]
  lp = jax.nn.log_softmax(logits.astype(jnp.float32) / t, axis=-1)
  return -jnp.sum(jnp.exp(lp) * lp, axis=-1)


def bradley_terry_loss(chosen_rewards: jax.Array, rejected_rewards: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """Mean −log σ(r_c − r_r) over [B] pairs, and the accuracy mean[r_c > r_r]."""
  margin = chosen_rewards.astype(jnp.float32) - rejected_rewards.astype(jnp.float32)
  loss = -jnp.mean(jax.nn.log_sigmoid(margin))
  return loss, jnp.mean((margin > 0).astype(jnp.float32))


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, beta) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DPO's sigmoid loss on [B] sequence log-probs.

  loss = mean −log σ(β·[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))]).
  Returns (loss, metrics): implicit rewards β·log-ratio of each side, their margin and the
  accuracy of the implicit reward.
  """
  chosen = beta * (policy_chosen - ref_chosen)
  rejected = beta * (policy_rejected - ref_rejected)
  loss = -jnp.mean(jax.nn.log_sigmoid(chosen - rejected))
  return loss, {"loss": loss, "reward_chosen": chosen.mean(), "reward_rejected": rejected.mean(),
                "reward_margin": (chosen - rejected).mean(),
                "accuracy": jnp.mean((chosen > rejected).astype(jnp.float32))}


def token_kl(log_probs: jax.Array, ref_log_probs: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, M] per-token log-probs of sampled tokens -> [B] Σ_t mask·(log π − log π_ref)."""
  return jnp.sum(jnp.where(mask, log_probs - ref_log_probs, 0.0), axis=-1)


def rloo_advantages(rewards: jax.Array, k: int) -> jax.Array:
  """Leave-one-out advantages: A_i = R_i − mean_{j≠i} R_j within each prompt's k samples.

  Args:
    rewards: [N·k] rewards, the k samples of prompt n at rows n·k … n·k + k − 1.
    k: samples per prompt, ≥ 2 (static).
  Returns:
    [N·k] advantages.
  """
  r = rewards.reshape(-1, k)
  baseline = (r.sum(axis=1, keepdims=True) - r) / (k - 1)
  return (r - baseline).reshape(-1)


def rloo_loss(sequence_log_probs: jax.Array, advantages: jax.Array) -> jax.Array:
  """REINFORCE with a (constant) baseline: mean_i −A_i · log π(y_i|x_i) over [N·k] rows."""
  return -jnp.mean(jax.lax.stop_gradient(advantages) * sequence_log_probs)


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma, lam
        ) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over response tokens (reverse `lax.scan`).

  With m_t the mask, V'_{t+1} = m_{t+1}·V_{t+1} (0 after the last token):
    δ_t = r_t + γ·V'_{t+1} − V_t,   A_t = m_t·(δ_t + γ·λ·m_{t+1}·A_{t+1}).

  Args:
    rewards, values: [B, M] float.
    mask: [B, M] bool, True on response tokens (a prefix of each row).
    gamma, lam: scalars (traced values).
  Returns:
    advantages [B, M] and returns = advantages + values (0 off the mask).
  """
  m = mask.astype(jnp.float32)
  next_m = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
  next_v = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1) * next_m
  delta = rewards + gamma * next_v - values

  def step(carry, xs):
    d, nm, mm = xs
    a = mm * (d + gamma * lam * nm * carry)
    return a, a

  _, adv = jax.lax.scan(step, jnp.zeros(rewards.shape[0], jnp.float32),
                        (delta.T, next_m.T, m.T), reverse=True)
  adv = adv.T
  return adv, jnp.where(mask, adv + values, 0.0)


def ppo_policy_loss(log_probs: jax.Array, old_log_probs: jax.Array, advantages: jax.Array,
                    mask: jax.Array, clip_eps) -> tuple[jax.Array, jax.Array]:
  """Clipped surrogate: masked mean of max(−A·ρ, −A·clip(ρ, 1 ± ε)), ρ = exp(lp − lp_old).

  Returns (loss, clip fraction: the share of tokens where the clipped term is the larger).
  """
  ratio = jnp.exp(log_probs - old_log_probs)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  clipfrac = masked_mean((clipped > unclipped).astype(jnp.float32), mask)
  return loss, clipfrac


def ppo_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array,
                   mask: jax.Array, clip_value) -> tuple[jax.Array, jax.Array]:
  """0.5 · masked mean of max((V − R)², (clip(V, V_old ± c) − R)²); and its clip fraction
  (the share of tokens where V was clipped and the clipped term is the larger)."""
  clipped_v = old_values + jnp.clip(values - old_values, -clip_value, clip_value)
  l1 = jnp.square(values - returns)
  l2 = jnp.square(clipped_v - returns)
  loss = 0.5 * masked_mean(jnp.maximum(l1, l2), mask)
  was_clipped = jnp.abs(values - old_values) > clip_value
  return loss, masked_mean((was_clipped & (l2 > l1)).astype(jnp.float32), mask)
