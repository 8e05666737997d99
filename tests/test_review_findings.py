"""Regression tests for problems a reviewer found by attacking the sampler and the model."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dera_jax.models import Transformer, tiny_config
from dera_jax.sampling import DeRaSampler, Sampler, mix_logits
from tests.stubs import BigramLM, ConstantLM

V = 12
P = [[1, 2], [5]]


def _tables():
  return (np.random.default_rng(0).normal(0, 2, (V, V)),
          np.random.default_rng(1).normal(0, 2, (V, V)))


@pytest.fixture(scope="module")
def sampler():
  t0, t1 = _tables()
  return DeRaSampler(BigramLM(t0), BigramLM(t1), max_prompt_len=4, max_new_tokens=5)


def test_a_vanishing_top_p_keeps_the_top_token_and_an_underflowing_one_is_rejected(sampler):
  greedy = sampler(P, lambdas=0.5, temperature=0.0)
  np.testing.assert_array_equal(sampler(P, lambdas=0.5, top_p=1e-9).tokens, greedy.tokens)
  np.testing.assert_array_equal(sampler(P, lambdas=0.5, top_p=1e-40).tokens, greedy.tokens)
  with pytest.raises(ValueError, match=r"top_p=1e-46: top_p must be in \(0, 1\]"):
    sampler(P, lambdas=0.5, top_p=1e-46)


def test_a_huge_top_k_means_keep_everything_not_a_wrapped_around_small_k(sampler):
  free = sampler(P, lambdas=0.5, seed=3)
  np.testing.assert_array_equal(sampler(P, lambdas=0.5, seed=3, top_k=2**32 + 1).tokens,
                                free.tokens)
  np.testing.assert_array_equal(sampler(P, lambdas=0.5, seed=3, top_k=2**31).tokens,
                                free.tokens)


def test_lambda_finite_in_float32_works_and_larger_is_rejected(sampler):
  for lam in (1e38, -1e38, 1e6, 3.0):
    out = sampler(P, lambdas=lam, seed=1)
    assert np.isfinite(out.logprobs).all() and (out.tokens < V).all()
  with pytest.raises(ValueError, match=r"lambdas=1e\+39: λ must be finite in float32"):
    sampler(P, lambdas=1e39)
  with pytest.raises(ValueError, match=r"lambdas\[1\]=1e\+39"):
    sampler.sweep(P, lambdas=[0.5, 1e39])
  with pytest.raises(ValueError, match=r"temperature=1e\+39: temperature must be in"):
    sampler(P, lambdas=0.5, temperature=1e39)


def test_extreme_lambdas_pick_the_limit_token():
  # λ -> +inf: argmax of (la − ls); λ -> -inf: argmin.
  s, a = np.log([0.5, 0.3, 0.2]), np.log([0.2, 0.3, 0.5])
  dera = DeRaSampler(ConstantLM(s), ConstantLM(a), max_prompt_len=1, max_new_tokens=1)
  assert (dera([[0]] * 50, lambdas=1e30).tokens == 2).all()
  assert (dera([[0]] * 50, lambdas=-1e30).tokens == 0).all()


def test_float32_min_masks_do_not_produce_nan_at_large_lambda():
  f = np.finfo(np.float32).min
  lp = np.asarray(mix_logits(jnp.array([0., 1., f]), jnp.array([.5, .2, f]), 3.0))
  assert not np.isnan(lp).any() and np.exp(lp[2]) == 0
  np.testing.assert_allclose(np.exp(lp[:2]).sum(), 1.0, rtol=1e-6)
  sft_logits = np.random.default_rng(0).normal(size=V)
  aligned_logits = sft_logits[::-1].copy()
  sft_logits[3] = aligned_logits[3] = f  # token 3 masked the usual way in both models
  dera = DeRaSampler(ConstantLM(sft_logits), ConstantLM(aligned_logits), max_prompt_len=4,
                     max_new_tokens=3)
  out = dera(P, lambdas=3.0)
  assert np.isfinite(out.logprobs).all() and not (out.tokens == 3).any()


def test_mixing_outside_zero_one_matches_the_direct_formula_in_float64():
  rng = np.random.default_rng(5)
  s, a = rng.normal(size=(4, 30)), rng.normal(size=(4, 30))
  for lam in (-2.0, -0.3, 1.5, 4.0):
    z = lam * a + (1 - lam) * s
    expected = z - z.max(-1, keepdims=True)
    expected -= np.log(np.exp(expected).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(mix_logits(s, a, lam)), expected, atol=2e-5)


def test_the_sampler_decodes_a_snapshot_until_update_weights():
  cfg = tiny_config(vocab_size=40, init_std=0.3)
  sft, aligned = Transformer(cfg, rngs=nnx.Rngs(0)), Transformer(cfg, rngs=nnx.Rngs(1))
  prompts = [[1, 2, 3], [4]]
  for stack in (True, False):
    dera = DeRaSampler(sft, aligned, max_prompt_len=4, max_new_tokens=6, stack_models=stack)
    before = dera(prompts, lambdas=0.5, seed=0)
    original = sft.embed[...]
    sft.embed[...] = original * 3.0
    np.testing.assert_array_equal(dera(prompts, lambdas=0.5, seed=0).tokens, before.tokens)
    dera.update_weights(sft, aligned)
    fresh = DeRaSampler(sft, aligned, max_prompt_len=4, max_new_tokens=6, stack_models=stack)
    updated = dera(prompts, lambdas=0.5, seed=0)
    np.testing.assert_array_equal(updated.tokens, fresh(prompts, lambdas=0.5, seed=0).tokens)
    assert not np.allclose(updated.logprobs, before.logprobs)
    sft.embed[...] = original
    other = Transformer(tiny_config(vocab_size=40, num_layers=3), rngs=nnx.Rngs(2))
    with pytest.raises(ValueError, match="architecture"):
      dera.update_weights(other, aligned)


class _Biased(Transformer):
  """Overrides __call__ without `last_only`: the sampler must honour the override."""

  def __call__(self, tokens, positions, mask, cache=None):
    logits, cache = super().__call__(tokens, positions, mask, cache)
    return logits.at[..., 7].add(1e4), cache


def test_a_subclass_that_overrides_call_is_honoured():
  model = _Biased(tiny_config(vocab_size=40), rngs=nnx.Rngs(0))
  out = Sampler(model, max_prompt_len=4, max_new_tokens=5)([[1, 2]])
  assert (out.tokens == 7).all()


def test_writing_past_the_end_of_the_cache_is_an_error():
  model = Transformer(tiny_config(vocab_size=40), rngs=nnx.Rngs(0))
  cache = model.init_cache(1, 4)
  ones = lambda t: (jnp.ones((1, t), jnp.int32), jnp.arange(t)[None], jnp.ones((1, t), bool))
  _, cache = model(*ones(3), cache)
  with pytest.raises(ValueError, match=r"cache overflow: writing 2 token\(s\) at slot 3 of a "
                                       r"cache with max_len=4"):
    model(*ones(2), cache)


def test_the_cache_works_with_jax_enable_x64():
  code = (
      "import jax; jax.config.update('jax_enable_x64', True)\n"
      "import numpy as np\nfrom flax import nnx\n"
      "from dera_jax.models import Transformer, tiny_config\n"
      "from dera_jax.sampling import DeRaSampler\n"
      "m = Transformer(tiny_config(vocab_size=40), rngs=nnx.Rngs(0))\n"
      "out = DeRaSampler(m, m, max_prompt_len=3, max_new_tokens=3)([[1, 2]], lambdas=2.0)\n"
      "assert np.isfinite(out.logprobs).all(); print('ok')\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={"JAX_PLATFORMS": "cpu", **_env()})
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def _env():
  import os
  return dict(os.environ)


@pytest.mark.parametrize("call,message", [
    (lambda s: s(P, lambdas=0.5, stop_ids=None), None),
    (lambda s: s.sweep(P, lambdas=["0.5", "2"]), r"lambdas=.*must be real numbers"),
    (lambda s: s.sweep(P, lambdas=[True, False]), r"must be real numbers"),
    (lambda s: s.sweep(P, lambdas=[None]), r"must be real numbers"),
])
def test_sweep_validates_lambdas_like_a_call(sampler, call, message):
  if message is None:
    with pytest.raises(TypeError):  # stop_ids is a constructor argument, not a call argument
      call(sampler)
    return
  with pytest.raises(ValueError, match=message):
    call(sampler)


@pytest.mark.parametrize("kwargs,message", [
    (dict(stop_ids=None), r"stop_ids=None: must be a list of token ids"),
    (dict(stop_ids=4.0), r"stop_ids=4.0: must be a list of token ids"),
    (dict(stack_models=1), r"stack_models=1: must be 'auto', True or False"),
])
def test_constructor_rejects_odd_values(kwargs, message):
  t0, t1 = _tables()
  with pytest.raises(ValueError, match=message):
    DeRaSampler(BigramLM(t0), BigramLM(t1), max_prompt_len=4, max_new_tokens=5, **kwargs)


def test_one_stop_id_as_a_numpy_scalar_is_accepted():
  t0, t1 = _tables()
  dera = DeRaSampler(BigramLM(t0), BigramLM(t1), max_prompt_len=4, max_new_tokens=5,
                     stop_ids=np.int64(4))
  assert dera.stop_ids == (4,)


def test_jax_and_numpy_inputs_are_accepted(sampler):
  base = sampler([[1, 2], [3, 5]], lambdas=[0.5, 2.0], seed=3)
  out = sampler(jnp.array([[1, 2], [3, 5]]), lambdas=jnp.array([0.5, 2.0], jnp.bfloat16),
                seed=jnp.array(3))
  np.testing.assert_array_equal(out.tokens, base.tokens)


def test_objects_that_are_not_nnx_modules_are_rejected_early():
  class Fake:
    vocab_size = V

    def init_cache(self, b, n):
      return None

    def __call__(self, *a):
      return None

  with pytest.raises(ValueError, match=r"aligned_model=Fake: a model must be a flax.nnx.Module"):
    DeRaSampler(BigramLM(_tables()[0]), Fake(), max_prompt_len=2, max_new_tokens=2)


def test_single_model_outputs_say_why_they_have_no_kl():
  out = Sampler(BigramLM(_tables()[0]), max_prompt_len=2, max_new_tokens=2)(P)
  with pytest.raises(ValueError, match="only recorded by DeRaSampler"):
    out.kl_to_sft()


@pytest.mark.parametrize("field,value", [("query_scale", float("nan")), ("query_scale", -1.0),
                                         ("rope_theta", "1e4"), ("rope_theta", float("inf")),
                                         ("init_std", float("inf")), ("norm_add_one", "no")])
def test_config_rejects_more_bad_values(field, value):
  with pytest.raises(ValueError, match=f"TransformerConfig.{field}="):
    tiny_config(**{field: value})


def test_config_accepts_numpy_integers():
  cfg = tiny_config(vocab_size=np.int64(40))
  assert cfg.vocab_size == 40 and type(cfg.vocab_size) is int
  hash(cfg)
