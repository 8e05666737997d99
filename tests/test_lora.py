"""LoRA on stacked layer weights: exact at B = 0, merged = base + (alpha/r)·A·B, only adapters
train, config validation, and the reward model with LoRA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dera_jax.models import Transformer, tiny_config
from dera_jax.models.heads import ScalarHeadModel
from dera_jax.training import common, dpo, reward
from dera_jax.training.lora import LoRAConfig, PROJECTIONS, init_lora, merge_lora

CONFIG = tiny_config(vocab_size=64, num_layers=2, d_model=32, mlp_dim=48, num_heads=2,
                     num_kv_heads=1, head_dim=16)


def _model(seed=0):
  return Transformer(CONFIG, rngs=nnx.Rngs(seed))


def _inputs():
  r = np.random.default_rng(0)
  tokens = r.integers(0, 64, (2, 6)).astype(np.int32)
  mask = np.ones((2, 6), bool)
  mask[0, :2] = False
  return tokens, np.maximum(np.cumsum(mask, 1) - 1, 0), mask


def _pair_batch(seed=0):
  r = np.random.default_rng(seed)
  def side():
    t = r.integers(1, 64, (4, 6)).astype(np.int32)
    m = np.ones((4, 6), bool)
    lm = m.copy()
    lm[:, :3] = False
    return t, m, lm
  c, rj = side(), side()
  return {"chosen_tokens": c[0], "chosen_mask": c[1], "chosen_loss_mask": c[2],
          "rejected_tokens": rj[0], "rejected_mask": rj[1], "rejected_loss_mask": rj[2]}


def test_zero_b_gives_base_logits_exactly():
  model = _model()
  tokens, positions, mask = _inputs()
  base_logits, _ = model(tokens, positions, mask)
  cfg = LoRAConfig(rank=4, alpha=8, targets=PROJECTIONS)
  spec, params, frozen = common.prepare_model(model, cfg, rng=jax.random.key(1))
  merged = spec.build(params, frozen)
  logits, _ = merged(tokens, positions, mask)
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(base_logits))


def test_merged_weights_are_base_plus_scaled_ab():
  model = _model()
  _, weights, _ = nnx.split(model, nnx.Param, ...)
  cfg = LoRAConfig(rank=3, alpha=5.0, targets=("q", "o", "down"))
  trainable = init_lora(weights, cfg, jax.random.key(2))
  r = np.random.default_rng(3)
  for name in trainable["lora"]:  # non-zero B
    b = trainable["lora"][name]["b"]
    trainable["lora"][name]["b"] = jnp.asarray(r.normal(size=b.shape), jnp.float32)
  merged = dict(nnx.to_flat_state(merge_lora(weights, trainable, cfg)))
  base = dict(nnx.to_flat_state(weights))
  for path, var in base.items():
    name = ".".join(map(str, path))
    got = np.asarray(merged[path].get_value(), np.float64)
    w = np.asarray(var.get_value(), np.float64)
    if name not in trainable["lora"]:
      np.testing.assert_array_equal(got, w)
      continue
    a = np.asarray(trainable["lora"][name]["a"], np.float64)
    b = np.asarray(trainable["lora"][name]["b"], np.float64)
    expected = np.empty_like(w)
    for layer in range(w.shape[0]):  # per layer: W + (alpha/r) · A·B over flattened in/out axes
      al = a[layer].reshape(-1, cfg.rank)
      bl = b[layer].reshape(cfg.rank, -1)
      expected[layer] = w[layer] + (cfg.alpha / cfg.rank) * (al @ bl).reshape(w.shape[1:])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert sorted(trainable["lora"]) == ["layers.down", "layers.o", "layers.q"]
  assert trainable["lora"]["layers.o"]["a"].shape == (2, 2, 16, 3)   # [L, H, hd, r]
  assert trainable["lora"]["layers.o"]["b"].shape == (2, 3, 32)      # [L, r, D]


def test_only_lora_params_change_after_a_step():
  model = _model()
  cfg = LoRAConfig(rank=2, alpha=4, targets=("q", "v", "gate"))
  opt = common.make_optimizer(1e-2)
  spec, state = dpo.init_dpo_state(model, opt, beta=0.1, lora=cfg, rng=jax.random.key(0))
  # The trainable pytree holds adapters only; the base weights are frozen inputs.
  assert set(state.params) == {"lora", "full"} and state.params["full"] == {}
  batch = dpo.make_reference_fn(_model(1))(_pair_batch())
  step = dpo.make_dpo_step(spec, opt)
  before = jax.tree.map(np.asarray, (state.params, state.frozen))
  state, metrics = step(state, batch, None)
  # Step 1 moves B only (the gradient of A is 0 while B = 0); step 2 moves A too.
  b_moved = [not np.array_equal(np.asarray(state.params["lora"][n]["b"]),
                                before[0]["lora"][n]["b"]) for n in state.params["lora"]]
  assert all(b_moved)
  state, metrics = step(state, batch, None)
  assert np.isfinite(float(metrics["loss"]))
  after_params, after_frozen = jax.tree.map(np.asarray, (state.params, state.frozen))
  for x, y in zip(jax.tree.leaves(before[1]), jax.tree.leaves(after_frozen)):
    np.testing.assert_array_equal(x, y)
  changed = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before[0]),
                                                      jax.tree.leaves(after_params))]
  assert all(changed)
  # The exported model differs from the base only in adapted projections.
  exported = dict(nnx.to_flat_state(nnx.state(spec.export(state.params, state.frozen),
                                              nnx.Param)))
  base = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  for path in base:
    same = np.array_equal(np.asarray(base[path].get_value()),
                          np.asarray(exported[path].get_value()))
    assert same == (path[-1] not in ("q", "v", "gate")), path


def test_lora_reward_model_trains_adapters_and_head():
  rm = ScalarHeadModel(_model(), rngs=nnx.Rngs(0))
  opt = common.make_optimizer(5e-2)
  spec, state = reward.init_reward_state(rm, opt, lora=LoRAConfig(rank=2, alpha=2))
  assert sorted(state.params["full"]) == ["head.bias", "head.kernel"]
  step = reward.make_reward_step(spec, opt)
  batch = _pair_batch(4)
  losses = []
  for _ in range(4):
    state, m = step(state, batch, None)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0, alpha=1), "rank=0"),
    (dict(rank=2, alpha=0), "alpha=0"),
    (dict(rank=2, alpha=1, targets=("q", "wq")), "targets"),
    (dict(rank=2, alpha=1, targets=()), "targets"),
])
def test_lora_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    LoRAConfig(**kwargs)


def test_train_also_must_match_a_parameter():
  with pytest.raises(ValueError, match="train_also"):
    common.prepare_model(_model(), LoRAConfig(rank=2, alpha=2, train_also=("nope",)))
