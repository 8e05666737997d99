"""HF checkpoint import/export against transformers (PyTorch) on random small models."""

import copy
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dera_jax.models import hf as hf_io  # noqa: E402
from dera_jax.models import positions_from_mask  # noqa: E402

_COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
               max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {
    "llama": (transformers.LlamaConfig, dict(rope_theta=5e4, rms_norm_eps=1e-5)),
    "llama_tied_hd": (transformers.LlamaConfig, dict(tie_word_embeddings=True, head_dim=24,
                                                     num_key_value_heads=1)),
    "mistral": (transformers.MistralConfig, dict(sliding_window=4)),
    "qwen2": (transformers.Qwen2Config, dict(rope_theta=1e6, tie_word_embeddings=False)),
    "qwen2_tied": (transformers.Qwen2Config, dict(tie_word_embeddings=True,
                                                  num_key_value_heads=4)),
    "qwen2_window": (transformers.Qwen2Config, dict(use_sliding_window=True, sliding_window=3,
                                                    max_window_layers=0)),
    "gemma": (transformers.GemmaConfig, dict(head_dim=32, hidden_act="gelu_pytorch_tanh")),
}


def _hf_model(family, seed=0, dtype=torch.float32):
  cls, extra = FAMILIES[family]
  config = cls(**{**_COMMON, **extra})
  config._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  with torch.no_grad():  # norms and biases start at constants: make them random too
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.3 * torch.randn_like(p))
  return model.to(dtype).eval()


def _batch(lengths, t, vocab, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (len(lengths), t)).astype(np.int32)
  mask = np.zeros((len(lengths), t), bool)
  for b, n in enumerate(lengths):
    mask[b, t - n:] = True
  return np.where(mask, tokens, 0), mask


def _hf_logits(model, tokens, mask):
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.float().numpy()


def _our_logits(model, tokens, mask):
  logits, _ = model(tokens, positions_from_mask(mask), mask)
  return np.asarray(logits)


def _max_diff(a, b, mask):
  return float(np.abs(a - b)[mask].max())


LENGTHS, T = [7, 3, 5, 1], 7


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_then_export_matches_transformers(family, tmp_path):
  reference = _hf_model(family)
  reference.save_pretrained(tmp_path / "hf", safe_serialization=True)
  model, tokenizer = hf_io.load_hf(tmp_path / "hf")
  assert tokenizer is None
  c = model.config
  assert c.num_layers == 2 and c.vocab_size == 160
  tokens, mask = _batch(LENGTHS, T, c.vocab_size)
  expected = _hf_logits(reference, tokens, mask)
  assert expected[mask].std() > 0.1  # not flat
  diff = _max_diff(_our_logits(model, tokens, mask), expected, mask)
  print(f"{family}: import max |Δlogit| = {diff:.2e}")
  assert diff <= 1e-4
  if c.sliding_window:  # the window matters on these prompts, so it is tested
    import dataclasses
    from flax import nnx
    unwindowed = nnx.merge(*nnx.split(model))
    unwindowed.config = dataclasses.replace(c, sliding_window=None)
    assert _max_diff(_our_logits(unwindowed, tokens, mask), expected, mask) > 1e-3

  hf_io.save_hf(model, None, tmp_path / "ours")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "ours", attn_implementation="eager", dtype=torch.float32).eval()
  assert type(reloaded).__name__ == type(reference).__name__
  diff = _max_diff(_hf_logits(reloaded, tokens, mask), expected, mask)
  print(f"{family}: export max |Δlogit| = {diff:.2e}")
  assert diff <= 1e-5
  again, _ = hf_io.load_hf(tmp_path / "ours")
  assert again.config == model.config


def test_sharded_checkpoint(tmp_path):
  reference = _hf_model("qwen2", seed=1)
  reference.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="30KB")
  shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
  assert len(shards) > 2 and os.path.exists(tmp_path / "model.safetensors.index.json")
  model, _ = hf_io.load_hf(tmp_path)
  tokens, mask = _batch(LENGTHS, T, model.config.vocab_size, seed=1)
  diff = _max_diff(_our_logits(model, tokens, mask), _hf_logits(reference, tokens, mask), mask)
  print(f"sharded qwen2: max |Δlogit| = {diff:.2e}")
  assert diff <= 1e-4


