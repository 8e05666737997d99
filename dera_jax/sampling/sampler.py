"""The jitted DeRa sampler: two models, one decode loop, many λ.

    sampler = DeRaSampler(sft, aligned, max_prompt_len=64, max_new_tokens=32, stop_ids=[eos])
    out = sampler(prompts, lambdas=[0.5, 2.0], seed=0)          # one λ per prompt
    sweep = sampler.sweep(prompts, lambdas=[0, 0.5, 1, 2], seed=0)  # [K, N, ...] outputs

How a call runs:
1. prompts are left-padded to `max_prompt_len` (a fixed shape: no recompiles across batches);
2. `_prefill` runs both models over the prompts once and keeps their KV caches;
3. for a sweep, the caches are tiled K times (`_tile`), one copy per λ;
4. `_decode` (caches donated) loops over up to `max_new_tokens` steps. Per step: both models'
   log-softmax (float32) → mix with each row's λ → temperature → top-k / top-p → draw with a
   key folded from (seed, row id, step) → feed the token back. Rows stop at any stop id and then
   emit `pad_id`; once every row has stopped, the loop ends (no more model calls).

Models: any NNX module with `vocab_size`, `init_cache(batch_size, max_len)` (a pytree with
`.repeat(k)`) and `__call__(tokens, positions, mask, cache) -> (logits, cache)`;
`dera_jax.models.Transformer` is one. A model with a `for_decoding()` method (a copy of itself
laid out for token-by-token decoding; `Transformer`'s has one buffer per layer) is decoded
through that copy, made at construction and at `update_weights`. Two models of one
architecture can run as one vmapped call over their stacked weights (`stack_models`; this holds
a stacked copy of both models' weights); otherwise, and by default on CPU, the two models are
two calls in the same step. With `pair_devices=(d0, d1)` the SFT model lives and runs on d0 and
the aligned model on d1, side by side (a `shard_map` over a two-device "pair" mesh axis); only
the [N, V] log-probs cross between the devices each step.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dera_jax.models.transformer import positions_from_mask
from dera_jax.sampling import filters, inputs
from dera_jax.sampling.mixing import mix_log_probs

# How many times each jitted function has been traced (== compiled), for tests and benchmarks.
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class _Spec:
  """The static half of the compiled functions (hashable)."""
  mode: str  # "single" | "stacked" | "pair"
  graphdefs: tuple
  vocab: int  # number of vocabulary columns sampled from
  max_len: int  # cache slots: max_prompt_len + max_new_tokens
  max_new_tokens: int
  stop_ids: tuple[int, ...]
  pad_id: int
  model_axes: tuple[int, ...] = ()  # "stacked": the model axis of each state leaf
  mesh: Mesh | None = None  # pair_devices: a 1-D mesh, axis "pair", one model per device


@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """What a sampler returns (NumPy arrays; a sweep adds a leading λ axis K).

  Attributes:
    tokens: [..., N, M] int32 new tokens, `pad_id` after a row's stop token.
    lengths: [..., N] int32 new tokens per row, the stop token included.
    logprobs: [..., N, M] float32 log-prob of each token under the sampled policy (the mixture,
      at the sampling temperature, before top-k / top-p; temperature 1 when greedy); 0 past
      the length.
    sft_logprobs: [..., N, M] the same under the SFT model alone (None for one model).
    aligned_logprobs: [..., N, M] under the aligned model alone (None for one model).
    lambdas: [..., N] the λ of each row (None for one model).
    row_ids: [N] the row ids whose keys drew each row.
  """

  tokens: np.ndarray
  lengths: np.ndarray
  logprobs: np.ndarray
  sft_logprobs: np.ndarray | None
  aligned_logprobs: np.ndarray | None
  lambdas: np.ndarray | None
  row_ids: np.ndarray

  def sequence_logprobs(self) -> np.ndarray:
    """[..., N] log p_λ(y|x): what the policy that produced y assigns it."""
    return self.logprobs.sum(-1)

  def sft_sequence_logprobs(self) -> np.ndarray:
    """[..., N] log π_sft(y|x)."""
    return self._two_models("sft_logprobs").sum(-1)

  def aligned_sequence_logprobs(self) -> np.ndarray:
    """[..., N] log π_aligned(y|x)."""
    return self._two_models("aligned_logprobs").sum(-1)

  def _two_models(self, field: str) -> np.ndarray:
    value = getattr(self, field)
    if value is None:
      raise ValueError(f"{field} is only recorded by DeRaSampler; this output comes from a "
                       "single-model Sampler")
    return value

  def kl_to_sft(self) -> np.ndarray:
    """[...] Monte-Carlo KL(p_λ ‖ π_sft): mean over rows of log p_λ(y|x) − log π_sft(y|x)."""
    return (self.sequence_logprobs() - self.sft_sequence_logprobs()).mean(-1)

  def token_lists(self) -> list:
    """The new tokens of each row, cut at its length (nested like the leading axes)."""
    def cut(tokens, lengths):
      if tokens.ndim == 1:
        return tokens[:int(lengths)].tolist()
      return [cut(t, n) for t, n in zip(tokens, lengths)]
    return cut(self.tokens, self.lengths)


# ----------------------------------------------------------------------------- jitted core


def _last_log_probs(graphdef, state, tokens, positions, mask, cache):
  """One model on a chunk -> float32 log-softmax at the chunk's last slot [N, V], cache."""
  model = nnx.merge(graphdef, state)
  if _accepts_last_only(type(model)):  # skip the [T, V] logits of all but the last slot
    logits, cache = model(tokens, positions, mask, cache, last_only=True)
  else:
    logits, cache = model(tokens, positions, mask, cache)
  return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1), cache


