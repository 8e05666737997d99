"""What every alignment trainer shares: the trainable-model split, the train state with traced
hyper-parameters, teacher-forced log-probs, batch conversion and the NaN/inf guard.

A model enters a trainer through `prepare_model(model, lora=None)`, which returns a static
`ModelSpec` (closed over by the jitted step, never an argument) and two pytrees:

- `params`: what is differentiated and updated — every `nnx.Param` for full fine-tuning, or the
  LoRA adapters (+ `LoRAConfig.train_also` params) under LoRA;
- `frozen`: what the step reads but never updates — {"base": all Params under LoRA (else None),
  "rest": the non-Param variables, e.g. a reward head's normalisation constants}.

`spec.build(params, frozen)` turns them back into a module inside the step; `spec.export(...)`
gives an ordinary module with merged weights (for the sampler, checkpoints, DeRa).

Sweepable scalars (β, temperature, γ, …) live in `TrainerState.hparams` and the learning rate in
the `optax.inject_hyperparams` state, so changing any of them never recompiles.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dera_jax.models.transformer import positions_from_mask
from dera_jax.training import lora as lora_lib
from dera_jax.training.losses import entropy_from_logits, token_log_probs


# How many times each trainer's jitted step has been traced (== compiled), for tests.
TRACE_COUNTS: collections.Counter = collections.Counter()

# ----------------------------------------------------------------------------- model split


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
  """The static half of a trainable model: its graphdef and optional LoRA config."""
  graphdef: Any
  lora: lora_lib.LoRAConfig | None = None

  def state(self, params, frozen) -> tuple[nnx.State, nnx.State]:
    """(Param state with LoRA merged in, rest)."""
    weights = params if self.lora is None else lora_lib.merge_lora(frozen["base"], params,
                                                                   self.lora)
    return weights, frozen["rest"]

  def build(self, params, frozen):
    """The module for (params, frozen); traceable (use inside jit)."""
    return nnx.merge(self.graphdef, *self.state(params, frozen))

  def export(self, params, frozen):
    """An ordinary module with merged weights, outside jit (for samplers and checkpoints)."""
    return nnx.merge(self.graphdef, *jax.device_get(self.state(params, frozen)))


def prepare_model(model, lora: lora_lib.LoRAConfig | None = None, *,
                  rng: jax.Array | None = None) -> tuple[ModelSpec, Any, dict]:
  """Split `model` into (ModelSpec, params, frozen); see the module docstring."""
  graphdef, weights, rest = nnx.split(model, nnx.Param, ...)
  if lora is None:
    return ModelSpec(graphdef), weights, {"base": None, "rest": rest}
  if rng is None:
    rng = jax.random.key(0)
  params = lora_lib.init_lora(weights, lora, rng)
  return ModelSpec(graphdef, lora), params, {"base": weights, "rest": rest}


# ----------------------------------------------------------------------------- train state


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainerState:
  """State of an alignment trainer (a pytree; every field is a traced input of the step).

  Attributes:
    params: the trainable pytree (see `prepare_model`); for PPO {"policy", "value"}.
    opt_state: optax state (learning rate inside, via `make_optimizer`).
    step: [] int32 updates done.
    frozen: pytrees read but not trained (LoRA base, reference/value/reward models, …).
    hparams: name -> [] float32 sweepable scalar (beta, temperature, gamma, …).
  """
  params: Any
  opt_state: optax.OptState
  step: jax.Array
  frozen: Any
  hparams: dict


def make_optimizer(learning_rate: float, *, weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, clip_norm: float | None = 1.0
                   ) -> optax.GradientTransformation:
  """AdamW (+ global-norm clipping) with a traced `learning_rate` (optax.inject_hyperparams)."""
  def chain(learning_rate, weight_decay):
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    return optax.chain(*parts, optax.adamw(learning_rate, b1=b1, b2=b2,
                                           weight_decay=weight_decay))
  return optax.inject_hyperparams(chain)(learning_rate=learning_rate,
                                         weight_decay=weight_decay)


def check_positive(name: str, value) -> float:
  """A finite number > 0, or a ValueError naming the field and value."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}={value!r}: must be a finite number > 0") from None
  if isinstance(value, bool) or not math.isfinite(v) or v <= 0:
    raise ValueError(f"{name}={value!r}: must be a finite number > 0")
  return v


