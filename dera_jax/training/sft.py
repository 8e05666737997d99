"""Supervised fine-tuning: next-token cross-entropy on response tokens only.

The step is a pure function `train_step(state, batch) -> (state, metrics)`, jitted once:
the model is split into (graphdef, params) with `nnx.split` and only params and optimizer
state travel through jit.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dera_jax.models.transformer import positions_from_mask


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SFTBatch:
  """A right-padded batch of prompt + response sequences.

  Attributes:
    tokens: [B, T] int32 token ids.
    mask: [B, T] bool, True on real tokens (prompt and response).
    loss_mask: [B, T] bool, True on the response tokens the loss is taken on.
  """
  tokens: jax.Array
  mask: jax.Array
  loss_mask: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  """params: the model's nnx.State; opt_state: optax state; step: [] int32."""
  params: nnx.State
  opt_state: optax.OptState
  step: jax.Array


def sft_loss(model, batch: SFTBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token negative log-likelihood over response tokens.

  Position t predicts token t + 1; the target counts when `loss_mask[:, t + 1]` is set.
  Returns (loss, {"loss", "tokens"}).
  """
  positions = positions_from_mask(batch.mask)
  logits, _ = model(batch.tokens, positions, batch.mask)
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  targets = batch.tokens[:, 1:]
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  weights = batch.loss_mask[:, 1:].astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  loss = (nll * weights).sum() / count
  return loss, {"loss": loss, "tokens": weights.sum()}


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation
                  ) -> Callable[[TrainState, SFTBatch], tuple[TrainState, dict]]:
  """A jitted `train_step(state, batch) -> (state, metrics)` for models of `graphdef`."""

  def loss_fn(params, batch):
    return sft_loss(nnx.merge(graphdef, params), batch)

  @jax.jit
  def train_step(state: TrainState, batch: SFTBatch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return TrainState(params=params, opt_state=opt_state, step=state.step + 1), metrics

  return train_step


def init_train_state(model, optimizer: optax.GradientTransformation
                     ) -> tuple[nnx.GraphDef, TrainState]:
  """Split `model` and initialise the optimizer: (graphdef, TrainState at step 0)."""
  graphdef, params = nnx.split(model)
  return graphdef, TrainState(params=params, opt_state=optimizer.init(params),
                              step=jnp.zeros((), jnp.int32))


def make_sft_eval_step(graphdef: nnx.GraphDef) -> Callable[[nnx.State, SFTBatch], dict]:
  """A jitted `eval_step(params, batch) -> {"loss", "perplexity", "tokens", "nll_sum"}`.

  `params` is `TrainState.params`; `batch` an `SFTBatch` or the data pipeline's dict
  (tokens, mask, loss_mask). The loss is the mean NLL over response tokens and the perplexity
  its exp; `nll_sum` and `tokens` let `sft_evaluate` weight batches by their token counts.
  """

  @jax.jit
  def eval_step(params, batch: SFTBatch):
    loss, metrics = sft_loss(nnx.merge(graphdef, params), batch)
    return {"loss": loss, "perplexity": jnp.exp(loss), "tokens": metrics["tokens"],
            "nll_sum": loss * metrics["tokens"]}

  def step(params, batch):
    if isinstance(batch, dict):
      batch = SFTBatch(tokens=jnp.asarray(batch["tokens"], jnp.int32),
                       mask=jnp.asarray(batch["mask"], bool),
                       loss_mask=jnp.asarray(batch["loss_mask"], bool))
    return eval_step(params, batch)

  return step


def sft_evaluate(eval_step, params, batches) -> dict[str, float]:
  """Token-weighted eval loss and perplexity over `batches` (from `make_sft_eval_step`)."""
  nll, tokens = 0.0, 0.0
  for batch in batches:
    m = jax.device_get(eval_step(params, batch))
    nll += float(m["nll_sum"])
    tokens += float(m["tokens"])
  if tokens == 0:
    raise ValueError("sft_evaluate: the eval batches hold no response tokens")
  loss = nll / tokens
  return {"loss": loss, "perplexity": float(jnp.exp(loss)), "tokens": tokens}
