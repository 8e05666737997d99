"""LoRA on the stacked layer weights of `Transformer` (and of models that hold one).

Our decoder stores each projection of all L layers as one stacked array (see
`dera_jax.models.weights`): q [L, D, H, hd], k/v [L, D, KV, hd], o [L, H, hd, D],
gate/up [L, D, F], down [L, F, D]. A LoRA adapter of a projection W with input axes I and
output axes O is a pair

    A [L, *I, r]   (normal, std 1/sqrt(|I|))      B [L, r, *O]   (zeros)

and the effective weight is W + (alpha / r) · A·B, computed per layer by one einsum. Nothing in
the model changes: `merge_lora(base_state, adapters, config)` returns an ordinary `nnx.State`
with the effective weights, which `nnx.merge` turns back into a model that runs the same forward
(and that the sampler can use). Gradients reach only the adapters (and the params named in
`train_also`, e.g. a reward model's `head`), because only they are differentiated; the base
weights are a constant input of the step.

    cfg = LoRAConfig(rank=8, alpha=16, targets=("q", "v"))
    adapters = init_lora(base_params, cfg, jax.random.key(0))
    model = nnx.merge(graphdef, merge_lora(base_params, adapters, cfg), rest)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
_INPUT_AXES = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
  """Which projections get adapters, their rank and scale.

  Attributes:
    rank: r ≥ 1.
    alpha: the delta is scaled by alpha / rank (> 0).
    targets: a non-empty subset of ("q", "k", "v", "o", "gate", "up", "down").
    train_also: dotted path prefixes of parameters trained in full beside the adapters
      (e.g. ("head",) for a reward or value head); everything else stays frozen.
  """
  rank: int
  alpha: float
  targets: tuple[str, ...] = ("q", "k", "v", "o")
  train_also: tuple[str, ...] = ()

  def __post_init__(self):
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"LoRAConfig.rank={self.rank!r}: must be a positive integer")
    if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)
            and self.alpha > 0):
      raise ValueError(f"LoRAConfig.alpha={self.alpha!r}: must be a finite number > 0")
    targets = tuple(self.targets)
    bad = [t for t in targets if t not in PROJECTIONS]
    if not targets or bad:
      raise ValueError(f"LoRAConfig.targets={self.targets!r}: must be a non-empty subset of "
                       f"{PROJECTIONS}")
    object.__setattr__(self, "targets", targets)
    object.__setattr__(self, "train_also", tuple(self.train_also))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _name(path) -> str:
  return ".".join(map(str, path))


def lora_targets(base: nnx.State, config: LoRAConfig) -> dict[str, tuple[int, ...]]:
  """dotted name -> shape of every stacked projection the config adapts (…layers.<proj>)."""
  out = {}
  for path, var in nnx.to_flat_state(base):
    if len(path) >= 2 and str(path[-2]) == "layers" and str(path[-1]) in config.targets:
      out[_name(path)] = tuple(var.get_value().shape)
  if not out:
    raise ValueError(f"LoRAConfig.targets={config.targets}: no stacked `layers.<projection>` "
                     "parameter of the model matches")
  return out


def _split_shape(name: str, shape: tuple[int, ...]):
  n_in = _INPUT_AXES[name.rsplit(".", 1)[-1]]
  return shape[0], shape[1:1 + n_in], shape[1 + n_in:]


def init_lora(base: nnx.State, config: LoRAConfig, rng: jax.Array) -> dict:
  """The trainable pytree: {"lora": {name: {"a", "b"}}, "full": {name: array}}.

  B is zero, so the merged model equals the base model until the first update.
  """
  adapters = {}
  targets = lora_targets(base, config)
  for i, (name, shape) in enumerate(sorted(targets.items())):
    layers, ins, outs = _split_shape(name, shape)
    fan_in = math.prod(ins)
    a = jax.random.normal(jax.random.fold_in(rng, i), (layers, *ins, config.rank), jnp.float32)
    adapters[name] = {"a": a / math.sqrt(fan_in),
                      "b": jnp.zeros((layers, config.rank, *outs), jnp.float32)}
  full = {}
  for path, var in nnx.to_flat_state(base):
    name = _name(path)
    if any(name == p or name.startswith(p + ".") for p in config.train_also):
      full[name] = var.get_value()
  missing = [p for p in config.train_also
             if not any(n == p or n.startswith(p + ".") for n in full)]
  if missing:
    raise ValueError(f"LoRAConfig.train_also={config.train_also}: no parameter under {missing}")
  return {"lora": adapters, "full": full}


def lora_delta(a: jax.Array, b: jax.Array, scale) -> jax.Array:
  """(scale) · A·B per layer: A [L, *I, r], B [L, r, *O] -> [L, *I, *O] float32."""
  layers, rank = a.shape[0], a.shape[-1]
  ins, outs = a.shape[1:-1], b.shape[2:]
  delta = jnp.einsum("lir,lro->lio", a.reshape(layers, -1, rank).astype(jnp.float32),
                     b.reshape(layers, rank, -1).astype(jnp.float32))
  return (scale * delta).reshape(layers, *ins, *outs)


def merge_lora(base: nnx.State, trainable: dict, config: LoRAConfig) -> nnx.State:
  """base weights with W ← W + (alpha/r)·A·B for every adapter and the `full` replacements.

  Traceable (use it inside the jitted step) and exact when B == 0.
  """
  adapters, full = trainable["lora"], trainable.get("full", {})
  flat = []
  for path, var in nnx.to_flat_state(base):
    name = _name(path)
    if name in adapters:
      w = var.get_value()
      delta = lora_delta(adapters[name]["a"], adapters[name]["b"], config.scale)
      var = var.replace((w.astype(jnp.float32) + delta).astype(w.dtype))
    elif name in full:
      var = var.replace(full[name])
    flat.append((path, var))
  return nnx.from_flat_state(flat)


def lora_param_count(trainable: dict) -> int:
  """Number of scalars in a LoRA trainable pytree."""
  return sum(int(x.size) for x in jax.tree.leaves(trainable))
