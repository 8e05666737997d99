"""Temperature, top-k, top-p and greedy decoding, driven through the sampler with
fixed-logit stub models (the t5x way), plus the filter function on its own."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dera_jax.sampling import DeRaSampler, Sampler
from dera_jax.sampling.filters import top_k_top_p
from tests.stubs import ConstantLM

P4 = np.array([0.64, 0.23, 0.08, 0.05])
N = 4000


def _draw(logits, n=N, **kw):
  """n one-token draws (one per row id) from a model with fixed `logits`."""
  sampler = Sampler(ConstantLM(logits), max_prompt_len=1, max_new_tokens=1)
  return sampler([[0]] * n, seed=kw.pop("seed", 0), **kw).tokens[:, 0]


def test_top_p_060_on_064_023_008_005_always_gives_the_first_token():
  tokens = _draw(np.log(P4), top_p=0.6)
  assert (tokens == 0).all()


def test_top_p_090_keeps_three_tokens_renormalised():
  tokens = _draw(np.log(P4), top_p=0.9, seed=1)
  counts = np.bincount(tokens, minlength=4)
  assert counts[3] == 0
  expected = P4[:3] / P4[:3].sum() * N
  assert stats.chisquare(counts[:3], expected).pvalue > 1e-3


def test_top_k_keeps_the_k_most_likely_tokens_renormalised():
  logits = np.log(np.array([0.1, 0.4, 0.05, 0.3, 0.15]))
  tokens = _draw(logits, top_k=2, seed=2)
  counts = np.bincount(tokens, minlength=5)
  assert counts[[0, 2, 4]].sum() == 0
  assert stats.chisquare(counts[[1, 3]], np.array([4, 3]) / 7 * N).pvalue > 1e-3


def test_top_k_then_top_p_compose():
  logits = np.log(np.array([0.1, 0.4, 0.05, 0.3, 0.15]))
  # top-k 3 leaves {0.4, 0.3, 0.15} -> renormalised {0.47, 0.35, 0.18}: top-p 0.5 keeps 2.
  tokens = _draw(logits, top_k=3, top_p=0.5, seed=3)
  assert set(np.unique(tokens)) == {1, 3}


def test_temperature_sharpens_and_flattens_as_softmax_logits_over_t():
  logits = np.array([1.0, 0.0, -0.5, 2.0])
  for t in (0.5, 2.0):
    counts = np.bincount(_draw(logits, temperature=t, seed=4), minlength=4)
    p = np.exp(logits / t) / np.exp(logits / t).sum()
    assert stats.chisquare(counts, p * N).pvalue > 1e-3


def test_temperature_zero_is_greedy_with_logprobs_at_temperature_one():
  logits = np.array([1.0, 3.0, -0.5, 2.0])
  sampler = Sampler(ConstantLM(logits), max_prompt_len=1, max_new_tokens=3)
  out = sampler([[0]] * 5, seed=0, temperature=0.0)
  assert (out.tokens == 1).all()
  expected = logits[1] - np.log(np.exp(logits).sum())
  np.testing.assert_allclose(out.logprobs, expected, rtol=1e-6)


def test_per_row_controls_in_one_batch():
  logits = np.log(P4)
  sampler = Sampler(ConstantLM(logits), max_prompt_len=1, max_new_tokens=1)
  n = 600
  out = sampler([[0]] * (3 * n), temperature=[0.0] * n + [1.0] * 2 * n,
                top_k=[0] * 2 * n + [1] * n, seed=5)
  greedy, free, top1 = np.split(out.tokens[:, 0], 3)
  assert (greedy == 0).all() and (top1 == 0).all() and len(np.unique(free)) == 4


def test_logprobs_are_reported_before_filtering():
  sampler = Sampler(ConstantLM(np.log(P4)), max_prompt_len=1, max_new_tokens=1)
  out = sampler([[0]], top_p=0.6)
  np.testing.assert_allclose(out.logprobs[0, 0], np.log(0.64), rtol=1e-5)


def test_dera_filters_apply_to_the_mixture():
  # Each model alone would keep a different token under top-p 0.6; the mixture at λ = 0.5
  # is uniform over the two, so top-p 0.6 keeps both.
  sft = ConstantLM(np.log([0.7, 0.3, 1e-9]))
  aligned = ConstantLM(np.log([0.3, 0.7, 1e-9]))
  sampler = DeRaSampler(sft, aligned, max_prompt_len=1, max_new_tokens=1)
  tokens = sampler([[0]] * 2000, lambdas=0.5, top_p=0.6, seed=6).tokens[:, 0]
  assert set(np.unique(tokens)) == {0, 1}


@pytest.mark.parametrize("batch_shape_k,batch_shape_p", [((3,), (3,))])
def test_filter_function_matches_a_numpy_reference(batch_shape_k, batch_shape_p):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 50)).astype(np.float32)
  lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  top_k = np.array([0, 5, 20], np.int32)
  top_p = np.array([0.3, 1.0, 0.8], np.float32)
  got = np.asarray(top_k_top_p(jnp.asarray(lp), jnp.asarray(top_k), jnp.asarray(top_p)))
  for row in range(3):
    order = np.argsort(-lp[row])
    k = top_k[row] or 50
    kept = order[:k]
    probs = np.exp(lp[row, kept]) / np.exp(lp[row, kept]).sum()
    n_keep = np.searchsorted(np.cumsum(probs), top_p[row] - 1e-7) + 1 if top_p[row] < 1 else k
    expected = set(kept[:n_keep].tolist())
    assert set(np.flatnonzero(np.isfinite(got[row])).tolist()) == expected
