"""Rollouts and scoring for KL-regularised policy gradient (shared by RLOO and PPO).

A rollout samples `k` responses per prompt from the *current* policy with
`dera_jax.sampling.Sampler` (the single-model path). The sampler snapshots the weights it is
built with, so `rollout` builds a new one from the current params on every call (cheap: the
compiled functions are cached by graphdef and shapes, so nothing recompiles).

Layout of a rollout (N = prompts · k rows, P prompt slots, M new-token slots):

    tokens         [N, P + M]  left-padded prompt, then the response (pad after the stop)
    mask           [N, P + M]  True on real prompt and response tokens
    response_mask  [N, M]      True on the response tokens (stop token included)
    scores         [N]         the reward r(x, y) (from a reward model or a reward_fn)

Response log-probs are teacher-forced with one full forward pass: column j of the response
is predicted by slot P + j − 1 (`response_log_probs`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dera_jax.models.heads import ScalarHeadModel, last_index
from dera_jax.sampling import Sampler
from dera_jax.training import common
from dera_jax.training.lora import LoRAConfig

PROMPT_KEYS = ("prompt_tokens", "prompt_mask")

# reward_fn(prompt_tokens [N, P], prompt_mask [N, P], response_tokens [N, M], lengths [N])
#   -> [N] float rewards (NumPy, host side)
RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def check_k(k) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
    raise ValueError(f"k={k!r}: RLOO needs k >= 2 samples per prompt (an integer) for its "
                     "leave-one-out baseline")
  return int(k)


def rollout(policy, prompt_batch: Mapping, *, k: int, max_new_tokens: int, temperature: float,
            seed: int, stop_ids=(), pad_id: int = 0, top_k: int = 0, top_p: float = 1.0,
            sampler: Sampler | None = None) -> dict[str, np.ndarray]:
  """Sample k responses per prompt from `policy` (an nnx module); see the module docstring.

  Rows n·k … n·k + k − 1 are prompt n's samples; each row uses its own row id (a distinct
  random stream). Returns NumPy arrays tokens, mask, response_mask, lengths, prompt_tokens,
  prompt_mask, response_tokens, sample_logprobs ([N, M], the sampler's own log-probs).
  """
  b = common.as_arrays(prompt_batch, PROMPT_KEYS, source="rollout")
  prompt_tokens, prompt_mask = np.asarray(b["prompt_tokens"]), np.asarray(b["prompt_mask"])
  if prompt_tokens.ndim != 2 or prompt_tokens.shape != prompt_mask.shape:
    raise ValueError(f"rollout: prompt_tokens {prompt_tokens.shape} and prompt_mask "
                     f"{prompt_mask.shape} must both be [B, P]")
  empty = np.flatnonzero(~prompt_mask.any(1))
  if empty.size:
    raise ValueError(f"rollout: prompt row {int(empty[0])} is empty (prompt_mask all False)")
  p = prompt_tokens.shape[1]
  if sampler is None:
    sampler = Sampler(policy, max_prompt_len=p, max_new_tokens=max_new_tokens,
                      stop_ids=tuple(stop_ids), pad_id=pad_id)
  elif sampler.max_prompt_len != p or sampler.max_new_tokens != max_new_tokens:
    raise ValueError(f"rollout: the sampler was built for prompts of {sampler.max_prompt_len} "
                     f"and {sampler.max_new_tokens} new tokens, not {p} and {max_new_tokens}")
  rep_tokens = np.repeat(prompt_tokens, k, axis=0)
  rep_mask = np.repeat(prompt_mask, k, axis=0)
  prompts = [row[m] for row, m in zip(rep_tokens, rep_mask)]
  out = sampler(prompts, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                row_ids=np.arange(len(prompts), dtype=np.int32))
  response_mask = np.arange(max_new_tokens)[None, :] < out.lengths[:, None]
  # Left-padding again by the sampler gives the same layout; keep the batch's own prompt ids.
  return {
      "tokens": np.concatenate([rep_tokens, out.tokens], axis=1).astype(np.int32),
      "mask": np.concatenate([rep_mask, response_mask], axis=1),
      "response_mask": response_mask,
      "lengths": out.lengths.astype(np.int32),
      "prompt_tokens": rep_tokens, "prompt_mask": rep_mask,
      "response_tokens": out.tokens.astype(np.int32),
      "sample_logprobs": out.logprobs,
  }


def response_log_probs(model, tokens, mask, response_len: int, temperature, *,
                       entropy: bool = False):
  """[N, M] teacher-forced log-probs of the last `response_len` tokens at `temperature`
  (and [N, M] entropies when `entropy`)."""
  out = common.teacher_forced(model, tokens, mask, temperature, entropy=entropy)
  m = response_len
  if entropy:
    return out[0][:, -m:], out[1][:, -m:]
  return out[:, -m:]


class PolicyTrainerBase:
  """Holds the policy spec, the frozen reference and reward models, and the rollout settings.

  Subclasses (`RLOOTrainer`, `PPOTrainer`) add the jitted `train_step` and `step`.
  """

  rows_per_prompt: int = 1

  def _setup(self, policy, *, ref_model, reward_model, reward_fn, beta, temperature,
             max_new_tokens, stop_ids, pad_id, top_k, top_p, lora: LoRAConfig | None, rng):
    self.beta = common.check_positive("beta", beta)
    self.temperature = common.check_positive("temperature", temperature)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
        or max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be a positive integer")
    if (reward_model is None) == (reward_fn is None):
      raise ValueError("give exactly one of reward_model (a ScalarHeadModel) and reward_fn "
                       "(prompt_tokens, prompt_mask, response_tokens, lengths) -> [N] rewards")
    if reward_model is not None and not isinstance(reward_model, ScalarHeadModel):
      raise ValueError(f"reward_model must be a ScalarHeadModel, got "
                       f"{type(reward_model).__name__}")
    if ref_model is None and lora is None:
      raise ValueError("ref_model=None is only allowed with LoRA (the reference is then the "
                       "frozen base); pass the SFT model as ref_model")
    self.max_new_tokens = max_new_tokens
    self._samplers: dict[int, Sampler] = {}  # prompt length -> sampler (see rollout)
    self.stop_ids, self.pad_id = tuple(stop_ids), pad_id
    self.top_k, self.top_p = top_k, top_p
    self.reward_fn = reward_fn
    self.spec, params, policy_frozen = common.prepare_model(policy, lora, rng=rng)
    frozen = {"policy": policy_frozen, "ref": None, "reward": None}
    self._ref_graphdef = None
    if ref_model is not None:
      self._ref_graphdef, frozen["ref"] = nnx.split(ref_model)
    self._reward_graphdef = None
    if reward_model is not None:
      self._reward_graphdef, frozen["reward"] = nnx.split(reward_model)
    return params, frozen

  # -- pieces used inside the jitted functions

  def _ref_model(self, frozen):
    if frozen["ref"] is None:  # LoRA: the reference is the base model without adapters
      base = frozen["policy"]
      return nnx.merge(self.spec.graphdef, base["base"], base["rest"])
    return nnx.merge(self._ref_graphdef, frozen["ref"])

  def _scores(self, frozen, batch):
    if "scores" in batch:
      return batch["scores"].astype(jnp.float32)
    rm = nnx.merge(self._reward_graphdef, frozen["reward"])
    return rm.score(batch["tokens"], batch["mask"], last_index(batch["mask"]))

  # -- host side

  def experience(self, state: common.TrainerState, rollout_out: Mapping) -> dict:
    """The rollout's arrays plus what the update needs (reference log-probs, scores, …),
    computed by the subclass's jitted `_experience`."""
    return self._experience(state, rollout_arrays(rollout_out))

  def train_step(self, state: common.TrainerState, batch, rng: jax.Array | None = None):
    """`(state, batch, rng) -> (state, metrics)`: one update on an experience batch, jitted
    once (rng is unused: the update draws no randomness)."""
    del rng
    return self._train_jit(state, dict(batch))

  def policy_model(self, state: common.TrainerState):
    """The current policy as an ordinary module (LoRA merged), e.g. for a Sampler or DeRa."""
    return self.spec.export(self._policy_params(state), state.frozen["policy"])

  def _policy_params(self, state):
    return state.params

  def rollout(self, state: common.TrainerState, prompt_batch: Mapping, rng: jax.Array
              ) -> dict[str, np.ndarray]:
    """Sample from the current policy and add `scores` when a reward_fn is used.

    One Sampler per prompt length is kept and given the current weights each iteration
    (`update_weights`: no recompilation, and the weights stay on the device).
    """
    seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
    policy = self.spec.build(self._policy_params(state), state.frozen["policy"])
    p = np.shape(prompt_batch["prompt_tokens"])[1]
    sampler = self._samplers.get(p)
    if sampler is None:
      sampler = self._samplers[p] = Sampler(
          policy, max_prompt_len=p, max_new_tokens=self.max_new_tokens,
          stop_ids=self.stop_ids, pad_id=self.pad_id)
    else:
      sampler.update_weights(policy)
    out = rollout(policy, prompt_batch, k=self.rows_per_prompt,
                  max_new_tokens=self.max_new_tokens,
                  temperature=float(state.hparams["temperature"]), seed=seed,
                  stop_ids=self.stop_ids, pad_id=self.pad_id, top_k=self.top_k,
                  top_p=self.top_p, sampler=sampler)
    if self.reward_fn is not None:
      scores = np.asarray(self.reward_fn(out["prompt_tokens"], out["prompt_mask"],
                                         out["response_tokens"], out["lengths"]),
                          np.float32)
      if scores.shape != out["lengths"].shape:
        raise ValueError(f"reward_fn returned shape {scores.shape}, expected "
                         f"{out['lengths'].shape}")
      out["scores"] = scores
    return out


def rollout_arrays(rollout_out: Mapping) -> dict:
  """The arrays of a rollout the jitted functions take."""
  keys = ["tokens", "mask", "response_mask"] + (["scores"] if "scores" in rollout_out else [])
  return {k: rollout_out[k] for k in keys}
