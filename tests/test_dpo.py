"""DPO: log-probs against a NumPy recomputation, reference precomputed once per batch, loss
decreases, a β sweep compiles once, β ≤ 0 rejected."""

import jax
import numpy as np
import pytest
from flax import nnx

from dera_jax.models import Transformer, tiny_config
from dera_jax.training import common, dpo

CONFIG = tiny_config(vocab_size=32, num_layers=1, d_model=32, mlp_dim=64, num_heads=2,
                     num_kv_heads=1, head_dim=16)


def _model(seed=0):
  return Transformer(CONFIG, rngs=nnx.Rngs(seed))


def _pairs(seed, n=4):
  r = np.random.default_rng(seed)
  out = {}
  for side, fill in (("chosen", 5), ("rejected", 7)):
    t = np.zeros((n, 7), np.int32)
    m = np.zeros((n, 7), bool)
    lm = np.zeros((n, 7), bool)
    for i in range(n):
      length = int(r.integers(2, 4))
      t[i, :3] = r.integers(10, 32, 3)
      t[i, 3:3 + length] = fill
      m[i, :3 + length] = True
      lm[i, 3:3 + length] = True
    out.update({f"{side}_tokens": t, f"{side}_mask": m, f"{side}_loss_mask": lm})
  return out


def _np_seq_logprob(model, tokens, mask, loss_mask):
  logits, _ = model(tokens, np.maximum(np.cumsum(mask, 1) - 1, 0), mask)
  logits = np.asarray(logits, np.float64)
  lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  tok = np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  return (tok * loss_mask[:, 1:]).sum(-1)


def test_reference_logprobs_and_first_loss_match_numpy():
  policy, ref = _model(0), _model(1)
  batch = _pairs(0)
  with_ref = dpo.make_reference_fn(ref)(batch)
  for side in ("chosen", "rejected"):
    expected = _np_seq_logprob(ref, batch[f"{side}_tokens"], batch[f"{side}_mask"],
                               batch[f"{side}_loss_mask"])
    np.testing.assert_allclose(with_ref[f"ref_{side}_logps"], expected, rtol=1e-5)
  opt = common.make_optimizer(1e-3)
  spec, state = dpo.init_dpo_state(policy, opt, beta=0.3)
  _, m = dpo.make_dpo_step(spec, opt)(state, with_ref, None)
  pc, pr = (_np_seq_logprob(policy, batch[f"{s}_tokens"], batch[f"{s}_mask"],
                            batch[f"{s}_loss_mask"]) for s in ("chosen", "rejected"))
  z = 0.3 * ((pc - with_ref["ref_chosen_logps"]) - (pr - with_ref["ref_rejected_logps"]))
  np.testing.assert_allclose(float(m["loss"]), np.mean(np.logaddexp(0, -z)), rtol=1e-5)


def test_dpo_trains_and_beta_sweep_compiles_once():
  policy = _model(0)
  add_ref = dpo.make_reference_fn(_model(0))  # reference == initial policy
  batches = [add_ref(_pairs(i)) for i in range(3)]  # once per batch, before training
  ref_traces = common.TRACE_COUNTS["dpo_reference"]
  opt = common.make_optimizer(1e-2)
  spec, state = dpo.init_dpo_state(policy, opt, beta=0.5)
  step = dpo.make_dpo_step(spec, opt)
  losses = []
  for i in range(6):
    state, m = step(state, batches[i % 3], jax.random.key(i))
    common.check_finite(m, i)
    losses.append(float(m["loss"]))
  np.testing.assert_allclose(losses[0], np.log(2.0), rtol=1e-5)  # policy == reference
  assert losses[-1] < losses[0] - 0.05, losses
  traces = common.TRACE_COUNTS["dpo_step"]
  for beta in (0.05, 0.2, 1.0, 3.0):
    swept = common.set_hparam(state, "beta", beta)
    _, m = step(swept, batches[0], None)
    assert np.isfinite(float(m["loss"]))
  assert common.TRACE_COUNTS["dpo_step"] == traces  # β is traced: no recompile
  assert common.TRACE_COUNTS["dpo_reference"] == ref_traces  # the step never runs the reference


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan")])
def test_beta_must_be_positive(beta):
  opt = common.make_optimizer(1e-3)
  with pytest.raises(ValueError, match=r"beta=.*must be a finite number > 0"):
    dpo.init_dpo_state(_model(), opt, beta=beta)
  _, state = dpo.init_dpo_state(_model(), opt, beta=0.1)
  with pytest.raises(ValueError, match="beta="):
    common.set_hparam(state, "beta", beta)


def test_missing_reference_logprobs_is_an_error():
  opt = common.make_optimizer(1e-3)
  spec, state = dpo.init_dpo_state(_model(), opt, beta=0.1)
  with pytest.raises(ValueError, match="ref_chosen_logps"):
    dpo.make_dpo_step(spec, opt)(state, _pairs(0), None)
  bad = _pairs(0)
  del bad["rejected_mask"]
  with pytest.raises(ValueError, match="rejected_mask"):
    dpo.make_reference_fn(_model())(bad)