@functools.cache
def _accepts_last_only(model_type) -> bool:
  return "last_only" in inspect.signature(model_type.__call__).parameters


def _run_models(spec: _Spec, states, caches, tokens, positions, mask):
  """All models on a chunk -> log-probs [n_models, N, spec.vocab] and their caches."""
  if spec.mode == "stacked":
    axes = jax.tree.unflatten(jax.tree.structure(states), spec.model_axes)
    if spec.mesh is not None:
      lp, caches = _run_on_pair_devices(spec, axes, states, caches, tokens, positions, mask)
    else:
      fn = functools.partial(_last_log_probs, spec.graphdefs[0])
      lp, caches = jax.vmap(fn, in_axes=(axes, None, None, None, 0))(
          states, tokens, positions, mask, caches)
    return lp[..., :spec.vocab], caches
  outs = [_last_log_probs(g, s, tokens, positions, mask, c)
          for g, s, c in zip(spec.graphdefs, states, caches)]
  lp = jnp.stack([o[0][..., :spec.vocab] for o in outs])
  return lp, tuple(o[1] for o in outs)


def _pair_spec(axis: int, ndim: int) -> PartitionSpec:
  """A leaf's partition over the "pair" mesh axis: its model axis split, one model per device."""
  return PartitionSpec(*[("pair" if i == axis else None) for i in range(ndim)])


def _run_on_pair_devices(spec: _Spec, axes, states, caches, tokens, positions, mask):
  """`_run_models` for stacked states split over `spec.mesh` (`axes`: each leaf's model axis):
  each device runs its own model (a `shard_map`, so neither device sees the other's weights).
  -> lp [2, N, V], caches."""
  state_specs = jax.tree.map(lambda axis, x: _pair_spec(axis, x.ndim), axes, states)
  cache_specs = jax.tree.map(lambda x: PartitionSpec("pair"), caches)

  def one_model(states, caches, tokens, positions, mask):
    state = jax.tree.map(lambda axis, x: jnp.squeeze(x, axis), axes, states)
    cache = jax.tree.map(lambda x: x[0], caches)
    lp, cache = _last_log_probs(spec.graphdefs[0], state, tokens, positions, mask, cache)
    return lp[None], jax.tree.map(lambda x: x[None], cache)

  replicated = PartitionSpec()
  return jax.shard_map(one_model, mesh=spec.mesh,
                       in_specs=(state_specs, cache_specs, replicated, replicated, replicated),
                       out_specs=(PartitionSpec("pair"), cache_specs), check_vma=False)(
                           states, caches, tokens, positions, mask)


