"""Bad input gets a ValueError that names the argument, the value and what is allowed."""

import numpy as np
import pytest

from dera_jax.sampling import DeRaSampler
from tests.stubs import BigramLM

V = 10


@pytest.fixture(scope="module")
def sampler():
  table = np.random.default_rng(0).normal(size=(V, V))
  return DeRaSampler(BigramLM(table), BigramLM(table * 0.5), max_prompt_len=4,
                     max_new_tokens=3, stop_ids=[1, 2], pad_id=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lambdas=float("nan")), r"lambdas=nan: λ must be finite"),
    (dict(lambdas=[0.5, float("inf")]), r"lambdas\[1\]=inf: λ must be finite"),
    (dict(lambdas=[0.5, 1.0, 2.0]), r"lambdas has shape \(3,\): must be a scalar or one value "
                                    r"per row \(2 values\)"),
    (dict(lambdas="high"), r"lambdas='high': must be real numbers"),
    (dict(lambdas=0.5, top_p=0.0), r"top_p=0.0: top_p must be in \(0, 1\]"),
    (dict(lambdas=0.5, top_p=1.5), r"top_p=1.5: top_p must be in \(0, 1\]"),
    (dict(lambdas=0.5, top_k=-1), r"top_k=-1: top_k must be >= 0"),
    (dict(lambdas=0.5, top_k=2.5), r"top_k=2.5: must be integers"),
    (dict(lambdas=0.5, temperature=-0.1), r"temperature=-0.1: temperature must be in \[0, "),
    (dict(lambdas=0.5, temperature=[1.0, float("nan")]), r"temperature\[1\]=nan"),
    (dict(lambdas=0.5, seed=-1), r"seed=-1: must be >= 0"),
    (dict(lambdas=0.5, seed=1.5), r"seed=1.5: must be an integer"),
    (dict(lambdas=0.5, row_ids=[0]), r"row_ids has shape \(1,\)"),
    (dict(lambdas=0.5, row_ids=[0, -3]), r"row_ids\[1\]=-3"),
])
def test_bad_controls(sampler, kwargs, message):
  with pytest.raises(ValueError, match=message):
    sampler([[3, 4], [5]], **kwargs)


@pytest.mark.parametrize("prompts,message", [
    ([], r"prompts=\[\]: must be a non-empty list of token-id lists"),
    ("hello", r"prompts='hello': must be a non-empty list"),
    ([[3], []], r"prompts\[1\] is empty: every prompt needs at least one token"),
    ([[3], [1, 2, 3, 4, 5]], r"prompts\[1\] has 5 tokens: must be at most max_prompt_len=4"),
    ([[3, 10]], r"prompts\[0\] holds token id 10: ids must be in \[0, 10\)"),
    ([[3, -1]], r"prompts\[0\] holds token id -1"),
    ([[3.5]], r"prompts\[0\]=\[3.5\]: must be a flat list of integer ids"),
    ([[[1, 2]]], r"prompts\[0\]=\[\[1, 2\]\]: must be a flat list"),
])
def test_bad_prompts(sampler, prompts, message):
  with pytest.raises(ValueError, match=message):
    sampler(prompts, lambdas=0.5)


@pytest.mark.parametrize("lambdas,message", [
    ([], r"sweep needs a non-empty list of λ values"),
    (0.5, r"sweep needs a non-empty list of λ values"),
    ([0.0, float("-inf")], r"lambdas\[1\]=-inf: λ must be finite"),
])
def test_bad_sweep_grids(sampler, lambdas, message):
  with pytest.raises(ValueError, match=message):
    sampler.sweep([[3]], lambdas=lambdas)


def test_any_finite_lambda_is_accepted(sampler):
  out = sampler([[3], [4]], lambdas=[-7.5, 40.0], seed=0)
  assert np.isfinite(out.logprobs).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(stop_ids=[10]), r"stop_ids\[0\]=10: must be < 10"),
    (dict(stop_ids=[-2]), r"stop_ids\[0\]=-2: must be >= 0"),
    (dict(pad_id=12), r"pad_id=12: must be < 10"),
    (dict(max_prompt_len=0), r"max_prompt_len=0: must be >= 1"),
    (dict(max_new_tokens=2.0), r"max_new_tokens=2.0: must be an integer"),
    (dict(stack_models="yes"), r"stack_models='yes': must be 'auto', True or False"),
])
def test_bad_sampler_settings(kwargs, message):
  table = np.zeros((V, V))
  settings = {"max_prompt_len": 4, "max_new_tokens": 3, **kwargs}
  with pytest.raises(ValueError, match=message):
    DeRaSampler(BigramLM(table), BigramLM(table), **settings)


def test_models_with_different_vocabularies(sampler):
  with pytest.raises(ValueError, match=r"sft_model has vocab_size=10, aligned_model has "
                                       r"vocab_size=12.*shared_vocab_prefix=True"):
    DeRaSampler(BigramLM(np.zeros((V, V))), BigramLM(np.zeros((12, 12))), max_prompt_len=2,
                max_new_tokens=2)


def test_objects_that_are_not_models():
  with pytest.raises(ValueError, match=r"aligned_model=str: a model must be a flax.nnx.Module"):
    DeRaSampler(BigramLM(np.zeros((V, V))), "gpt", max_prompt_len=2, max_new_tokens=2)


def test_stacking_needs_one_architecture():
  with pytest.raises(ValueError, match=r"stack_models=True needs two models of one architecture"):
    DeRaSampler(BigramLM(np.zeros((V, V))), _OtherLM(np.zeros((V, V))), max_prompt_len=2,
                max_new_tokens=2, stack_models=True)


class _OtherLM(BigramLM):
  """Same vocabulary, different class: a different architecture for the sampler."""
