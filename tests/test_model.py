"""The decoder against independent references: a float64 NumPy forward pass, and its own
full-sequence forward versus cached decoding of uneven, left-padded prompts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dera_jax.models import Transformer, TransformerConfig, positions_from_mask, tiny_config

FAMILIES = {
    "llama_gqa": dict(),
    "gemma_mqa": dict(num_kv_heads=1, norm_add_one=True, activation="gelu_tanh",
                      tie_embeddings=True, scale_embeddings=True, head_dim=32),
    "qwen2_bias": dict(qkv_bias=True, num_kv_heads=4, rope_theta=1e6),
    "mistral_window": dict(sliding_window=3),
}


def _model(family, seed=0, **kw):
  cfg = tiny_config(vocab_size=50, init_std=0.2, **FAMILIES[family], **kw)
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  if cfg.qkv_bias:  # biases start at zero: give them values so they are tested
    for name in ("q_bias", "k_bias", "v_bias"):
      p = getattr(model.layers, name)
      p[...] = jax.random.normal(jax.random.key(7), p[...].shape) * 0.3
  return model


def _batch(lengths, t, vocab, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (len(lengths), t)).astype(np.int32)
  mask = np.zeros((len(lengths), t), bool)
  for b, n in enumerate(lengths):
    mask[b, t - n:] = True
  return np.where(mask, tokens, 0), mask


def _numpy_forward(model, tokens):
  """float64 reference: one unpadded sequence, written from the HF Llama/Gemma definitions."""
  c = model.config
  f = lambda x: np.asarray(x[...], np.float64)
  L = model.layers

  def norm(x, w):
    x = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + c.norm_eps)
    return x * (1 + w) if c.norm_add_one else x * w

  def rope(x, pos):
    hd = x.shape[-1]
    inv = 1.0 / c.rope_theta ** (np.arange(0, hd, 2) / hd)
    ang = np.concatenate([pos[:, None] * inv] * 2, -1)[:, None, :]
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * np.cos(ang) + np.concatenate([-x2, x1], -1) * np.sin(ang)

  def act(x):
    if c.activation == "silu":
      return x / (1 + np.exp(-x))
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

  t = len(tokens)
  pos = np.arange(t, dtype=np.float64)
  x = f(model.embed)[tokens]
  if c.scale_embeddings:
    x = x * np.sqrt(c.d_model)
  group = c.num_heads // c.num_kv_heads
  for l in range(c.num_layers):
    w = {k: f(getattr(L, k))[l] for k in ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate",
                                            "up", "down")}
    h = norm(x, w["attn_norm"])
    q = np.einsum("td,dhk->thk", h, w["q"])
    k = np.einsum("td,dhk->thk", h, w["k"])
    v = np.einsum("td,dhk->thk", h, w["v"])
    if c.qkv_bias:
      q, k, v = q + f(L.q_bias)[l], k + f(L.k_bias)[l], v + f(L.v_bias)[l]
    q, k = rope(q, pos), rope(k, pos)
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("thk,shk->hts", q, k) * c.attention_scale
    allowed = np.tril(np.ones((t, t), bool))
    if c.sliding_window:
      allowed &= (pos[:, None] - pos[None, :]) < c.sliding_window
    scores = np.where(allowed, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    x = x + np.einsum("hts,shk,hkd->td", p, v, w["o"])
    h = norm(x, w["mlp_norm"])
    x = x + (act(h @ w["gate"]) * (h @ w["up"])) @ w["down"]
  x = norm(x, f(model.final_norm))
  head = f(model.embed).T if c.tie_embeddings else f(model.lm_head)
  return x @ head


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_matches_float64_numpy_reference(family):
  model = _model(family)
  tokens = np.array([3, 17, 4, 49, 0, 22, 8], np.int32)
  mask = np.ones((1, len(tokens)), bool)
  logits, _ = model(tokens[None], positions_from_mask(mask), mask)
  reference = _numpy_forward(model, tokens)
  np.testing.assert_allclose(np.asarray(logits[0]), reference, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["stacked", "per_layer"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_decode_equals_full_forward_on_uneven_left_padded_prompts(family, layout):
  model = _model(family)
  if layout == "per_layer":
    model = model.for_decoding()
    assert not model.stacked
  lengths, t, prefill = [9, 5, 1, 7], 9, 6
  tokens, mask = _batch(lengths, t, model.vocab_size)
  positions = positions_from_mask(mask)
  full, _ = model(tokens, positions, mask)

  cache = model.init_cache(len(lengths), 16)
  first, cache = model(tokens[:, :prefill], positions[:, :prefill], mask[:, :prefill], cache)
  chunks = [first]
  for i in range(prefill, t):  # one token at a time
    logits, cache = model(tokens[:, i:i + 1], positions[:, i:i + 1], mask[:, i:i + 1], cache)
    chunks.append(logits)
  decoded = jnp.concatenate(chunks, axis=1)
  diff = np.abs(np.asarray(decoded - full))[mask]  # pads are meaningless in both
  assert diff.max() <= 1e-5, diff.max()
  assert int(cache.index) == t
  assert cache.per_layer == (layout == "per_layer")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_per_layer_layout_gives_the_stacked_models_logits_and_cache(family):
  stacked = _model(family)
  per_layer = stacked.for_decoding()
  assert per_layer.for_decoding() is per_layer
  assert [type(layer).__name__ for layer in per_layer.layers] == ["DecoderLayer"] * 2
  np.testing.assert_array_equal(per_layer.layers[1].down[...], stacked.layers.down[...][1])
  tokens, mask = _batch([7, 4, 1], 7, stacked.vocab_size, seed=1)
  positions = positions_from_mask(mask)
  full_s, _ = stacked(tokens, positions, mask)
  full_p, _ = per_layer(tokens, positions, mask)
  np.testing.assert_allclose(np.asarray(full_p), np.asarray(full_s), atol=1e-5)
  logits_s, cache_s = stacked(tokens, positions, mask, stacked.init_cache(3, 9))
  logits_p, cache_p = per_layer(tokens, positions, mask, per_layer.init_cache(3, 9))
  np.testing.assert_allclose(np.asarray(logits_p), np.asarray(logits_s), atol=1e-5)
  assert len(cache_p.k) == stacked.config.num_layers
  for i in range(stacked.config.num_layers):
    np.testing.assert_allclose(np.asarray(cache_p.k[i]), np.asarray(cache_s.k[i]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(cache_p.v[i]), np.asarray(cache_s.v[i]), atol=1e-5)
  tiled = cache_p.repeat(2)
  assert tiled.k[0].shape == (6, 9, *cache_p.k[0].shape[2:])
  np.testing.assert_array_equal(np.asarray(tiled.v[1][3:]), np.asarray(cache_p.v[1]))


def test_a_cache_of_the_other_layout_is_rejected():
  stacked = _model("llama_gqa")
  per_layer = stacked.for_decoding()
  tokens, mask = _batch([3], 3, stacked.vocab_size)
  positions = positions_from_mask(mask)
  with pytest.raises(ValueError, match="per-layer KV cache given to a model in the stacked"):
    stacked(tokens, positions, mask, per_layer.init_cache(1, 4))
  with pytest.raises(ValueError, match="stacked KV cache given to a model in the per-layer"):
    per_layer(tokens, positions, mask, stacked.init_cache(1, 4))


def test_the_per_layer_copy_does_not_follow_later_edits_of_the_stacked_model():
  stacked = _model("llama_gqa")
  per_layer = stacked.for_decoding()
  before = per_layer.layers[0].q[...]
  stacked.layers.q[...] = stacked.layers.q[...] * 2.0
  np.testing.assert_array_equal(per_layer.layers[0].q[...], before)


@pytest.mark.parametrize("family", ["llama_gqa", "mistral_window"])
def test_padding_does_not_change_a_rows_logits(family):
  model = _model(family)
  tokens, mask = _batch([6, 3], 6, model.vocab_size, seed=3)
  batched, _ = model(tokens, positions_from_mask(mask), mask)
  alone_tokens = tokens[1:, 3:]
  alone_mask = np.ones_like(alone_tokens, bool)
  alone, _ = model(alone_tokens, positions_from_mask(alone_mask), alone_mask)
  np.testing.assert_allclose(np.asarray(batched[1, 3:]), np.asarray(alone[0]), atol=1e-5)


def test_parameters_carry_logical_axis_names():
  model = _model("qwen2_bias")
  _, state = nnx.split(model)
  specs = {"/".join(map(str, path)): tuple(v.get_metadata()["out_sharding"])
           for path, v in nnx.to_flat_state(state)}
  assert specs["embed"] == ("vocab", "embed")
  assert specs["lm_head"] == ("embed", "vocab")
  assert specs["layers/q"] == ("layers", "embed", "heads", "head_dim")
  assert specs["layers/k"] == ("layers", "embed", "kv_heads", "head_dim")
  assert specs["layers/gate"] == ("layers", "embed", "mlp")
  assert specs["layers/down"] == ("layers", "mlp", "embed")
  assert all(axes for axes in specs.values())


def test_bfloat16_compute_keeps_float32_logits():
  model = Transformer(tiny_config(vocab_size=50, dtype="bfloat16"), rngs=nnx.Rngs(0))
  tokens, mask = _batch([4, 2], 4, 50)
  logits, _ = model(tokens, positions_from_mask(mask), mask)
  assert logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("field,value,message", [
    ("num_kv_heads", 3, "must divide num_heads=4"),
    ("head_dim", 15, "must be even"),
    ("vocab_size", 0, "positive integer"),
    ("activation", "relu", "must be one of"),
    ("dtype", "float8", "must be one of"),
    ("sliding_window", 0, "positive integer"),
])
def test_config_rejects_bad_values_naming_the_field(field, value, message):
  with pytest.raises(ValueError, match=f"TransformerConfig.{field}=.*{message}"):
    tiny_config(**{field: value})


def test_cache_longer_than_max_seq_len_is_rejected():
  model = Transformer(tiny_config(max_seq_len=8), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_len=9 exceeds the model's max_seq_len=8"):
    model.init_cache(1, 9)
