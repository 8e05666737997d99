"""RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt (the default RL).

Objective per sample i of a prompt (KL in the reward, sampled-token estimate at temperature T):

    R_i = r(x, y_i) − β · Σ_t [log π(y_it|…) − log π_sft(y_it|…)]
    A_i = R_i − mean_{j≠i} R_j,      loss = −mean_i A_i · Σ_t log π(y_it|…)

    trainer = RLOOTrainer(policy, optimizer, ref_model=sft, reward_model=rm, beta=0.05, k=4,
                          max_new_tokens=32, stop_ids=[eos])
    state = trainer.init_state()
    state, metrics = trainer.step(state, {"prompt_tokens": ..., "prompt_mask": ...}, rng)

`trainer.step` = `rollout` (host: a fresh Sampler on the current weights) → `experience`
(jitted: reference log-probs and rewards) → `train_step` (jitted, pure:
`(state, batch, rng) -> (state, metrics)`, compiled once; β and T are traced `state.hparams`,
the learning rate is in the optimizer state).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from dera_jax.training import common
from dera_jax.training.lora import LoRAConfig
from dera_jax.training.losses import (masked_mean, rloo_advantages, rloo_loss, token_kl)
from dera_jax.training.rollout import PolicyTrainerBase, RewardFn, check_k, response_log_probs


class RLOOTrainer(PolicyTrainerBase):
  """KL-regularised RLOO. See the module docstring.

  Args:
    policy: the model to train (a `Transformer`), usually a copy of the SFT model.
    optimizer: e.g. `common.make_optimizer(lr)`.
    ref_model: the SFT model π_sft (None only with LoRA: then the frozen base is π_sft).
    reward_model: a `ScalarHeadModel`, or instead
    reward_fn: host-side `(prompt_tokens, prompt_mask, response_tokens, lengths) -> [N]`.
    beta: KL strength β > 0 (traced: `set_hparam(state, "beta", b)`).
    k: samples per prompt, ≥ 2.
    temperature: sampling temperature > 0; the KL and policy log-probs use logits / T.
    max_new_tokens, stop_ids, pad_id, top_k, top_p: rollout settings.
    lora: train LoRA adapters instead of all weights.
  """

  def __init__(self, policy, optimizer: optax.GradientTransformation, *, ref_model=None,
               reward_model=None, reward_fn: RewardFn | None = None, beta: float, k: int = 4,
               temperature: float = 1.0, max_new_tokens: int, stop_ids=(), pad_id: int = 0,
               top_k: int = 0, top_p: float = 1.0, lora: LoRAConfig | None = None,
               rng: jax.Array | None = None):
    self.k = check_k(k)
    self.rows_per_prompt = self.k
    self.optimizer = optimizer
    self._params, self._frozen = self._setup(
        policy, ref_model=ref_model, reward_model=reward_model, reward_fn=reward_fn, beta=beta,
        temperature=temperature, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
        pad_id=pad_id, top_k=top_k, top_p=top_p, lora=lora, rng=rng)
    self._train_jit = jax.jit(self._train_step)
    self._experience = jax.jit(self._experience_fn)

  def init_state(self) -> common.TrainerState:
    return common.new_state(self._params, self.optimizer, self._frozen,
                            {"beta": self.beta, "temperature": self.temperature})

  def _experience_fn(self, state: common.TrainerState, batch):
    common.TRACE_COUNTS["rloo_experience"] += 1
    m = batch["response_mask"].shape[1]
    ref_lp = response_log_probs(self._ref_model(state.frozen), batch["tokens"], batch["mask"],
                                m, state.hparams["temperature"])
    return dict(batch, ref_logprobs=ref_lp, scores=self._scores(state.frozen, batch))

  def _train_step(self, state: common.TrainerState, batch):
    """One RLOO update on an experience batch (tokens, mask, response_mask, ref_logprobs,
    scores); pure and jitted."""
    common.TRACE_COUNTS["rloo_step"] += 1
    hp = state.hparams
    rmask = batch["response_mask"]
    m = rmask.shape[1]

    def loss_fn(params):
      model = self.spec.build(params, state.frozen["policy"])
      lp, ent = response_log_probs(model, batch["tokens"], batch["mask"], m, hp["temperature"],
                                   entropy=True)
      seq_lp = jnp.sum(jnp.where(rmask, lp, 0.0), axis=-1)
      kl = token_kl(jax.lax.stop_gradient(lp), batch["ref_logprobs"], rmask)
      total = batch["scores"] - hp["beta"] * kl
      adv = rloo_advantages(total, self.k)
      loss = rloo_loss(seq_lp, adv)
      metrics = {"loss": loss, "reward": batch["scores"].mean(), "kl": kl.mean(),
                 "rlhf_reward": total.mean(), "entropy": masked_mean(ent, rmask),
                 "length": rmask.sum(-1).astype(jnp.float32).mean(),
                 "advantage_std": adv.std()}
      return loss, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   finite=common.finite_flag(loss, grads))
    return common.apply_gradients(state, self.optimizer, grads), metrics

  def step(self, state: common.TrainerState, prompt_batch: Mapping, rng: jax.Array):
    """One RLOO iteration: rollout (k per prompt) → experience → one update."""
    rng_sample, rng_step = jax.random.split(rng)
    batch = self.experience(state, self.rollout(state, prompt_batch, rng_sample))
    return self.train_step(state, batch, rng_step)
