"""Reward model: score at the last response token, Bradley–Terry training on a trivial task,
held-out accuracy, normalisation to mean 0 / std 1, compile-once."""

import jax
import numpy as np
from flax import nnx

from dera_jax.models import Transformer, tiny_config
from dera_jax.models.heads import ScalarHeadModel
from dera_jax.training import common, reward

CONFIG = tiny_config(vocab_size=32, num_layers=1, d_model=32, mlp_dim=64, num_heads=2,
                     num_kv_heads=1, head_dim=16)


def _rm(seed=0):
  return ScalarHeadModel(Transformer(CONFIG, rngs=nnx.Rngs(seed)), rngs=nnx.Rngs(seed + 1),
                         head_init_std=0.02)


def _side(r, n, fill):
  """Right-padded rows: 3 prompt tokens, 2–4 response tokens of `fill`, then pads."""
  t = np.zeros((n, 8), np.int32)
  m = np.zeros((n, 8), bool)
  lm = np.zeros((n, 8), bool)
  for i in range(n):
    length = int(r.integers(2, 5))
    t[i, :3] = r.integers(10, 32, 3)
    t[i, 3:3 + length] = fill
    m[i, :3 + length] = True
    lm[i, 3:3 + length] = True
  return t, m, lm


def _pairs(seed, n=8):
  r = np.random.default_rng(seed)
  c, rj = _side(r, n, 5), _side(r, n, 7)  # token 5 preferred over token 7
  return {"chosen_tokens": c[0], "chosen_mask": c[1], "chosen_loss_mask": c[2],
          "rejected_tokens": rj[0], "rejected_mask": rj[1], "rejected_loss_mask": rj[2]}


def test_score_is_read_at_last_response_token():
  rm = _rm()
  t, m, lm = _side(np.random.default_rng(0), 3, 5)
  scores = np.asarray(rm.score(t, m))
  values = np.asarray(rm.values(t, np.maximum(np.cumsum(m, 1) - 1, 0), m))
  last = [int(np.flatnonzero(row)[-1]) for row in lm]
  np.testing.assert_allclose(scores, values[np.arange(3), last], rtol=1e-6)
  t2 = t.copy()
  t2[~m] = 9  # different padding after the response changes nothing (causal + masked)
  np.testing.assert_allclose(np.asarray(rm.score(t2, m)), scores, rtol=1e-6)


def test_bradley_terry_training_and_held_out_accuracy():
  opt = common.make_optimizer(3e-3)
  spec, state = reward.init_reward_state(_rm(), opt)
  step = reward.make_reward_step(spec, opt)
  eval_step = reward.make_reward_eval_step(spec)
  batch = _pairs(0)
  model = spec.build(state.params, state.frozen)
  r_c = np.asarray(model.score(batch["chosen_tokens"], batch["chosen_mask"]), np.float64)
  r_r = np.asarray(model.score(batch["rejected_tokens"], batch["rejected_mask"]), np.float64)
  losses = []
  for i in range(8):
    state, m = step(state, _pairs(i), jax.random.key(i))
    common.check_finite(m, i)
    if i == 0:  # the first step's loss is Bradley–Terry on the initial scores
      np.testing.assert_allclose(float(m["loss"]), np.mean(np.logaddexp(0, -(r_c - r_r))),
                                 rtol=1e-5)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0]
  held_out = eval_step(state, _pairs(100, n=16))
  assert float(held_out["accuracy"]) >= 0.9, held_out
  assert common.TRACE_COUNTS["reward_step"] >= 1
  before = common.TRACE_COUNTS["reward_step"]
  state = common.set_hparam(state, "learning_rate", 1e-4)  # traced: no recompile
  step(state, _pairs(3), jax.random.key(0))
  assert common.TRACE_COUNTS["reward_step"] == before


def test_normalization_gives_mean_zero_std_one():
  opt = common.make_optimizer(1e-3)
  spec, state = reward.init_reward_state(_rm(3), opt)
  r = np.random.default_rng(1)
  batches = []
  for _ in range(2):
    t, m, lm = _side(r, 5, int(r.integers(1, 32)))
    batches.append({"tokens": t, "mask": m, "loss_mask": lm})
  state = reward.normalize_rewards(spec, state, batches)
  rm = spec.export(state.params, state.frozen)
  scores = np.concatenate([np.asarray(rm.score(b["tokens"], b["mask"]), np.float64)
                           for b in batches])
  np.testing.assert_allclose(scores.mean(), 0.0, atol=1e-4)
  np.testing.assert_allclose(scores.std(), 1.0, rtol=1e-3)
  # The constants are model state (not trained): a reward step leaves them alone.
  step = reward.make_reward_step(spec, opt)
  state2, _ = step(state, _pairs(0), None)
  assert float(state2.frozen["rest"]["scale"].get_value()) == float(rm.scale[...])
