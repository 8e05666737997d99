"""Reward model training: Bradley–Terry on preference pairs, read at the last response token.

    spec, state = init_reward_state(ScalarHeadModel(trunk, rngs=rngs), make_optimizer(1e-4))
    train_step = make_reward_step(spec, optimizer)       # (state, batch, rng) -> (state, metrics)
    eval_step = make_reward_eval_step(spec)               # (state, batch) -> metrics (accuracy)
    state = normalize_rewards(spec, state, sft_sample_batches)   # mean 0 / std 1 on SFT samples
    reward_model = spec.export(state.params, state.frozen)

Batches are the data pipeline's preference dicts: chosen_tokens / chosen_mask /
chosen_loss_mask and the same for rejected, [B, T] right-padded. The reward of a sequence is
the head's output at its last response token (last True of `*_loss_mask`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dera_jax.models.heads import ScalarHeadModel, last_index
from dera_jax.training import common
from dera_jax.training.lora import LoRAConfig
from dera_jax.training.losses import bradley_terry_loss

PAIR_KEYS = ("chosen_tokens", "chosen_mask", "chosen_loss_mask", "rejected_tokens",
             "rejected_mask", "rejected_loss_mask")
SFT_KEYS = ("tokens", "mask", "loss_mask")


def _score(model, tokens, mask, loss_mask):
  return model.score(tokens, mask, last_index(loss_mask))


def reward_loss(model, batch) -> tuple[jax.Array, dict]:
  """Bradley–Terry loss of a `ScalarHeadModel` on a preference batch; (loss, metrics)."""
  r_c = _score(model, batch["chosen_tokens"], batch["chosen_mask"], batch["chosen_loss_mask"])
  r_r = _score(model, batch["rejected_tokens"], batch["rejected_mask"],
               batch["rejected_loss_mask"])
  loss, acc = bradley_terry_loss(r_c, r_r)
  return loss, {"loss": loss, "accuracy": acc, "reward_chosen": r_c.mean(),
                "reward_rejected": r_r.mean(), "margin": (r_c - r_r).mean()}


def init_reward_state(model: ScalarHeadModel, optimizer: optax.GradientTransformation, *,
                      lora: LoRAConfig | None = None, rng: jax.Array | None = None
                      ) -> tuple[common.ModelSpec, common.TrainerState]:
  """(spec, state at step 0). Under LoRA the head is trained in full (train_also ⊇ "head")."""
  if not isinstance(model, ScalarHeadModel):
    raise ValueError(f"init_reward_state: model must be a ScalarHeadModel, got "
                     f"{type(model).__name__}")
  if lora is not None and "head" not in lora.train_also:
    lora = dataclasses.replace(lora, train_also=(*lora.train_also, "head"))
  spec, params, frozen = common.prepare_model(model, lora, rng=rng)
  return spec, common.new_state(params, optimizer, frozen, {})


def make_reward_step(spec: common.ModelSpec, optimizer: optax.GradientTransformation):
  """Jitted `train_step(state, batch, rng) -> (state, metrics)` (rng unused: no dropout)."""

  def loss_fn(params, frozen, batch):
    return reward_loss(spec.build(params, frozen), batch)

  @jax.jit
  def train_step(state: common.TrainerState, batch):
    common.TRACE_COUNTS["reward_step"] += 1
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.frozen, batch)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   finite=common.finite_flag(loss, grads))
    return common.apply_gradients(state, optimizer, grads), metrics

  def step(state, batch, rng=None):
    return train_step(state, common.as_arrays(batch, PAIR_KEYS, source="reward train_step"))

  step.jitted = train_step
  return step


def make_reward_eval_step(spec: common.ModelSpec):
  """Jitted `eval_step(state, batch) -> metrics` on held-out pairs (loss, accuracy, …)."""

  @jax.jit
  def eval_step(state: common.TrainerState, batch):
    return reward_loss(spec.build(state.params, state.frozen), batch)[1]

  def step(state, batch):
    return eval_step(state, common.as_arrays(batch, PAIR_KEYS, source="reward eval_step"))

  return step


def make_score_fn(spec: common.ModelSpec):
  """Jitted `score(params, frozen, tokens, mask, loss_mask) -> [B]` rewards."""
  @jax.jit
  def score(params, frozen, tokens, mask, loss_mask):
    return _score(spec.build(params, frozen), tokens, mask, loss_mask)
  return score


def normalize_rewards(spec: common.ModelSpec, state: common.TrainerState,
                      batches: Iterable) -> common.TrainerState:
  """Set the head's (shift, scale) so rewards on `batches` have mean 0 and std 1.

  `batches` are SFT-format dicts (tokens, mask, loss_mask), e.g. SFT-policy samples. The
  constants are stored in the model (`ScalarHeadModel.shift/scale`, in `state.frozen["rest"]`),
  so an exported reward model carries them.
  """
  # Raw scores: evaluate with the identity normalisation.
  rest = state.frozen["rest"]
  identity = _set_norm(rest, 0.0, 1.0)
  frozen = dict(state.frozen, rest=identity)
  score = make_score_fn(spec)
  raw = []
  for batch in batches:
    b = common.as_arrays(batch, SFT_KEYS, source="normalize_rewards")
    raw.append(np.asarray(score(state.params, frozen, b["tokens"], b["mask"], b["loss_mask"])))
  if not raw:
    raise ValueError("normalize_rewards: batches is empty; it needs at least one SFT batch")
  raw = np.concatenate(raw).astype(np.float64)
  std = raw.std()
  if not std > 0:
    raise ValueError(f"normalize_rewards: the {raw.size} rewards have std {std}: cannot scale")
  return dataclasses.replace(state, frozen=dict(state.frozen,
                                                rest=_set_norm(rest, raw.mean(), std)))


def _set_norm(rest: nnx.State, shift, scale) -> nnx.State:
  flat = []
  for path, var in nnx.to_flat_state(rest):
    if path[-1] == "shift":
      var = var.replace(jnp.asarray(shift, jnp.float32))
    elif path[-1] == "scale":
      var = var.replace(jnp.asarray(scale, jnp.float32))
    flat.append((path, var))
  return nnx.from_flat_state(flat)
