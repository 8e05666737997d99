"""DeRa's sampled distribution against exact enumeration.

Per token: ≥ 20,000 draws at λ ∈ {0.5, 2} match softmax(λ·a + (1−λ)·s) (chi-square).
Per sequence: for a two-token horizon, the per-token rule is compared with the exact
sequence-level geometric mixture π_sft^(1−λ)·π_aligned^λ / Z, and their total-variation
distance is printed (the approximation gap the paper accepts).
"""

import itertools

import numpy as np
import pytest
from scipy import stats

from dera_jax.sampling import DeRaSampler
from tests.stubs import BigramLM

V = 6
DRAWS = 20_000


def _tables():
  rng = np.random.default_rng(2024)
  return rng.normal(0, 1.5, (V, V)), rng.normal(0, 1.5, (V, V))


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _per_token(sft, aligned, prev, lam):
  """float64 p_λ(· | prev) = softmax(λ·a + (1−λ)·s)."""
  return np.exp(_log_softmax(lam * aligned[prev] + (1 - lam) * sft[prev]))


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_one_token_draws_match_the_mixed_softmax(lam):
  s, a = _tables()
  sampler = DeRaSampler(BigramLM(s), BigramLM(a), max_prompt_len=1, max_new_tokens=1)
  tokens = sampler([[3]] * DRAWS, lambdas=lam, seed=17).tokens[:, 0]
  counts = np.bincount(tokens, minlength=V)
  expected = _per_token(s, a, 3, lam) * DRAWS
  result = stats.chisquare(counts, expected)
  print(f"λ={lam}: chi2={result.statistic:.2f} p={result.pvalue:.3f}")
  assert result.pvalue > 1e-3


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_two_token_horizon_against_the_exact_sequence_level_mixture(lam):
  s, a = _tables()
  prompt = 3
  ls, la = _log_softmax(s), _log_softmax(a)
  seqs = list(itertools.product(range(V), repeat=2))

  # Per-token rule (what DeRa samples) and the exact sequence-level geometric mixture.
  per_token = np.array([_per_token(s, a, prompt, lam)[y1] * _per_token(s, a, y1, lam)[y2]
                        for y1, y2 in seqs])
  log_geo = np.array([(1 - lam) * (ls[prompt, y1] + ls[y1, y2]) +
                      lam * (la[prompt, y1] + la[y1, y2]) for y1, y2 in seqs])
  geometric = np.exp(log_geo - log_geo.max())
  geometric /= geometric.sum()
  tv = 0.5 * np.abs(per_token - geometric).sum()
  print(f"λ={lam}: TV(per-token rule, sequence-level mixture) = {tv:.4f}")
  assert 0 < tv < 1  # a real, measured gap: the sequence normaliser does not factor

  # The sampler draws from the per-token rule over the whole sequence.
  sampler = DeRaSampler(BigramLM(s), BigramLM(a), max_prompt_len=1, max_new_tokens=2)
  out = sampler([[prompt]] * DRAWS, lambdas=lam, seed=23)
  cells = out.tokens[:, 0] * V + out.tokens[:, 1]
  counts = np.bincount(cells, minlength=V * V)
  keep = per_token * DRAWS >= 5  # chi-square needs populated cells: pool the rare ones
  observed, expected = counts[keep], per_token[keep] * DRAWS
  if (~keep).any():
    observed = np.append(observed, counts[~keep].sum())
    expected = np.append(expected, per_token[~keep].sum() * DRAWS)
  expected *= observed.sum() / expected.sum()
  assert stats.chisquare(observed, expected).pvalue > 1e-3
  # And the sampler's sequence log-prob is the per-token rule's exactly.
  idx = cells[:50]
  np.testing.assert_allclose(out.sequence_logprobs()[:50], np.log(per_token[idx]), atol=1e-4)


def test_at_lambda_one_the_per_token_rule_is_exact():
  s, a = _tables()
  per_token = np.array([_per_token(s, a, 0, 1.0)[y1] * _per_token(s, a, y1, 1.0)[y2]
                        for y1, y2 in itertools.product(range(V), repeat=2)])
  la = _log_softmax(a)
  exact = np.array([np.exp(la[0, y1] + la[y1, y2])
                    for y1, y2 in itertools.product(range(V), repeat=2)])
  np.testing.assert_allclose(per_token, exact, rtol=1e-12)