def _prefill(spec: _Spec, states, tokens, mask):
  TRACE_COUNTS["prefill"] += 1
  n = tokens.shape[0]
  positions = positions_from_mask(mask)
  empty = [nnx.merge(g, s).init_cache(n, spec.max_len)
           for g, s in zip(spec.graphdefs, _unstacked(spec, states))]
  if spec.mode == "stacked":
    caches = jax.tree.map(lambda x: jnp.stack([x, x]), empty[0])
  else:
    caches = tuple(empty)
  log_probs, caches = _run_models(spec, states, caches, tokens, positions, mask)
  return caches, log_probs


def _unstacked(spec: _Spec, states):
  if spec.mode == "stacked":  # only shapes matter for init_cache: take model 0's slice
    axes = jax.tree.unflatten(jax.tree.structure(states), spec.model_axes)
    return [jax.tree.map(lambda axis, x: jnp.take(x, 0, axis=axis), axes, states)]
  return list(states)


def _tile(spec: _Spec, caches, log_probs, repeats: int):
  TRACE_COUNTS["tile"] += 1
  if spec.mode == "stacked":
    caches = jax.vmap(lambda c: c.repeat(repeats))(caches)
  else:
    caches = tuple(c.repeat(repeats) for c in caches)
  return caches, jnp.concatenate([log_probs] * repeats, axis=1)


def _decode(spec: _Spec, states, caches, log_probs, prompt_lengths, lambdas, temperature, top_k,
            top_p, seed, row_ids):
  """The loop over new tokens. Shapes: log_probs [n_models, N, V]; per-row controls [N].

  Step t draws token t from the log-probs of the previous call; the models then run on it to
  give step t + 1's. It is a `while_loop` that ends after `max_new_tokens` draws or once every
  row has stopped, with the model calls in its body (not under a `cond`): so the caches are
  loop-carried buffers that each layer updates in place (through a `cond` XLA:CPU copied
  every cache at every step).
  """
  TRACE_COUNTS["decode"] += 1
  n, m = prompt_lengths.shape[0], spec.max_new_tokens
  single = spec.mode == "single"

  def draw(t, lp, done, outs):
    """Draw token t from `lp` [n_models, N, V]; write its outputs at column t of `outs`."""
    scores = lp[0] if single else mix_log_probs(lp[0], lp[1], lambdas)
    policy_lp = filters.apply_temperature(scores, temperature)
    filtered = filters.maybe_filter(policy_lp, top_k, top_p)
    keys = filters.row_keys(seed, row_ids, t)
    token = filters.sample_tokens(keys, filtered, policy_lp, temperature)

    def pick(log_probs):
      chosen = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
      return jnp.where(done, 0.0, chosen)

    emitted = jnp.where(done, spec.pad_id, token)
    new = {"tokens": emitted, "logprobs": pick(policy_lp), "emitting": ~done}
    if not single:
      new["sft_logprobs"] = pick(filters.apply_temperature(lp[0], temperature))
      new["aligned_logprobs"] = pick(filters.apply_temperature(lp[1], temperature))
    outs = {k: outs[k].at[t].set(new[k]) for k in outs}
    stopped = functools.reduce(jnp.logical_or, [token == s for s in spec.stop_ids],
                               jnp.zeros_like(done))
    return emitted, done | stopped, outs

  # [M, N] outputs; the columns of steps never run keep what a stopped row emits.
  outs = {"tokens": jnp.full((m, n), spec.pad_id, jnp.int32),
          "logprobs": jnp.zeros((m, n), jnp.float32), "emitting": jnp.zeros((m, n), bool)}
  if not single:
    outs["sft_logprobs"] = outs["aligned_logprobs"] = outs["logprobs"]
  emitted, done, outs = draw(0, log_probs, jnp.zeros((n,), bool), outs)

  def more(carry):
    t, _, _, done, _, _ = carry
    return (t < m) & ~jnp.all(done)

  def step(carry):
    t, caches, emitted, done, next_pos, outs = carry
    live = ~done
    lp, caches = _run_models(spec, states, caches, emitted[:, None], next_pos[:, None],
                             live[:, None])
    emitted, done, outs = draw(t, lp, done, outs)
    return t + 1, caches, emitted, done, next_pos + live.astype(jnp.int32), outs

  init = (jnp.asarray(1, jnp.int32), caches, emitted, done, prompt_lengths, outs)
  _, caches, _, _, _, outs = jax.lax.while_loop(more, step, init)
  outs = {k: v.T for k, v in outs.items()}  # [M, N] -> [N, M]
  outs["lengths"] = jnp.sum(outs.pop("emitting"), axis=1, dtype=jnp.int32)
  return outs, caches


