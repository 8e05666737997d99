"""KL-regularised RL: rollout log-probs, RLOO and PPO steps on a trivial task, GAE of the
experience against a Python loop, compile-once β sweeps, construction errors, the NaN guard."""

import jax
import numpy as np
import pytest
from flax import nnx

from dera_jax.models import Transformer, tiny_config
from dera_jax.models.heads import ScalarHeadModel
from dera_jax.training import common
from dera_jax.training.lora import LoRAConfig
from dera_jax.training.ppo import PPOTrainer
from dera_jax.training.rloo import RLOOTrainer
from dera_jax.training.rollout import response_log_probs, rollout

CONFIG = tiny_config(vocab_size=32, num_layers=1, d_model=32, mlp_dim=64, num_heads=2,
                     num_kv_heads=1, head_dim=16)
M = 4
TARGET = 5


def _model(seed=0):
  return Transformer(CONFIG, rngs=nnx.Rngs(seed))


def _prompts():
  return {"prompt_tokens": np.array([[0, 11, 12], [13, 14, 15]], np.int32),
          "prompt_mask": np.array([[False, True, True], [True, True, True]])}


def count_target(prompt_tokens, prompt_mask, response_tokens, lengths):
  """Reward: the share of response slots holding TARGET."""
  valid = np.arange(response_tokens.shape[1])[None] < lengths[:, None]
  return ((response_tokens == TARGET) & valid).sum(1) / response_tokens.shape[1]


def test_teacher_forced_log_probs_equal_the_samplers():
  model = _model()
  out = rollout(model, _prompts(), k=3, max_new_tokens=M, temperature=0.7, seed=1,
                stop_ids=[1])
  assert out["tokens"].shape == (6, 3 + M) and out["response_mask"].shape == (6, M)
  lp = np.asarray(response_log_probs(model, out["tokens"], out["mask"], M, 0.7))
  rm = out["response_mask"]
  np.testing.assert_allclose(lp[rm], out["sample_logprobs"][rm], rtol=1e-4, atol=1e-4)
  # k copies of each prompt, in order.
  np.testing.assert_array_equal(out["prompt_tokens"][:3], np.repeat(_prompts()["prompt_tokens"][:1], 3, 0))


def test_rloo_raises_reward_and_sweeps_beta_without_recompiling():
  policy, ref = _model(0), _model(0)
  trainer = RLOOTrainer(policy, common.make_optimizer(3e-2), ref_model=ref,
                        reward_fn=count_target, beta=0.01, k=4, max_new_tokens=M)
  state = trainer.init_state()
  rewards = []
  for i in range(12):
    state, m = trainer.step(state, _prompts(), jax.random.key(i))
    common.check_finite(m, i)
    if i == 0:
      assert abs(float(m["kl"])) < 1e-5  # policy == reference before the first update
    rewards.append(float(m["reward"]))
  assert {"reward", "kl", "entropy", "length", "loss"} <= set(m)
  assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2, rewards
  assert float(m["kl"]) > 0
  traces = common.TRACE_COUNTS["rloo_step"], common.TRACE_COUNTS["rloo_experience"]
  for beta in (0.001, 0.1, 1.0):
    state, m = trainer.step(common.set_hparam(state, "beta", beta), _prompts(),
                            jax.random.key(99))
  assert (common.TRACE_COUNTS["rloo_step"], common.TRACE_COUNTS["rloo_experience"]) == traces


def test_rloo_kl_metric_matches_numpy():
  policy, ref = _model(0), _model(1)
  trainer = RLOOTrainer(policy, common.make_optimizer(1e-3), ref_model=ref,
                        reward_fn=count_target, beta=0.5, k=4, max_new_tokens=M, temperature=0.8)
  state = trainer.init_state()
  ro = trainer.rollout(state, _prompts(), jax.random.key(0))
  batch = trainer.experience(state, ro)
  _, m = trainer.train_step(state, batch, None)

  def lp(model):
    logits, _ = model(ro["tokens"], np.maximum(np.cumsum(ro["mask"], 1) - 1, 0), ro["mask"])
    z = np.asarray(logits, np.float64)[:, :-1] / 0.8
    z = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(z, ro["tokens"][:, 1:, None], -1)[..., 0][:, -M:]

  kl = ((lp(policy) - lp(ref)) * ro["response_mask"]).sum(1)
  np.testing.assert_allclose(float(m["kl"]), kl.mean(), rtol=1e-4, atol=1e-5)
  total = ro["scores"] - 0.5 * kl
  r = total.reshape(-1, 4)
  adv = np.array([[r[p, i] - np.mean(np.delete(r[p], i)) for i in range(4)]
                  for p in range(len(r))]).reshape(-1)
  seq_lp = (lp(policy) * ro["response_mask"]).sum(1)
  np.testing.assert_allclose(float(m["loss"]), -np.mean(adv * seq_lp), rtol=1e-4, atol=1e-5)


