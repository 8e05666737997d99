"""PPO for KL-regularised RL: clipped ratio, a value head, GAE (the option beside RLOO).

Per-token reward on the response (sampled-token KL at temperature T):

    r_t = −β·(log π_old(y_t|…) − log π_sft(y_t|…)) + [t = last] · r(x, y)

Advantages by GAE(γ, λ) against a value model V (a `ScalarHeadModel`, its value of the state
before token t is read at slot t − 1), whitened over the batch; the update minimises

    clipped surrogate(ρ = π/π_old, ε)  +  vf_coef · ½·max((V − R)², (clip(V, V_old ± c) − R)²)

    trainer = PPOTrainer(policy, value_model, optimizer, ref_model=sft, reward_model=rm,
                         beta=0.05, max_new_tokens=32)
    state = trainer.init_state()
    state, metrics = trainer.step(state, prompts, rng)   # rollout → experience → epochs updates

`train_step(state, batch, rng)` is pure and jitted once; β, T, γ, λ_gae, ε, c and vf_coef are
traced `state.hparams`. Each `step` runs `epochs` full-batch updates on one rollout
(no minibatching).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from dera_jax.models.heads import ScalarHeadModel, last_index
from dera_jax.models.transformer import positions_from_mask
from dera_jax.training import common
from dera_jax.training.lora import LoRAConfig
from dera_jax.training.losses import (gae, masked_mean, masked_whiten, ppo_policy_loss,
                                      ppo_value_loss, token_kl)
from dera_jax.training.rollout import PolicyTrainerBase, RewardFn, response_log_probs


def _response_values(value_model, tokens, mask, m: int):
  """[N, M] value of the state before each response token (slot P + j − 1)."""
  mask = jnp.asarray(mask, bool)
  v = value_model.values(tokens, positions_from_mask(mask), mask)
  return v[:, :-1][:, -m:]


class PPOTrainer(PolicyTrainerBase):
  """KL-regularised PPO with a separate value model. Args as `RLOOTrainer`, plus:

  Args:
    value_model: a `ScalarHeadModel` (e.g. initialised from the reward model), trained
      beside the policy (with `value_lora` if given).
    gamma, lam: GAE discount and λ_gae in [0, 1].
    clip_eps: ratio clip ε > 0.  clip_value: value clip c > 0.  vf_coef: value-loss weight.
    epochs: updates per rollout.
    whiten_advantages: normalise advantages to mean 0 / std 1 over the batch's tokens.
  """

  def __init__(self, policy, value_model: ScalarHeadModel, optimizer: optax.GradientTransformation,
               *, ref_model=None, reward_model=None, reward_fn: RewardFn | None = None,
               beta: float, temperature: float = 1.0, max_new_tokens: int, stop_ids=(),
               pad_id: int = 0, top_k: int = 0, top_p: float = 1.0, gamma: float = 1.0,
               lam: float = 0.95, clip_eps: float = 0.2, clip_value: float = 0.2,
               vf_coef: float = 0.1, epochs: int = 1, whiten_advantages: bool = True,
               lora: LoRAConfig | None = None, value_lora: LoRAConfig | None = None,
               rng: jax.Array | None = None):
    if not isinstance(value_model, ScalarHeadModel):
      raise ValueError(f"value_model must be a ScalarHeadModel, got {type(value_model).__name__}")
    for name, v in (("gamma", gamma), ("lam", lam)):
      if not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"{name}={v!r}: must be in [0, 1]")
    for name, v in (("clip_eps", clip_eps), ("clip_value", clip_value), ("vf_coef", vf_coef)):
      common.check_positive(name, v)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
      raise ValueError(f"epochs={epochs!r}: must be a positive integer")
    self.optimizer, self.epochs, self.whiten = optimizer, epochs, bool(whiten_advantages)
    policy_params, frozen = self._setup(
        policy, ref_model=ref_model, reward_model=reward_model, reward_fn=reward_fn, beta=beta,
        temperature=temperature, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
        pad_id=pad_id, top_k=top_k, top_p=top_p, lora=lora, rng=rng)
    if value_lora is not None and "head" not in value_lora.train_also:
      value_lora = dataclasses.replace(value_lora, train_also=(*value_lora.train_also, "head"))
    self.value_spec, value_params, value_frozen = common.prepare_model(value_model, value_lora,
                                                                       rng=rng)
    self._params = {"policy": policy_params, "value": value_params}
    self._frozen = dict(frozen, value=value_frozen)
    self._hparams = {"beta": self.beta, "temperature": self.temperature, "gamma": gamma,
                     "lam": lam, "clip_eps": clip_eps, "clip_value": clip_value,
                     "vf_coef": vf_coef}
    self._train_jit = jax.jit(self._train_step)
    self._experience = jax.jit(self._experience_fn)

  def init_state(self) -> common.TrainerState:
    return common.new_state(self._params, self.optimizer, self._frozen, self._hparams)

  def _policy_params(self, state):
    return state.params["policy"]

  def value_model(self, state: common.TrainerState) -> ScalarHeadModel:
    return self.value_spec.export(state.params["value"], state.frozen["value"])

  def _experience_fn(self, state: common.TrainerState, batch):
    common.TRACE_COUNTS["ppo_experience"] += 1
    hp, fr = state.hparams, state.frozen
    rmask = batch["response_mask"]
    m = rmask.shape[1]
    policy = self.spec.build(state.params["policy"], fr["policy"])
    old_lp = response_log_probs(policy, batch["tokens"], batch["mask"], m, hp["temperature"])
    ref_lp = response_log_probs(self._ref_model(fr), batch["tokens"], batch["mask"], m,
                                hp["temperature"])
    values = _response_values(self.value_spec.build(state.params["value"], fr["value"]),
                              batch["tokens"], batch["mask"], m)
    values = jnp.where(rmask, values, 0.0)
    scores = self._scores(fr, batch)
    rewards = jnp.where(rmask, -hp["beta"] * (old_lp - ref_lp), 0.0)
    last = jax.nn.one_hot(last_index(rmask), m, dtype=jnp.float32)
    rewards = rewards + last * scores[:, None]
    adv, returns = gae(rewards, values, rmask, hp["gamma"], hp["lam"])
    if self.whiten:
      adv = masked_whiten(adv, rmask)
    return dict(batch, old_logprobs=old_lp, ref_logprobs=ref_lp, old_values=values,
                advantages=adv, returns=returns, scores=scores)

  def _train_step(self, state: common.TrainerState, batch):
    """One PPO update on an experience batch; pure and jitted."""
    common.TRACE_COUNTS["ppo_step"] += 1
    hp, fr = state.hparams, state.frozen
    rmask = batch["response_mask"]
    m = rmask.shape[1]

    def loss_fn(params):
      policy = self.spec.build(params["policy"], fr["policy"])
      lp, ent = response_log_probs(policy, batch["tokens"], batch["mask"], m, hp["temperature"],
                                   entropy=True)
      values = _response_values(self.value_spec.build(params["value"], fr["value"]),
                                batch["tokens"], batch["mask"], m)
      pg_loss, clipfrac = ppo_policy_loss(lp, batch["old_logprobs"], batch["advantages"],
                                          rmask, hp["clip_eps"])
      vf_loss, vf_clipfrac = ppo_value_loss(values, batch["old_values"], batch["returns"],
                                            rmask, hp["clip_value"])
      loss = pg_loss + hp["vf_coef"] * vf_loss
      kl = token_kl(batch["old_logprobs"], batch["ref_logprobs"], rmask)
      metrics = {"loss": loss, "policy_loss": pg_loss, "value_loss": vf_loss,
                 "clipfrac": clipfrac, "value_clipfrac": vf_clipfrac,
                 "approx_kl": masked_mean(batch["old_logprobs"] - lp, rmask),
                 "reward": batch["scores"].mean(), "kl": kl.mean(),
                 "rlhf_reward": (batch["scores"] - hp["beta"] * kl).mean(),
                 "entropy": masked_mean(ent, rmask),
                 "length": rmask.sum(-1).astype(jnp.float32).mean()}
      return loss, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   finite=common.finite_flag(loss, grads))
    return common.apply_gradients(state, self.optimizer, grads), metrics

  def step(self, state: common.TrainerState, prompt_batch: Mapping, rng: jax.Array):
    """One PPO iteration: rollout (one sample per prompt) → experience → `epochs` updates.
    Returns the metrics of the last update."""
    rng_sample, rng_step = jax.random.split(rng)
    batch = self.experience(state, self.rollout(state, prompt_batch, rng_sample))
    for e in range(self.epochs):
      state, metrics = self.train_step(state, batch, jax.random.fold_in(rng_step, e))
    return state, metrics