_prefill_jit = jax.jit(_prefill, static_argnums=0)
_tile_jit = jax.jit(_tile, static_argnums=(0, 3))
_decode_jit = jax.jit(_decode, static_argnums=0, donate_argnums=(2,))


# ----------------------------------------------------------------------------- public API


def _check_model(name: str, model) -> int:
  if not isinstance(model, nnx.Module):
    raise ValueError(f"{name}={type(model).__name__}: a model must be a flax.nnx.Module with "
                     "`vocab_size`, `init_cache(batch_size, max_len)` and `__call__(tokens, "
                     "positions, mask, cache)`")
  for attr in ("vocab_size", "init_cache"):
    if not hasattr(model, attr):
      raise ValueError(f"{name}={type(model).__name__}: a model needs `vocab_size`, "
                       "`init_cache(batch_size, max_len)` and `__call__(tokens, positions, "
                       f"mask, cache)`; it has no `{attr}`")
  return int(model.vocab_size)


def _decode_layout(model):
  """`model.for_decoding()` where the model has one, else the model itself.

  Only this copy is kept: for a `Transformer` it holds the layer weights once more, one buffer
  per layer (the stacked original stays with the caller)."""
  for_decoding = getattr(model, "for_decoding", None)
  return for_decoding() if callable(for_decoding) else model


def _same_architecture(graphdef_a, state_a, graphdef_b, state_b) -> bool:
  if graphdef_a != graphdef_b:
    return False
  shapes = lambda s: [(x.shape, x.dtype) for x in jax.tree.leaves(s)]
  return shapes(state_a) == shapes(state_b)


def _stack_states(state_a, state_b):
  """Stack two models' states for one vmapped call: (stacked state, model axis per leaf).

  The model axis goes first, except for parameters whose leading logical axis is "layers":
  there it goes second, so that the scan over layers slices contiguous [2, ...] blocks
  (stacking them in front makes every layer step copy its weights: ~5x slower on CPU).
  """
  is_var = lambda x: isinstance(x, nnx.Variable)

  def axis_of(variable):
    names = variable.get_metadata().get("out_sharding") or ()
    return 1 if len(names) and names[0] == "layers" else 0

  axes = jax.tree.map(lambda v: jax.tree.map(lambda _: axis_of(v), v), state_a, is_leaf=is_var)
  stacked = jax.tree.map(lambda axis, a, b: jnp.stack([a, b], axis=axis), axes, state_a,
                         state_b)
  return stacked, tuple(jax.tree.leaves(axes))


