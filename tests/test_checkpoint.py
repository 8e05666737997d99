"""orbax save/restore of a Transformer and its config."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from dera_jax.models import Transformer, tiny_config
from dera_jax.models.checkpoint import load_checkpoint, load_config, save_checkpoint


def _model(**kw):
  cfg = tiny_config(vocab_size=50, init_std=0.2, **kw)
  model = Transformer(cfg, rngs=nnx.Rngs(1))
  if cfg.qkv_bias:
    bias = model.layers.q_bias
    bias[...] = jax.random.normal(jax.random.key(3), bias.shape).astype(bias[...].dtype)
  return model


def _params(model):
  return {"/".join(map(str, k)): np.asarray(v.get_value())
          for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("kw", [dict(), dict(qkv_bias=True, tie_embeddings=True,
                                             param_dtype="bfloat16", sliding_window=4)])
def test_save_and_restore_round_trip(tmp_path, kw):
  model = _model(**kw)
  save_checkpoint(model, tmp_path / "ckpt")
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary left behind
  restored = load_checkpoint(tmp_path / "ckpt", config=model.config)
  assert restored.config == model.config == load_config(tmp_path / "ckpt")
  a, b = _params(model), _params(restored)
  assert a.keys() == b.keys()
  for name in a:
    assert a[name].dtype == b[name].dtype, name
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_differing_expected_config_names_the_fields(tmp_path):
  model = _model()
  save_checkpoint(model, tmp_path / "ckpt")
  with pytest.raises(ValueError, match=r"num_layers: checkpoint has 2, expected 3; "
                     r"rope_theta: checkpoint has 10000.0, expected 500.0"):
    load_checkpoint(tmp_path / "ckpt", config=tiny_config(vocab_size=50, init_std=0.2,
                                                          num_layers=3, rope_theta=500.0))


def test_overwrite_and_missing_files(tmp_path):
  model = _model()
  save_checkpoint(model, tmp_path / "ckpt")
  with pytest.raises(FileExistsError, match="exists"):
    save_checkpoint(model, tmp_path / "ckpt")
  other = Transformer(model.config, rngs=nnx.Rngs(9))
  save_checkpoint(other, tmp_path / "ckpt", overwrite=True)
  np.testing.assert_array_equal(np.asarray(load_checkpoint(tmp_path / "ckpt").embed[...]),
                                np.asarray(other.embed[...]))
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]
  with pytest.raises(ValueError, match="config.json is missing"):
    load_checkpoint(tmp_path / "nowhere")


def test_config_with_unknown_or_bad_fields_is_named(tmp_path):
  save_checkpoint(_model(), tmp_path / "ckpt")
  path = tmp_path / "ckpt" / "config.json"
  fields = json.loads(path.read_text())
  path.write_text(json.dumps({**fields, "num_experts": 8}))
  with pytest.raises(ValueError, match=r"unknown TransformerConfig fields \['num_experts'\]"):
    load_checkpoint(tmp_path / "ckpt")
  path.write_text(json.dumps({**fields, "head_dim": 15}))
  with pytest.raises(ValueError, match="TransformerConfig.head_dim=15"):
    load_checkpoint(tmp_path / "ckpt")


def test_arrays_that_do_not_fit_the_config_are_rejected(tmp_path):
  save_checkpoint(_model(), tmp_path / "ckpt")
  path = tmp_path / "ckpt" / "config.json"
  fields = json.loads(path.read_text())
  path.write_text(json.dumps({**fields, "mlp_dim": 64}))
  with pytest.raises(ValueError, match=r"does not fit the stored config: layers.down is "
                     r"float32\[2, 128, 64\], the config needs float32\[2, 64, 64\]"):
    load_checkpoint(tmp_path / "ckpt")
  path.write_text(json.dumps({**fields, "tie_embeddings": True}))
  with pytest.raises(ValueError, match=r"unexpected \['lm_head'\]"):
    load_checkpoint(tmp_path / "ckpt")