def test_bfloat16_checkpoint(tmp_path):
  reference = _hf_model("llama", seed=2)
  with torch.no_grad():  # round the weights to bf16, keep the float32 model as the reference
    for p in reference.parameters():
      p.copy_(p.bfloat16().float())
  # (Casting the model itself would also round its RoPE inv_freq buffer to bf16.)
  copy.deepcopy(reference).to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
  header_len = int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
  header = json.loads((tmp_path / "model.safetensors").read_bytes()[8:8 + header_len])
  assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
  tokens, mask = _batch(LENGTHS, T, 160, seed=2)
  # bf16 -> f32 is exact, so the float32 import equals the float32 upcast of the bf16 model.
  expected = _hf_logits(reference, tokens, mask)
  model, _ = hf_io.load_hf(tmp_path, dtype="float32")
  diff = _max_diff(_our_logits(model, tokens, mask), expected, mask)
  print(f"bf16 checkpoint as float32: max |Δlogit| = {diff:.2e}")
  assert diff <= 1e-4
  model16, _ = hf_io.load_hf(tmp_path, dtype="bfloat16")
  assert model16.embed[...].dtype == np.dtype("bfloat16")
  diff = _max_diff(_our_logits(model16, tokens, mask), expected, mask)
  print(f"bf16 checkpoint in bfloat16: max |Δlogit| = {diff:.2e}")
  assert diff <= 0.1 * np.abs(expected[mask]).max()
  mixed, _ = hf_io.load_hf(tmp_path, dtype="float32", param_dtype="bfloat16")
  assert mixed.embed[...].dtype == np.dtype("bfloat16") and mixed.config.dtype == "float32"
  # Export keeps bf16 storage; transformers reads it back (upcast to f32 exactly).
  hf_io.save_hf(mixed, None, tmp_path / "out")
  assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "out", attn_implementation="eager", dtype=torch.float32).eval()
  diff = _max_diff(_hf_logits(reloaded, tokens, mask), expected, mask)
  assert diff <= 1e-5


# ------------------------------------------------------------------------ bad input

@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("llama")
  _hf_model("llama").save_pretrained(path, safe_serialization=True)
  return path


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("sharded")
  _hf_model("llama").save_pretrained(path, safe_serialization=True, max_shard_size="30KB")
  return path


def _copy(src, tmp_path):
  import shutil
  dst = tmp_path / "ckpt"
  shutil.copytree(src, dst)
  return dst


def _edit_config(path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))


def test_unknown_architecture_is_named_with_the_supported_ones(llama_dir, tmp_path):
  path = _copy(llama_dir, tmp_path)
  _edit_config(path, architectures=["FalconForCausalLM"], model_type="falcon")
  with pytest.raises(ValueError, match="'FalconForCausalLM' is not supported.*"
                     "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM"):
    hf_io.load_hf(path)


@pytest.mark.parametrize("field,value", [
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
    ("rope_scaling", {"type": "linear", "factor": 2.0}),
])
def test_unimplemented_rope_scaling_is_named(llama_dir, tmp_path, field, value):
  path = _copy(llama_dir, tmp_path)
  _edit_config(path, **{field: value})
  kind = value.get("rope_type", value.get("type"))
  with pytest.raises(ValueError, match=f"{field} of type '{kind}' is not implemented"):
    hf_io.load_hf(path)


def test_attention_bias_with_o_proj_bias_is_rejected(llama_dir, tmp_path):
  path = _copy(llama_dir, tmp_path)
  _edit_config(path, attention_bias=True)
  with pytest.raises(ValueError, match="attention_bias=true puts a bias on o_proj"):
    hf_io.load_hf(path)


def test_missing_config_json(llama_dir, tmp_path):
  path = _copy(llama_dir, tmp_path)
  os.remove(path / "config.json")
  with pytest.raises(ValueError, match="config.json is missing"):
    hf_io.load_hf(path)


def test_missing_weights_file(llama_dir, tmp_path):
  path = _copy(llama_dir, tmp_path)
  os.remove(path / "model.safetensors")
  with pytest.raises(ValueError, match="no model.safetensors or model.safetensors.index.json"):
    hf_io.load_hf(path)


def test_missing_shard_is_named(sharded_dir, tmp_path):
  path = _copy(sharded_dir, tmp_path)
  index = json.loads((path / "model.safetensors.index.json").read_text())
  shard = sorted(set(index["weight_map"].values()))[1]
  os.remove(path / shard)
  with pytest.raises(ValueError, match=f"shard {shard} listed in "
                     "model.safetensors.index.json is missing"):
    hf_io.load_hf(path)


def test_missing_tensor_is_named(llama_dir, tmp_path):
  import safetensors.numpy
  path = _copy(llama_dir, tmp_path)
  tensors = safetensors.numpy.load_file(path / "model.safetensors")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  safetensors.numpy.save_file(tensors, path / "model.safetensors")
  with pytest.raises(ValueError, match=r"missing from the checkpoint: "
                     r"\['model.layers.1.mlp.up_proj.weight'\]"):
    hf_io.load_hf(path)


def test_tensor_listed_in_index_but_absent_from_its_shard(sharded_dir, tmp_path):
  path = _copy(sharded_dir, tmp_path)
  index = json.loads((path / "model.safetensors.index.json").read_text())
  index["weight_map"]["model.layers.0.mlp.extra.weight"] = index["weight_map"]["model.norm.weight"]
  (path / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match="tensor model.layers.0.mlp.extra.weight .listed in "
                     "model.safetensors.index.json. is missing"):
    hf_io.load_hf(path)


def test_unexpected_tensor_is_named(llama_dir, tmp_path):
  import safetensors.numpy
  path = _copy(llama_dir, tmp_path)
  tensors = safetensors.numpy.load_file(path / "model.safetensors")
  tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(64, np.float32)
  safetensors.numpy.save_file(tensors, path / "model.safetensors")
  with pytest.raises(ValueError, match="does not account for.*o_proj.bias"):
    hf_io.load_hf(path)