def new_state(params, optimizer: optax.GradientTransformation, frozen, hparams: Mapping
              ) -> TrainerState:
  return TrainerState(params=params, opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), frozen=frozen,
                      hparams={k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()})


def set_hparam(state: TrainerState, name: str, value) -> TrainerState:
  """A copy of `state` with one traced scalar changed (no recompile).

  `name` is a key of `state.hparams` (beta, …) or an injected optimizer hyper-parameter
  (learning_rate, weight_decay). β must stay > 0.
  """
  if name == "beta":
    check_positive("beta", value)
  if name in state.hparams:
    hp = dict(state.hparams)
    hp[name] = jnp.asarray(value, jnp.float32)
    return dataclasses.replace(state, hparams=hp)
  injected = getattr(state.opt_state, "hyperparams", None)
  if injected is not None and name in injected:
    hyper = dict(injected)
    hyper[name] = jnp.asarray(value, jnp.asarray(injected[name]).dtype)
    return dataclasses.replace(state, opt_state=state.opt_state._replace(hyperparams=hyper))
  known = sorted(state.hparams) + sorted(injected or {})
  raise ValueError(f"set_hparam: unknown name {name!r}; this state has {known}")


def apply_gradients(state: TrainerState, optimizer, grads, **changes) -> TrainerState:
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return dataclasses.replace(state, params=params, opt_state=opt_state, step=state.step + 1,
                             **changes)


# ----------------------------------------------------------------------------- forward helpers



def teacher_forced(model, tokens: jax.Array, mask: jax.Array, temperature=1.0, *,
                   entropy: bool = False):
  """Per-token log-probs of tokens[:, 1:] given the prefix, at `temperature`.

  Returns [B, T−1] float32 log-probs (and [B, T−1] entropies when `entropy`); column t scores
  token t + 1.
  """
  mask = jnp.asarray(mask, bool)
  hidden, _ = model.features(tokens, positions_from_mask(mask), mask)
  logits = model.logits(hidden[:, :-1])
  lp = token_log_probs(logits, tokens[:, 1:], temperature)
  if entropy:
    return lp, entropy_from_logits(logits, temperature)
  return lp


# ----------------------------------------------------------------------------- batches


def as_arrays(batch: Mapping, keys: tuple[str, ...], *, source: str) -> dict[str, np.ndarray]:
  """Pick `keys` from a dict batch: ids as int32, masks as bool; names a missing key."""
  if not isinstance(batch, Mapping):
    raise ValueError(f"{source}: batch must be a dict with keys {keys}, got "
                     f"{type(batch).__name__}")
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(f"{source}: batch is missing {missing} (has {sorted(batch)})")
  out = {}
  for k in keys:
    dtype = np.int32 if k.endswith("tokens") else bool
    out[k] = np.asarray(batch[k]).astype(dtype) if not isinstance(batch[k], jax.Array) \
        else batch[k].astype(dtype)
  return out


# ----------------------------------------------------------------------------- NaN guard


class NonFiniteLossError(FloatingPointError):
  """A trainer's loss (or another watched metric) became NaN or infinite."""

  def __init__(self, step: int, name: str, value: float):
    super().__init__(f"step {step}: {name} is {value} (not finite); stop the run and keep the "
                     "last good checkpoint")
    self.step, self.name, self.value = step, name, value


def check_finite(metrics: Mapping, step: int, names: tuple[str, ...] = ("loss",)) -> None:
  """Raise `NonFiniteLossError(step, name, value)` if a watched metric is NaN/inf.

  Every trainer's metrics also carry `finite` (1.0 when loss and gradients are finite), so a
  loop can check one scalar; this helper reads `finite` too when present.
  """
  for name in names:
    if name in metrics:
      value = float(np.asarray(metrics[name]))
      if not math.isfinite(value):
        raise NonFiniteLossError(int(step), name, value)
  if "finite" in metrics and float(np.asarray(metrics["finite"])) != 1.0:
    raise NonFiniteLossError(int(step), "gradients", float("nan"))


def finite_flag(loss, grads) -> jax.Array:
  """1.0 when the loss and every gradient entry are finite, else 0.0."""
  ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
  return ok.astype(jnp.float32)
