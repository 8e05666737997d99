"""Direct preference optimisation at β against a frozen reference model.

    spec, state = init_dpo_state(policy, optimizer, beta=0.1)
    ref_logps = make_reference_fn(ref_model)                # jitted once
    batch = ref_logps(batch)                                # adds ref_chosen_logps / ref_rejected_logps
    state, metrics = train_step(state, batch, rng)          # β is state.hparams["beta"] (traced)

The reference log-probs are computed once per batch (`make_reference_fn`, or for a whole
dataset `precompute_reference`) and travel in the batch, so the step runs the policy only.
Sequence log-prob = Σ over response tokens (`*_loss_mask`) of log π(y_t | y_<t) at T = 1.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dera_jax.training import common
from dera_jax.training.lora import LoRAConfig
from dera_jax.training.losses import dpo_loss
from dera_jax.training.reward import PAIR_KEYS

REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


def response_logprob(model, tokens, mask, loss_mask, temperature=1.0) -> jax.Array:
  """[B] Σ_t log π(tokens_t | …) over the response tokens (loss_mask[:, t], t ≥ 1)."""
  lp = common.teacher_forced(model, tokens, mask, temperature)
  return jnp.sum(jnp.where(jnp.asarray(loss_mask, bool)[:, 1:], lp, 0.0), axis=-1)


def _pair_logprobs(model, batch):
  c = response_logprob(model, batch["chosen_tokens"], batch["chosen_mask"],
                       batch["chosen_loss_mask"])
  r = response_logprob(model, batch["rejected_tokens"], batch["rejected_mask"],
                       batch["rejected_loss_mask"])
  return c, r


def make_reference_fn(ref_model):
  """`add_reference(batch) -> batch` adding [B] ref_chosen_logps and ref_rejected_logps.

  The reference model's weights are captured once (split here, passed to one jitted function).
  """
  graphdef, ref_state = nnx.split(ref_model)

  @jax.jit
  def ref_logps(state, batch):
    common.TRACE_COUNTS["dpo_reference"] += 1
    c, r = _pair_logprobs(nnx.merge(graphdef, state), batch)
    return {"ref_chosen_logps": c, "ref_rejected_logps": r}

  def add_reference(batch):
    arrays = common.as_arrays(batch, PAIR_KEYS, source="DPO reference")
    out = ref_logps(ref_state, arrays)
    return dict(batch, **{k: jax.device_get(v) for k, v in out.items()})

  return add_reference


def precompute_reference(ref_model, batches: Iterable) -> list[dict]:
  """Every batch with its reference log-probs added (one pass of the reference model)."""
  add = make_reference_fn(ref_model)
  return [add(b) for b in batches]


def init_dpo_state(policy, optimizer: optax.GradientTransformation, *, beta: float,
                   lora: LoRAConfig | None = None, rng: jax.Array | None = None
                   ) -> tuple[common.ModelSpec, common.TrainerState]:
  """(spec, state at step 0) with hparams {"beta"}; β ≤ 0 is a ValueError."""
  beta = common.check_positive("beta", beta)
  spec, params, frozen = common.prepare_model(policy, lora, rng=rng)
  return spec, common.new_state(params, optimizer, frozen, {"beta": beta})


def make_dpo_step(spec: common.ModelSpec, optimizer: optax.GradientTransformation):
  """Jitted `train_step(state, batch, rng) -> (state, metrics)`; the batch needs REF_KEYS."""

  def loss_fn(params, frozen, batch, beta):
    c, r = _pair_logprobs(spec.build(params, frozen), batch)
    loss, metrics = dpo_loss(c, r, batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta)
    return loss, dict(metrics, logp_chosen=c.mean(), logp_rejected=r.mean())

  @jax.jit
  def train_step(state: common.TrainerState, batch):
    common.TRACE_COUNTS["dpo_step"] += 1
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.frozen, batch, state.hparams["beta"])
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   finite=common.finite_flag(loss, grads))
    return common.apply_gradients(state, optimizer, grads), metrics

  def step(state, batch, rng=None):
    arrays = common.as_arrays(batch, PAIR_KEYS, source="DPO train_step")
    missing = [k for k in REF_KEYS if k not in batch]
    if missing:
      raise ValueError(f"DPO train_step: batch is missing {missing}; add them once per batch "
                       "with make_reference_fn(ref_model)(batch)")
    for k in REF_KEYS:
      arrays[k] = jnp.asarray(batch[k], jnp.float32)
    return train_step(state, arrays)

  step.jitted = train_step
  return step