def test_wrong_tensor_shape_is_named(llama_dir, tmp_path):
  path = _copy(llama_dir, tmp_path)
  _edit_config(path, intermediate_size=128)
  with pytest.raises(ValueError, match=r"model.safetensors: tensor model.layers.0.mlp.\w+_proj"
                     r".weight has shape \(\d+, \d+\), the config needs"):
    hf_io.load_hf(path)


def test_truncated_safetensors_file_is_named(llama_dir, tmp_path):
  path = _copy(llama_dir, tmp_path)
  file = path / "model.safetensors"
  data = file.read_bytes()
  file.write_bytes(data[:len(data) - 1000])
  with pytest.raises(ValueError, match=r"model.safetensors: truncated safetensors file"):
    hf_io.load_hf(path)
  file.write_bytes(data[:5])
  with pytest.raises(ValueError, match=r"model.safetensors: truncated"):
    hf_io.load_hf(path)


@pytest.mark.parametrize("kw", [dict(dtype="float64"), dict(param_dtype="int8")])
def test_unsupported_dtype_is_named_with_the_allowed_ones(llama_dir, kw):
  (name, value), = kw.items()
  with pytest.raises(ValueError, match=f"{name}='{value}' is not supported; allowed: "
                     r"\('float32', 'bfloat16', 'float16'\)"):
    hf_io.load_hf(llama_dir, **kw)


def test_save_hf_rejects_configs_without_a_hf_family(tmp_path):
  from flax import nnx

  from dera_jax.models import Transformer, tiny_config
  config = tiny_config(vocab_size=50, norm_add_one=True)
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="GemmaForCausalLM needs norm_add_one and "
                     "scale_embeddings together"):
    hf_io.save_hf(model, None, tmp_path / "out")
  assert os.listdir(tmp_path) == []


def test_save_hf_is_atomic_and_does_not_overwrite_by_default(llama_dir, tmp_path):
  model, _ = hf_io.load_hf(llama_dir)

  class Broken:
    bos_id, eos_ids, pad_id = 1, (2,), 0

    def save_pretrained(self, path):
      raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    hf_io.save_hf(model, Broken(), tmp_path / "out")
  assert os.listdir(tmp_path) == []  # no half-written directory, no temporary left behind

  hf_io.save_hf(model, None, tmp_path / "out")
  with pytest.raises(FileExistsError, match="exists"):
    hf_io.save_hf(model, None, tmp_path / "out")
  hf_io.save_hf(model, None, tmp_path / "out", overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["out"]
  assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "generation_config.json",
                                                   "model.safetensors"]


def _hf_tokenizer(vocab_size):
  from tokenizers import Tokenizer as Backend
  from tokenizers import decoders, models, pre_tokenizers, processors
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size - 1)},
           "<|end|>": vocab_size - 1}
  backend = Backend(models.WordLevel(vocab, unk_token="<pad>"))
  backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  backend.decoder = decoders.WordPiece(prefix="##")
  backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
      ("<s>", 1)])
  template = ("{% for m in messages %}{{ bos_token if loop.first }}{{ m['role'] }}: "
              "{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}assistant:"
              "{% endif %}")
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
      additional_special_tokens=["<|end|>"], chat_template=template)


def test_checkpoint_with_tokenizer_round_trips(tmp_path):
  reference = _hf_model("llama", seed=3)
  reference.generation_config.eos_token_id = [159, 2]
  reference.save_pretrained(tmp_path / "hf", safe_serialization=True)
  hf_tok = _hf_tokenizer(160)
  hf_tok.save_pretrained(tmp_path / "hf")
  model, tok = hf_io.load_hf(tmp_path / "hf")
  assert tok.eos_ids == (159, 2) and tok.bos_id == 1 and tok.pad_id == 0 and tok.add_bos
  text = "w5 w17 w3 w150"
  assert tok.encode(text) == hf_tok.encode(text) == [1, 5, 17, 3, 150]
  messages = [{"role": "user", "content": "w4 w5"}]
  assert tok.apply_chat_template(messages) == hf_tok.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True)

  hf_io.save_hf(model, tok, tmp_path / "ours")
  hf_tok2 = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
  assert hf_tok2.encode(text) == tok.encode(text)
  assert hf_tok2.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
      tok.apply_chat_template(messages))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "ours", attn_implementation="eager", dtype=torch.float32).eval()
  assert list(reloaded.generation_config.eos_token_id) == [159, 2]
  assert reloaded.config.bos_token_id == 1 and reloaded.config.pad_token_id == 0
  tokens, mask = _batch(LENGTHS, T, 160, seed=3)
  diff = _max_diff(_hf_logits(reloaded, tokens, mask), _hf_logits(reference, tokens, mask), mask)
  assert diff <= 1e-5
  _, tok2 = hf_io.load_hf(tmp_path / "ours")
  assert (tok2.eos_ids, tok2.bos_id, tok2.pad_id, tok2.add_bos) == (
      tok.eos_ids, tok.bos_id, tok.pad_id, tok.add_bos)
