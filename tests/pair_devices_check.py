"""Run by test_pair_devices.py in a process with two CPU devices: DeRa with each model on its
own device draws what the one-device sampler draws."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dera_jax.models import Transformer, tiny_config  # noqa: E402
from dera_jax.sampling import DeRaSampler  # noqa: E402


def main():
  assert jax.device_count() == 2, jax.devices()
  cfg = tiny_config(vocab_size=97)
  sft, aligned = Transformer(cfg, rngs=nnx.Rngs(0)), Transformer(cfg, rngs=nnx.Rngs(1))
  kwargs = dict(max_prompt_len=8, max_new_tokens=12, stop_ids=[3], pad_id=0)
  one = DeRaSampler(sft, aligned, stack_models=False, **kwargs)
  two = DeRaSampler(sft, aligned, pair_devices=jax.devices()[:2], **kwargs)
  leaf = jax.tree.leaves(two._states)[0]
  assert {d.id for d in leaf.devices()} == {0, 1}, leaf.sharding
  assert leaf.addressable_shards[0].data.shape[0] == 1, "each device holds one model's half"
  prompts = [[5, 6, 7], [9], [11, 12, 13, 14, 15, 16, 17, 18], [20, 21]]
  # Per-row λ, temperature (0 = greedy), top-k and top-p in one call; a sweep.
  call = dict(lambdas=[0.0, 0.5, 1.0, 2.5], seed=3, temperature=[1.0, 0.0, 0.7, 1.3],
              top_k=[0, 5, 0, 0], top_p=[1.0, 1.0, 0.8, 1.0])
  sweep = dict(lambdas=[0.0, 0.5, 2.0], seed=4, temperature=1.0)
  for a, b in [(one(prompts, **call), two(prompts, **call)),
               (one.sweep(prompts, **sweep), two.sweep(prompts, **sweep))]:
    np.testing.assert_array_equal(b.tokens, a.tokens)
    np.testing.assert_array_equal(b.lengths, a.lengths)
    for field in ("logprobs", "sft_logprobs", "aligned_logprobs"):
      np.testing.assert_allclose(getattr(b, field), getattr(a, field), atol=1e-5)
  # New weights reach both devices.
  tuned = Transformer(cfg, rngs=nnx.Rngs(2))
  one.update_weights(sft, tuned)
  two.update_weights(sft, tuned)
  a = one(prompts, lambdas=1.0, seed=0, temperature=0.0)
  b = two(prompts, lambdas=1.0, seed=0, temperature=0.0)
  np.testing.assert_array_equal(b.tokens, a.tokens)
  # Any iterable of two devices; a model of another architecture is refused by update_weights.
  as_array = DeRaSampler(sft, tuned, pair_devices=np.array(jax.devices()[:2]), **kwargs)
  np.testing.assert_array_equal(as_array(prompts, lambdas=1.0, seed=0, temperature=0.0).tokens,
                                one(prompts, lambdas=1.0, seed=0, temperature=0.0).tokens)
  other_vocab = Transformer(tiny_config(vocab_size=101), rngs=nnx.Rngs(4))
  try:
    two.update_weights(sft, Transformer(tiny_config(vocab_size=97, mlp_dim=96), rngs=nnx.Rngs(3)))
  except ValueError as e:
    assert "update_weights: the models' architectures differ" in str(e), e
  else:
    raise AssertionError("update_weights took a model of another architecture")
  try:
    DeRaSampler(sft, other_vocab, pair_devices=jax.devices()[:2], shared_vocab_prefix=True,
                **kwargs)
  except ValueError as e:
    assert "vocabularies differ (97 and 101 tokens)" in str(e), e
  else:
    raise AssertionError("pair_devices took two vocabularies")
  # Bad input: two architectures, or stacking refused.
  other = Transformer(tiny_config(vocab_size=97, mlp_dim=96), rngs=nnx.Rngs(3))
  for models, extra, message in [((sft, other), {}, "pair_devices needs two models of one"),
                                 ((sft, aligned), {"stack_models": False}, "stack_models=False")]:
    try:
      DeRaSampler(*models, pair_devices=jax.devices()[:2], **kwargs, **extra)
    except ValueError as e:
      assert message in str(e), e
    else:
      raise AssertionError(f"no error for {message}")
  print("pair_devices ok")


if __name__ == "__main__":
  main()