def test_ppo_experience_gae_and_update():
  policy, ref = _model(0), _model(0)
  value = ScalarHeadModel(_model(2), rngs=nnx.Rngs(3), head_init_std=0.1)
  trainer = PPOTrainer(policy, value, common.make_optimizer(1e-2), ref_model=ref,
                       reward_fn=count_target, beta=0.1, max_new_tokens=M, gamma=0.9, lam=0.8,
                       whiten_advantages=False, epochs=2)
  state = trainer.init_state()
  ro = trainer.rollout(state, _prompts(), jax.random.key(0))
  batch = jax.tree.map(np.asarray, trainer.experience(state, ro))
  rm = ro["response_mask"]
  rewards = np.where(rm, -0.1 * (batch["old_logprobs"].astype(np.float64)
                                 - batch["ref_logprobs"]), 0.0)
  for i, n in enumerate(rm.sum(1)):
    rewards[i, n - 1] += ro["scores"][i]
  values = batch["old_values"].astype(np.float64)
  adv = np.zeros_like(rewards)
  for i, n in enumerate(rm.sum(1)):
    last = 0.0
    for t in reversed(range(n)):
      next_v = values[i, t + 1] if t + 1 < n else 0.0
      last = rewards[i, t] + 0.9 * next_v - values[i, t] + 0.9 * 0.8 * last
      adv[i, t] = last
  np.testing.assert_allclose(batch["advantages"], adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(batch["returns"], np.where(rm, adv + values, 0), rtol=1e-4,
                             atol=1e-5)

  losses = []
  for e in range(5):
    state, m = trainer.train_step(state, batch, jax.random.key(e))
    common.check_finite(m, e)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0], losses
  assert {"clipfrac", "value_loss", "reward", "kl", "entropy", "length"} <= set(m)
  state, m = trainer.step(state, _prompts(), jax.random.key(7))  # the whole iteration
  assert np.isfinite(float(m["loss"]))


def test_lora_rloo_uses_the_base_as_reference():
  trainer = RLOOTrainer(_model(0), common.make_optimizer(1e-2), reward_fn=count_target,
                        beta=0.1, k=4, max_new_tokens=M, lora=LoRAConfig(rank=2, alpha=4))
  state = trainer.init_state()
  state, m = trainer.step(state, _prompts(), jax.random.key(0))
  assert abs(float(m["kl"])) < 1e-5
  assert set(state.params) == {"lora", "full"}
  assert isinstance(trainer.policy_model(state), Transformer)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=1), r"k=1: RLOO needs k >= 2"),
    (dict(k=0), r"k=0"),
    (dict(beta=0.0), r"beta=0.0: must be a finite number > 0"),
    (dict(beta=-1.0), r"beta=-1.0"),
    (dict(temperature=0.0), r"temperature=0.0"),
    (dict(ref_model=None), r"ref_model=None"),
])
def test_construction_errors(kwargs, match):
  args = dict(ref_model=_model(), reward_fn=count_target, beta=0.1, k=2, max_new_tokens=M)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    RLOOTrainer(_model(), common.make_optimizer(1e-3), **args)


def test_ppo_construction_errors():
  value = ScalarHeadModel(_model(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="beta=0"):
    PPOTrainer(_model(), value, common.make_optimizer(1e-3), ref_model=_model(),
               reward_fn=count_target, beta=0, max_new_tokens=M)
  with pytest.raises(ValueError, match="lam=1.5"):
    PPOTrainer(_model(), value, common.make_optimizer(1e-3), ref_model=_model(),
               reward_fn=count_target, beta=0.1, max_new_tokens=M, lam=1.5)


def test_nan_loss_is_detected_with_its_step():
  trainer = RLOOTrainer(_model(), common.make_optimizer(1e-3), ref_model=_model(),
                        reward_fn=count_target, beta=0.1, k=4, max_new_tokens=M)
  state = trainer.init_state()
  ro = trainer.rollout(state, _prompts(), jax.random.key(0))
  ro["scores"] = ro["scores"].astype(np.float32)
  ro["scores"][0] = np.nan
  _, m = trainer.train_step(state, trainer.experience(state, ro))
  assert float(m["finite"]) == 0.0
  with pytest.raises(common.NonFiniteLossError, match="step 41: loss is nan") as err:
    common.check_finite(m, step=41)
  assert err.value.step == 41
