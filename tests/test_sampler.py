"""The DeRa sampler: end points, invariances, batching, sweeps, stops, compilation, log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dera_jax.models import Transformer, positions_from_mask, tiny_config
from dera_jax.sampling import DeRaSampler, Sampler, mix_logits
from dera_jax.sampling import sampler as sampler_lib
from dera_jax.sampling.sampler import TRACE_COUNTS
from tests.stubs import BigramLM, CountingLM, PositionLM, ShiftedLM

VOCAB = 40
PROMPTS = [[5, 9, 2, 11, 3], [7], [1, 2, 3], [30, 31, 32, 33, 34, 35, 36, 37]]


def _pair(sft_seed=0, aligned_seed=1, **overrides):
  cfg = tiny_config(vocab_size=VOCAB, init_std=0.3, **overrides)
  return (Transformer(cfg, rngs=nnx.Rngs(sft_seed)),
          Transformer(cfg, rngs=nnx.Rngs(aligned_seed)))


@pytest.fixture(scope="module")
def pair():
  return _pair()


def _sampler(sft, aligned, **kw):
  kw = {"max_prompt_len": 8, "max_new_tokens": 12, "stop_ids": [4], "pad_id": 0, **kw}
  return DeRaSampler(sft, aligned, **kw)


@pytest.mark.parametrize("stack", [True, False])
def test_lambda_zero_and_one_equal_each_model_sampled_alone(pair, stack):
  sft, aligned = pair
  kw = dict(seed=123, temperature=0.9, top_k=20, top_p=0.95)
  # Stop at a token the SFT model draws early in row 0, so that stopping is exercised.
  free = Sampler(sft, max_prompt_len=8, max_new_tokens=12)(PROMPTS, **kw)
  stop = int(free.tokens[0, 3])
  dera = _sampler(sft, aligned, stack_models=stack, stop_ids=[stop])
  assert dera.mode == ("stacked" if stack else "pair")
  for lam, model, field in [(0.0, sft, "sft_logprobs"), (1.0, aligned, "aligned_logprobs")]:
    alone = Sampler(model, max_prompt_len=8, max_new_tokens=12, stop_ids=[stop], pad_id=0)
    mixed, single = dera(PROMPTS, lambdas=lam, **kw), alone(PROMPTS, **kw)
    np.testing.assert_array_equal(mixed.tokens, single.tokens)
    np.testing.assert_array_equal(mixed.lengths, single.lengths)
    np.testing.assert_allclose(mixed.logprobs, single.logprobs, atol=1e-5)
    np.testing.assert_allclose(getattr(mixed, field), single.logprobs, atol=1e-5)
    assert (single.tokens != 0).sum() > 10
  assert (dera(PROMPTS, lambdas=0.0, **kw).lengths[0] <= 4)


def test_stacked_and_pair_paths_agree(pair):
  kw = dict(lambdas=[0.3, 1.7, -0.5, 2.5], seed=5)
  stacked = _sampler(*pair, stack_models=True)(PROMPTS, **kw)
  two_calls = _sampler(*pair, stack_models=False)(PROMPTS, **kw)
  np.testing.assert_array_equal(stacked.tokens, two_calls.tokens)
  # Different matmul kernels; |λ| up to 2.5 scales float32 rounding by up to |2λ − 1| = 4.
  np.testing.assert_allclose(stacked.logprobs, two_calls.logprobs, atol=1e-4)


def test_per_row_constant_added_to_either_models_logits_changes_nothing():
  sft, aligned = BigramLM(_random_table(0)), BigramLM(_random_table(1))
  kw = dict(lambdas=[0.5, 2.0, -1.0, 1.0], seed=9, temperature=1.3)
  base = _sampler(sft, aligned)(PROMPTS, **kw)
  for shifted in [(ShiftedLM(sft), aligned), (sft, ShiftedLM(aligned))]:
    out = _sampler(*shifted)(PROMPTS, **kw)
    np.testing.assert_array_equal(out.tokens, base.tokens)
    np.testing.assert_allclose(out.logprobs, base.logprobs, atol=1e-5)
    np.testing.assert_allclose(out.sft_logprobs, base.sft_logprobs, atol=1e-5)
    np.testing.assert_allclose(out.aligned_logprobs, base.aligned_logprobs, atol=1e-5)


def test_batched_rows_equal_rows_sampled_alone_with_the_same_row_id(pair):
  sampler = _sampler(*pair)
  lambdas = [0.0, 0.5, 1.0, 3.0]
  batch = sampler(PROMPTS, lambdas=lambdas, seed=77, temperature=[1.0, 0.5, 0.0, 1.2])
  temps = [1.0, 0.5, 0.0, 1.2]
  for i, prompt in enumerate(PROMPTS):
    alone = sampler([prompt], lambdas=lambdas[i], seed=77, temperature=temps[i], row_ids=[i])
    np.testing.assert_array_equal(alone.tokens[0], batch.tokens[i])
    np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[i], atol=1e-5, rtol=1e-5)
  # Reordering the batch (same row ids) reorders the outputs and changes nothing else.
  order = [2, 0, 3, 1]
  shuffled = sampler([PROMPTS[i] for i in order], lambdas=[lambdas[i] for i in order], seed=77,
                     temperature=[temps[i] for i in order], row_ids=order)
  np.testing.assert_array_equal(shuffled.tokens, batch.tokens[order])


def test_sweep_equals_separate_calls_and_prefills_once(pair):
  sampler = _sampler(*pair)
  grid = [0.0, 0.5, 1.0, 2.0]
  before = TRACE_COUNTS["prefill"]
  sweep = sampler.sweep(PROMPTS, lambdas=grid, seed=3, temperature=0.8)
  assert sweep.tokens.shape == (4, len(PROMPTS), 12)
  assert sweep.lambdas.shape == (4, len(PROMPTS))
  for k, lam in enumerate(grid):
    single = sampler(PROMPTS, lambdas=lam, seed=3, temperature=0.8)
    np.testing.assert_array_equal(sweep.tokens[k], single.tokens)
    np.testing.assert_array_equal(sweep.lengths[k], single.lengths)
    np.testing.assert_allclose(sweep.logprobs[k], single.logprobs, atol=1e-5)
    np.testing.assert_allclose(sweep.sft_logprobs[k], single.sft_logprobs, atol=1e-5)
  assert TRACE_COUNTS["prefill"] - before <= 1  # same shapes: one prefill program
  # The KL estimate grows as λ moves away from 0.
  kl = sweep.kl_to_sft()
  assert kl[0] == pytest.approx(0.0, abs=1e-5) and kl[3] > kl[1] > 0


def test_changing_lambda_temperature_top_k_top_p_or_seed_never_recompiles(pair):
  sampler = _sampler(*pair, max_new_tokens=5)
  sampler(PROMPTS, lambdas=0.5, seed=0)  # compile once
  before = dict(TRACE_COUNTS)
  for kw in [dict(lambdas=2.0, seed=1), dict(lambdas=[0, 1, 2, 3], seed=2, temperature=0.0),
             dict(lambdas=-1.0, seed=3, top_k=3), dict(lambdas=0.7, seed=4, top_p=0.5),
             dict(lambdas=1.0, seed=5, temperature=[0.1, 0.2, 0.3, 0.4], top_k=[0, 1, 2, 3])]:
    sampler(PROMPTS, **kw)
  assert dict(TRACE_COUNTS) == before


def test_positions_come_from_the_mask_for_uneven_prompts():
  # PositionLM predicts position + 1: greedy tokens of a prompt of length n are n, n+1, ...
  sft, aligned = PositionLM(VOCAB), PositionLM(VOCAB)
  out = _sampler(sft, aligned, stop_ids=[])(PROMPTS, lambdas=0.5, seed=0, temperature=0.0)
  for row, prompt in enumerate(PROMPTS):
    expected = [(len(prompt) + j) % VOCAB for j in range(12)]
    assert out.tokens[row].tolist() == expected


def test_stop_ids_end_rows_emit_pad_and_the_prompt_stop_id_does_not_stop():
  # Token i is most likely followed by i + 1 (greedy chain); stop ids 6 and 9.
  table = np.zeros((VOCAB, VOCAB))
  table[np.arange(VOCAB), (np.arange(VOCAB) + 1) % VOCAB] = 10.0
  model = BigramLM(table)
  sampler = DeRaSampler(model, model, max_prompt_len=4, max_new_tokens=6, stop_ids=[6, 9],
                        pad_id=39)
  prompts = [[6], [7], [2, 6, 3], [20]]  # rows 0 and 2 hold a stop id in the prompt
  out = sampler(prompts, lambdas=0.5, seed=0, temperature=0.0)
  assert out.tokens.tolist() == [[7, 8, 9, 39, 39, 39], [8, 9, 39, 39, 39, 39],
                                 [4, 5, 6, 39, 39, 39], [21, 22, 23, 24, 25, 26]]
  assert out.lengths.tolist() == [3, 2, 3, 6]
  assert (out.logprobs[0, 3:] == 0).all() and (out.logprobs[0, :3] < 0).all()


def test_model_calls_stop_once_every_row_has_stopped():
  table = np.full((VOCAB, VOCAB), -30.0)
  table[np.arange(VOCAB), (np.arange(VOCAB) + 1) % VOCAB] = 10.0
  model = CountingLM(table)
  sampler = Sampler(model, max_prompt_len=2, max_new_tokens=20, stop_ids=[5])
  sampler([[1], [2]], temperature=0.0)  # compile (calls counted too)
  CountingLM.calls = 0
  out = sampler([[1], [2]], temperature=0.0)
  jax.effects_barrier()
  assert out.lengths.tolist() == [4, 3]
  # One prefill call, then one call after each of the first 3 steps (row 0 stops at step 4).
  assert CountingLM.calls == 1 + 3


def test_logprobs_equal_a_teacher_forced_forward_of_both_models(pair):
  sft, aligned = pair
  sampler = _sampler(sft, aligned, stop_ids=[])
  lambdas, temperature = np.array([0.0, 0.6, 1.0, 2.5], np.float32), 0.7
  out = sampler(PROMPTS, lambdas=lambdas, seed=11, temperature=temperature, top_k=10)
  for i, prompt in enumerate(PROMPTS):
    seq = np.array(prompt + out.tokens[i].tolist(), np.int32)[None]
    mask = np.ones_like(seq, bool)
    pos = positions_from_mask(mask)
    ls, _ = sft(seq, pos, mask)
    la, _ = aligned(seq, pos, mask)
    n = len(prompt)
    steps = slice(n - 1, n - 1 + 12)
    mixed = jax.nn.log_softmax(mix_logits(ls[0, steps], la[0, steps], lambdas[i]) / temperature)
    target = out.tokens[i][:, None]
    pick = lambda lp: np.take_along_axis(np.asarray(lp), target, axis=-1)[:, 0]
    np.testing.assert_allclose(out.logprobs[i], pick(mixed), atol=1e-4)
    np.testing.assert_allclose(out.sft_logprobs[i],
                               pick(jax.nn.log_softmax(ls[0, steps] / temperature)), atol=1e-4)
    np.testing.assert_allclose(out.aligned_logprobs[i],
                               pick(jax.nn.log_softmax(la[0, steps] / temperature)), atol=1e-4)


def test_two_architectures_with_one_vocabulary_use_the_general_path():
  sft = Transformer(tiny_config(vocab_size=VOCAB, init_std=0.3), rngs=nnx.Rngs(0))
  other = Transformer(tiny_config(vocab_size=VOCAB, init_std=0.3, num_layers=3, d_model=32,
                                  num_kv_heads=1, norm_add_one=True), rngs=nnx.Rngs(1))
  dera = _sampler(sft, other)
  assert dera.mode == "pair"
  alone = Sampler(sft, max_prompt_len=8, max_new_tokens=12, stop_ids=[4])
  out = dera(PROMPTS, lambdas=0.0, seed=2)
  np.testing.assert_array_equal(out.tokens, alone(PROMPTS, seed=2).tokens)
  assert np.isfinite(dera(PROMPTS, lambdas=1.5, seed=2).logprobs).all()


def test_vocabularies_that_differ_need_the_shared_prefix_option():
  sft = BigramLM(_random_table(0, vocab=VOCAB))
  padded = BigramLM(np.pad(_random_table(1, vocab=VOCAB), ((0, 8), (0, 8)),
                           constant_values=50.0))  # padding rows would dominate if mixed
  with pytest.raises(ValueError, match="vocab_size=40.*vocab_size=48.*shared_vocab_prefix"):
    _sampler(sft, padded)
  out = _sampler(sft, padded, shared_vocab_prefix=True)(PROMPTS, lambdas=2.0, seed=0)
  assert out.tokens.max() < VOCAB


def _random_table(seed, vocab=VOCAB):
  return np.random.default_rng(seed).normal(0, 2.0, (vocab, vocab))


@pytest.mark.parametrize("stack", [True, False])
def test_per_layer_decode_layout_matches_the_layer_scan(pair, stack, monkeypatch):
  kw = dict(lambdas=[0.3, 1.7, -0.5, 2.5], seed=5, temperature=0.8)
  sampler = _sampler(*pair, stack_models=stack)
  assert sampler._spec.graphdefs[0] == nnx.graphdef(pair[0].for_decoding())  # per-layer
  per_layer = sampler(PROMPTS, **kw)
  traces = dict(TRACE_COUNTS)
  again = sampler(PROMPTS, **{**kw, "lambdas": 0.9, "seed": 6})  # no retrace
  assert dict(TRACE_COUNTS) == traces and again.tokens.shape == per_layer.tokens.shape
  sampler.update_weights(*pair)  # re-split, same programs
  np.testing.assert_array_equal(sampler(PROMPTS, **kw).tokens, per_layer.tokens)
  assert dict(TRACE_COUNTS) == traces
  # The same sampler over the stacked weights (one scan over layers).
  monkeypatch.setattr(sampler_lib, "_decode_layout", lambda model: model)
  scanned = _sampler(*pair, stack_models=stack)(PROMPTS, **kw)
  np.testing.assert_array_equal(per_layer.tokens, scanned.tokens)
  for field in ("logprobs", "sft_logprobs", "aligned_logprobs"):
    np.testing.assert_allclose(getattr(per_layer, field), getattr(scanned, field), atol=1e-5)
