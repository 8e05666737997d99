"""Each trainer loss equals a float64 NumPy re-implementation; advantages equal Python loops;
DPO equals trl's loss when trl is installed; SFT eval loss/perplexity; the NaN guard."""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dera_jax.models import Transformer, tiny_config
from dera_jax.training import common, losses
from dera_jax.training.sft import SFTBatch, init_train_state, make_sft_eval_step, sft_evaluate

RTOL, ATOL = 1e-5, 1e-5


def _rng(seed=0):
  return np.random.default_rng(seed)


def _logsig(x):
  return -np.logaddexp(0.0, -x)


def test_bradley_terry_matches_numpy():
  r = _rng(1)
  rc, rr = r.normal(size=16) * 3, r.normal(size=16) * 3
  loss, acc = losses.bradley_terry_loss(jnp.asarray(rc, jnp.float32), jnp.asarray(rr, jnp.float32))
  np.testing.assert_allclose(float(loss), -np.mean(_logsig(rc - rr)), rtol=RTOL, atol=ATOL)
  assert float(acc) == np.mean(rc > rr)


def _np_dpo(pc, pr, rc, rr, beta):
  return -np.mean(_logsig(beta * ((pc - rc) - (pr - rr))))


def test_dpo_matches_numpy():
  r = _rng(2)
  pc, pr, rc, rr = (r.normal(size=12) * 5 - 20 for _ in range(4))
  for beta in (0.05, 0.5, 2.0):
    loss, m = losses.dpo_loss(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)), beta)
    np.testing.assert_allclose(float(loss), _np_dpo(pc, pr, rc, rr, beta), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(m["reward_margin"]),
                               np.mean(beta * ((pc - rc) - (pr - rr))), rtol=1e-4, atol=1e-4)


def _trl_dpo_loss(pc, pr, rc, rr, beta):
  """trl's DPO sigmoid loss on given sequence log-probs, through DPOTrainer._compute_loss with
  a stub trainer and a stub model that returns the per-token log-probs (trl >= 1.0; earlier
  versions expose DPOTrainer.dpo_loss)."""
  torch = pytest.importorskip("torch")
  trl = pytest.importorskip("trl")
  trainer_cls = trl.DPOTrainer
  b, s = len(pc), 3
  if not hasattr(trainer_cls, "_compute_loss"):
    pytest.skip(f"trl {trl.__version__}: no DPOTrainer._compute_loss")
  per_tok = np.zeros((2 * b, s))
  per_tok[:b, 0], per_tok[b:, 0] = pc, pr
  out = types.SimpleNamespace(log_probs=torch.tensor(per_tok), entropy=torch.zeros(2 * b, s),
                              mean_logits=torch.zeros(2 * b, s),
                              is_top1=torch.zeros(2 * b, s, dtype=torch.bool))
  model = lambda **kw: out
  model.training = True
  acc = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
  stub = types.SimpleNamespace(
      model=model, accelerator=acc, aux_loss_enabled=False, ld_alpha=None,
      precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=["sigmoid"],
      loss_weights=[1.0], beta=beta, use_weighting=False, label_smoothing=0.0,
      _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
      _total_train_tokens=0, _tp_size=1)
  inputs = {"input_ids": torch.ones(2 * b, s + 1, dtype=torch.long),
            "attention_mask": torch.ones(2 * b, s + 1),
            "completion_mask": torch.ones(2 * b, s + 1),
            "ref_chosen_logps": torch.tensor(rc), "ref_rejected_logps": torch.tensor(rr)}
  try:
    return float(trainer_cls._compute_loss(stub, model, inputs, return_outputs=False))
  except (AttributeError, TypeError, KeyError) as e:  # a trl version with other internals
    pytest.skip(f"trl {trl.__version__}: DPOTrainer internals differ ({e!r})")


def test_dpo_matches_trl():
  r = _rng(3)
  pc, pr, rc, rr = (r.normal(size=6) * 4 - 10 for _ in range(4))
  for beta in (0.1, 0.7):
    expected = _trl_dpo_loss(pc, pr, rc, rr, beta)
    loss, _ = losses.dpo_loss(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)), beta)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected, _np_dpo(pc, pr, rc, rr, beta), rtol=1e-10)


def test_token_kl_and_log_probs_match_numpy():
  r = _rng(4)
  logits = r.normal(size=(3, 5, 7)) * 2
  targets = r.integers(0, 7, (3, 5))
  temps = np.array([0.5, 1.0, 1.7])
  lp = np.asarray(losses.token_log_probs(jnp.asarray(logits, jnp.float32), jnp.asarray(targets),
                                         jnp.asarray(temps, jnp.float32)))
  z = logits / temps[:, None, None]
  ref = z - np.log(np.exp(z).sum(-1, keepdims=True))
  np.testing.assert_allclose(lp, np.take_along_axis(ref, targets[..., None], -1)[..., 0],
                             rtol=1e-5, atol=1e-5)
  ent = np.asarray(losses.entropy_from_logits(jnp.asarray(logits, jnp.float32),
                                              jnp.asarray(temps, jnp.float32)))
  np.testing.assert_allclose(ent, -(np.exp(ref) * ref).sum(-1), rtol=1e-5, atol=1e-5)

  a, b = r.normal(size=(4, 6)), r.normal(size=(4, 6))
  mask = np.arange(6)[None] < np.array([[1], [6], [3], [0]])
  kl = losses.token_kl(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), mask)
  np.testing.assert_allclose(np.asarray(kl), ((a - b) * mask).sum(-1), rtol=RTOL, atol=ATOL)