def _pair_mesh(pair_devices, stack_models) -> Mesh | None:
  """The "pair" mesh of `pair_devices` (two distinct devices), or None."""
  if pair_devices is None:
    return None
  try:  # any iterable of devices: a list, a tuple, a numpy array, mesh.devices.flat
    devices = None if isinstance(pair_devices, str) else list(pair_devices)
  except TypeError:
    devices = None
  if (devices is None or len(devices) != 2 or
      not all(isinstance(d, jax.Device) for d in devices) or devices[0] == devices[1]):
    shown = pair_devices if devices is None else devices
    raise ValueError(f"pair_devices={shown!r}: must be two distinct jax devices, e.g. "
                     f"jax.devices()[:2] (this process has {jax.device_count()}; on a CPU "
                     "host start it with XLA_FLAGS=--xla_force_host_platform_device_count=2)")
  if stack_models is False:
    raise ValueError("pair_devices runs the two models as one stacked program split over the "
                     "devices; it cannot be combined with stack_models=False")
  return Mesh(np.array(devices, dtype=object), ("pair",))


class _SamplerBase:
  """Shared batching, validation and output assembly of `Sampler` and `DeRaSampler`."""

  def _setup(self, models: Sequence[Any], names: Sequence[str], *, max_prompt_len: int,
             max_new_tokens: int, stop_ids, pad_id: int, shared_vocab_prefix: bool,
             stack_models, pair_devices=None):
    self.max_prompt_len = inputs.check_int("max_prompt_len", max_prompt_len, low=1)
    self.max_new_tokens = inputs.check_int("max_new_tokens", max_new_tokens, low=1)
    vocabs = [_check_model(name, m) for name, m in zip(names, models)]
    if len(set(vocabs)) > 1 and not shared_vocab_prefix:
      raise ValueError(
          f"the models' vocabularies differ: {names[0]} has vocab_size={vocabs[0]}, "
          f"{names[1]} has vocab_size={vocabs[1]}. If they share one tokenizer and differ only "
          "by padding rows, pass shared_vocab_prefix=True to mix over the first "
          f"{min(vocabs)} tokens")
    self.vocab_size = min(vocabs)
    self.stop_ids = inputs.stop_id_list(stop_ids, self.vocab_size)
    self.pad_id = inputs.check_int("pad_id", pad_id, low=0, high=self.vocab_size)
    max_len = self.max_prompt_len + self.max_new_tokens
    for name, model in zip(names, models):
      limit = getattr(getattr(model, "config", None), "max_seq_len", None)
      if limit is not None and max_len > limit:
        raise ValueError(f"max_prompt_len + max_new_tokens = {max_len} exceeds {name}'s "
                         f"max_seq_len={limit}")

    if not (stack_models is True or stack_models is False or
            (isinstance(stack_models, str) and stack_models == "auto")):
      raise ValueError(f"stack_models={stack_models!r}: must be 'auto', True or False")
    self._names = tuple(names)
    self._stack_models = stack_models
    self._mesh = _pair_mesh(pair_devices, stack_models)
    self._states, self._spec = self._load(models)
    if self._mesh is not None and self._spec.mode != "stacked":
      detail = (f"; their vocabularies differ ({vocabs[0]} and {vocabs[1]} tokens), which "
                "shared_vocab_prefix handles only on one device" if vocabs[0] != vocabs[1]
                else "")
      raise ValueError("pair_devices needs two models of one architecture (equal configs "
                       f"and parameter shapes){detail}; leave it None to run both on one "
                       "device")

  def _load(self, models) -> tuple[Any, _Spec]:
    """Split (and maybe stack) the models' weights: the snapshot the sampler decodes with."""
    stack_models = self._stack_models
    split = [nnx.split(_decode_layout(m)) for m in models]
    graphdefs = tuple(g for g, _ in split)
    # A copy of each state's tree: later in-place edits of the models do not leak in.
    states = tuple(jax.tree.map(lambda x: x, s) for _, s in split)
    del split
    if len(models) == 1:
      mode = "single"
    else:
      same = _same_architecture(graphdefs[0], states[0], graphdefs[1], states[1])
      if stack_models is True and not same:
        raise ValueError("stack_models=True needs two models of one architecture (equal "
                         "configs and parameter shapes); use 'auto' or False")
      # On CPU one vmapped call measured no faster than two plain calls (0.9-1.1x,
      # benchmarks/sampler.py), and stacking copies both models' weights: "auto" stacks on
      # accelerators only, where one call saves a kernel launch per op.
      auto_stack = same and jax.default_backend() != "cpu"
      # pair_devices stacks when it can; _setup refuses two architectures.
      mode = "stacked" if (stack_models is True or (self._mesh is not None and same) or
                           (stack_models == "auto" and auto_stack)) else "pair"
    model_axes = ()
    if mode == "stacked":
      graphdefs = graphdefs[:1]
      states, model_axes = _stack_states(states[0], states[1])
      if self._mesh is not None:  # each model's half of every leaf onto its own device
        leaves, tree = jax.tree.flatten(states)
        states = jax.tree.unflatten(tree, [
            jax.device_put(x, NamedSharding(self._mesh, _pair_spec(axis, x.ndim)))
            for x, axis in zip(leaves, model_axes)])
    spec = _Spec(mode=mode, graphdefs=graphdefs, vocab=self.vocab_size,
                 max_len=self.max_prompt_len + self.max_new_tokens,
                 max_new_tokens=self.max_new_tokens, stop_ids=self.stop_ids,
                 pad_id=self.pad_id, model_axes=model_axes,
                 mesh=self._mesh if mode == "stacked" else None)
    return states, spec

  def update_weights(self, *models) -> None:
    """Decode with the current weights of `models` (same architectures as at construction).

    The sampler reads the models' weights when it is built (a snapshot); call this after
    training steps, e.g. between RL iterations. Nothing recompiles.
    """
    if len(models) != len(self._names):
      raise ValueError(f"update_weights takes {len(self._names)} model(s) "
                       f"({', '.join(self._names)}), got {len(models)}")
    for name, model in zip(self._names, models):
      _check_model(name, model)
    states, spec = self._load(models)
    if spec != self._spec:
      raise ValueError("update_weights: the models' architectures differ from the ones the "
                       "sampler was built with; build a new sampler instead")
    self._states = states

  @property
  def mode(self) -> str:
    """"single", "stacked" (one vmapped call for both models) or "pair" (two calls)."""
    return self._spec.mode

  def _run(self, prompts, *, lambdas, seed, temperature, top_k, top_p, row_ids, sweep):
    tokens, mask = inputs.left_pad(prompts, max_len=self.max_prompt_len,
                                   vocab_size=self.vocab_size, pad_id=self.pad_id)
    n = tokens.shape[0]
    if row_ids is None:
      row_ids = np.arange(n, dtype=np.int32)
    row_ids = inputs.per_row("row_ids", row_ids, n, dtype=np.int32, check=inputs.check_row_id)
    temperature = inputs.per_row("temperature", temperature, n, dtype=np.float32,
                                 check=inputs.check_temperature)
    top_k = inputs.per_row("top_k", top_k, n, dtype=np.int64, check=inputs.check_top_k)
    top_k = np.minimum(top_k, self.vocab_size).astype(np.int32)  # k >= V is "keep all"
    top_p = inputs.per_row("top_p", top_p, n, dtype=np.float32, check=inputs.check_top_p)
    seed = inputs.check_int("seed", seed, low=0, high=2**32)
    if sweep:
      grid = inputs.lambda_grid(lambdas)
      repeats = grid.size
      lam_rows = np.repeat(grid, n)
    else:
      repeats = 1
      lam_rows = inputs.per_row("lambdas", lambdas, n, dtype=np.float32,
                                check=inputs.check_lambda)

    caches, log_probs = _prefill_jit(self._spec, self._states, tokens, mask)
    if repeats > 1:
      caches, log_probs = _tile_jit(self._spec, caches, log_probs, repeats)
    tile = lambda x: np.concatenate([x] * repeats)
    outs, _ = _decode_jit(
        self._spec, self._states, caches, log_probs, tile(mask.sum(1).astype(np.int32)),
        lam_rows, tile(temperature), tile(top_k), tile(top_p), np.uint32(seed), tile(row_ids))
    outs = jax.device_get(outs)
    shape = (repeats, n) if sweep else (n,)
    reshape = lambda x: None if x is None else np.asarray(x).reshape(*shape, *x.shape[1:])
    return SampleOutput(
        tokens=reshape(outs["tokens"]), lengths=reshape(outs["lengths"]),
        logprobs=reshape(outs["logprobs"]), sft_logprobs=reshape(outs.get("sft_logprobs")),
        aligned_logprobs=reshape(outs.get("aligned_logprobs")),
        lambdas=None if self.mode == "single" else reshape(lam_rows), row_ids=row_ids)