def test_rloo_advantages_match_python_loop_and_objective_matches_numpy():
  r = _rng(5)
  k, n = 4, 3
  rewards = r.normal(size=n * k)
  adv = np.asarray(losses.rloo_advantages(jnp.asarray(rewards, jnp.float32), k))
  expected = np.zeros(n * k)
  for p in range(n):
    for i in range(k):
      others = [rewards[p * k + j] for j in range(k) if j != i]
      expected[p * k + i] = rewards[p * k + i] - sum(others) / len(others)
  np.testing.assert_allclose(adv, expected, rtol=RTOL, atol=ATOL)

  seq_lp = r.normal(size=n * k) - 5
  loss = losses.rloo_loss(jnp.asarray(seq_lp, jnp.float32), jnp.asarray(expected, jnp.float32))
  np.testing.assert_allclose(float(loss), -np.mean(expected * seq_lp), rtol=RTOL, atol=ATOL)
  # The gradient is the REINFORCE estimate −A_i / N (the advantage is a constant).
  grad = jax.grad(losses.rloo_loss)(jnp.asarray(seq_lp, jnp.float32),
                                    jnp.asarray(expected, jnp.float32))
  np.testing.assert_allclose(np.asarray(grad), -expected / (n * k), rtol=RTOL, atol=1e-6)


def _gae_loop(rewards, values, mask, gamma, lam):
  b, m = rewards.shape
  adv = np.zeros((b, m))
  for i in range(b):
    n = int(mask[i].sum())
    last = 0.0
    for t in reversed(range(n)):
      next_v = values[i, t + 1] if t + 1 < n else 0.0
      delta = rewards[i, t] + gamma * next_v - values[i, t]
      last = delta + gamma * lam * last
      adv[i, t] = last
  return adv, np.where(mask, adv + values, 0.0)


def test_gae_matches_python_loop():
  r = _rng(6)
  b, m = 4, 7
  rewards, values = r.normal(size=(b, m)), r.normal(size=(b, m))
  mask = np.arange(m)[None] < np.array([[7], [1], [4], [0]])
  for gamma, lam in ((1.0, 0.95), (0.9, 0.5), (0.99, 1.0)):
    adv, ret = losses.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                          mask, gamma, lam)
    e_adv, e_ret = _gae_loop(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), e_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), e_ret, rtol=1e-5, atol=1e-5)


def test_ppo_losses_match_numpy():
  r = _rng(7)
  shape = (5, 6)
  lp, old = r.normal(size=shape) * 0.3 - 2, r.normal(size=shape) * 0.3 - 2
  adv = r.normal(size=shape)
  mask = np.arange(6)[None] < np.array([[6], [2], [5], [1], [3]])
  eps = 0.2
  loss, clipfrac = losses.ppo_policy_loss(*(jnp.asarray(x, jnp.float32) for x in (lp, old, adv)),
                                          mask, eps)
  ratio = np.exp(lp - old)
  u, c = -adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps)
  np.testing.assert_allclose(float(loss), np.maximum(u, c)[mask].mean(), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(float(clipfrac), (c > u)[mask].mean(), rtol=RTOL, atol=ATOL)

  v, old_v, ret = r.normal(size=shape), r.normal(size=shape), r.normal(size=shape)
  cv = 0.3
  vloss, vclip = losses.ppo_value_loss(*(jnp.asarray(x, jnp.float32) for x in (v, old_v, ret)),
                                       mask, cv)
  l1 = (v - ret) ** 2
  l2 = (old_v + np.clip(v - old_v, -cv, cv) - ret) ** 2
  np.testing.assert_allclose(float(vloss), 0.5 * np.maximum(l1, l2)[mask].mean(), rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_allclose(float(vclip), ((np.abs(v - old_v) > cv) & (l2 > l1))[mask].mean(), rtol=RTOL, atol=ATOL)

  w = np.asarray(losses.masked_whiten(jnp.asarray(adv, jnp.float32), mask))
  x = adv[mask]
  np.testing.assert_allclose(w[mask], (x - x.mean()) / np.sqrt(x.var() + 1e-8), rtol=1e-4,
                             atol=1e-4)
  assert np.all(w[~mask] == 0)


def test_sft_eval_loss_and_perplexity_match_numpy():
  config = tiny_config(vocab_size=32, num_layers=1, d_model=32, mlp_dim=64)
  model = Transformer(config, rngs=nnx.Rngs(0))
  graphdef, state = init_train_state(model, common.make_optimizer(1e-3))
  r = _rng(8)
  tokens = r.integers(0, 32, (2, 6)).astype(np.int32)
  mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)
  loss_mask = np.array([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]], bool)
  eval_step = make_sft_eval_step(graphdef)
  out = eval_step(state.params, {"tokens": tokens, "mask": mask, "loss_mask": loss_mask})
  logits, _ = model(tokens, np.maximum(np.cumsum(mask, 1) - 1, 0), mask)
  logits = np.asarray(logits, np.float64)
  lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  expected = nll[loss_mask[:, 1:]].mean()
  np.testing.assert_allclose(float(out["loss"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(out["perplexity"]), np.exp(expected), rtol=1e-5)
  total = sft_evaluate(eval_step, state.params,
                       [SFTBatch(tokens=tokens, mask=mask, loss_mask=loss_mask)] * 2)
  np.testing.assert_allclose(total["loss"], expected, rtol=1e-5)


def test_check_finite_names_the_step():
  common.check_finite({"loss": 1.0, "finite": 1.0}, step=3)
  with pytest.raises(common.NonFiniteLossError, match="step 17: loss is nan"):
    common.check_finite({"loss": float("nan")}, step=17)
  with pytest.raises(common.NonFiniteLossError, match="step 5: loss is inf"):
    common.check_finite({"loss": jnp.inf}, step=5)
  with pytest.raises(common.NonFiniteLossError, match="step 2: gradients"):
    common.check_finite({"loss": 0.1, "finite": 0.0}, step=2)