class DeRaSampler(_SamplerBase):
  """Decode from softmax(λ·h_aligned + (1−λ)·h_sft), any finite λ per row.

  Args:
    sft_model, aligned_model: models with one vocabulary (see the module docstring).
    max_prompt_len: prompts are left-padded to this many tokens.
    max_new_tokens: M, new tokens per row.
    stop_ids: token ids that end a row (a stop id inside the prompt does not).
    pad_id: emitted after a row stops; also the prompt padding id.
    shared_vocab_prefix: allow vocabularies of different sizes and mix over the shared prefix.
    stack_models: "auto" stacks two models of one architecture into one vmapped call on
      accelerators (two calls on CPU, where they are faster); True requires stacking;
      False always makes two calls.
    pair_devices: two devices (e.g. `jax.devices()[:2]`): the SFT model's weights and cache
      live on the first and the aligned model's on the second, and the two forward passes of a
      step run side by side. Needs one architecture. Same draws as on one device.
  """

  def __init__(self, sft_model, aligned_model, *, max_prompt_len: int, max_new_tokens: int,
               stop_ids: Sequence[int] = (), pad_id: int = 0,
               shared_vocab_prefix: bool = False, stack_models="auto", pair_devices=None):
    self._setup([sft_model, aligned_model], ["sft_model", "aligned_model"],
                max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens,
                stop_ids=stop_ids, pad_id=pad_id, shared_vocab_prefix=shared_vocab_prefix,
                stack_models=stack_models, pair_devices=pair_devices)

  def __call__(self, prompts, *, lambdas, seed: int = 0, temperature=1.0, top_k=0, top_p=1.0,
               row_ids=None) -> SampleOutput:
    """Sample each prompt once; `lambdas`, `temperature`, `top_k`, `top_p` are scalars or one
    value per prompt. Outputs are [N, ...]."""
    return self._run(prompts, lambdas=lambdas, seed=seed, temperature=temperature, top_k=top_k,
                     top_p=top_p, row_ids=row_ids, sweep=False)

  def sweep(self, prompts, *, lambdas: Sequence[float], seed: int = 0, temperature=1.0,
            top_k=0, top_p=1.0, row_ids=None) -> SampleOutput:
    """Sample every prompt at every λ of `lambdas` (K values), prefilling each prompt once.

    Outputs have a leading λ axis: tokens [K, N, M], lengths [K, N], …; row i uses the same
    row id (so the same random keys) at every λ.
    """
    return self._run(prompts, lambdas=lambdas, seed=seed, temperature=temperature, top_k=top_k,
                     top_p=top_p, row_ids=row_ids, sweep=True)


class Sampler(_SamplerBase):
  """The same jitted loop with one model: the single-model path (λ-free)."""

  def __init__(self, model, *, max_prompt_len: int, max_new_tokens: int,
               stop_ids: Sequence[int] = (), pad_id: int = 0):
    self._setup([model], ["model"], max_prompt_len=max_prompt_len,
                max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                shared_vocab_prefix=False, stack_models="auto")

  def __call__(self, prompts, *, seed: int = 0, temperature=1.0, top_k=0, top_p=1.0,
               row_ids=None) -> SampleOutput:
    return self._run(prompts, lambdas=0.0, seed=seed, temperature=temperature, top_k=top_k,
                     top_p=top_p, row_ids=row_ids, sweep=False)
