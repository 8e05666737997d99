"""Import llama.cpp GGUF checkpoints: config, (de)quantised weights and the tokenizer.

    model, tokenizer = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

Everything comes from the file itself (no tokenizer.json, no hub): the `TransformerConfig` from
the `{arch}.*` metadata, the weights from its tensors (dequantised to float32 with
`gguf.quants.dequantize`, then cast to `dtype`), and a byte-level BPE `tokenizers.Tokenizer`
from `tokenizer.ggml.*` plus the chat template.

Two llama.cpp conventions are undone here:
- Shapes: GGUF lists a tensor's dims fastest-first (ggml `ne`); NumPy's shape is the reverse,
  which is exactly PyTorch's `[out, in]` layout of a linear layer.
- RoPE: for "llama" files, llama.cpp's converter permutes the rows of attn_q / attn_k within
  each head from HF's rotate-half layout to interleaved pairs (its "normal" RoPE). We invert that
  permutation so our rotate-half RoPE computes the same thing. "qwen2" files are not permuted
  (llama.cpp runs them with NeoX = rotate-half RoPE).

Supported: architectures "llama" (Llama, Mistral, SmolLM, …) and "qwen2"; tensor types F32,
F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q2_K…Q6_K; tokenizer model "gpt2"
(byte-level BPE). Anything else raises a ValueError that names it.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np

from dera_jax.models.config import DTYPES, TransformerConfig

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
SUPPORTED_TOKENIZERS = ("gpt2",)
_SUPPORTED_TYPE_NAMES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K",
                         "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# llama.cpp token types (tokenizer.ggml.token_type).
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer split regexes, by tokenizer.ggml.pre (those of llama.cpp's llama-vocab.cpp).
_GPT2_SPLIT = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = {
    # name: (split digits one by one first, split regex)
    "default": (False, _GPT2_SPLIT),
    "gpt2": (False, _GPT2_SPLIT),
    "smollm": (True, _GPT2_SPLIT),
    "llama3": (False, _LLAMA3_SPLIT),
    "llama-v3": (False, _LLAMA3_SPLIT),
    "llama-bpe": (False, _LLAMA3_SPLIT),
    "smaug-bpe": (False, _LLAMA3_SPLIT),
    "qwen2": (False, _QWEN2_SPLIT),
    "deepseek-r1-qwen": (False, _QWEN2_SPLIT),
}


# ----------------------------------------------------------------------------- reading


class _File:
  """A parsed GGUF file: metadata values and tensor records, with path-naming errors."""

  def __init__(self, path: str | os.PathLike):
    import gguf

    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"{self.path}: no such GGUF file")
    with open(self.path, "rb") as fh:
      magic = fh.read(4)
    if magic != b"GGUF":
      raise ValueError(f"{self.path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
      self.reader = gguf.GGUFReader(self.path, "r")
    except Exception as e:  # a truncated or foreign file fails deep inside the parser
      raise ValueError(f"{self.path}: not a readable GGUF file (truncated or corrupt?): "
                       f"{type(e).__name__}: {e}") from e
    self.tensors = {t.name: t for t in self.reader.tensors}
    size = self.path.stat().st_size
    for t in self.reader.tensors:
      end = int(t.data_offset) + int(t.n_bytes)
      if end > size or t.data.nbytes != int(t.n_bytes):
        raise ValueError(f"{self.path}: truncated: tensor {t.name!r} needs bytes up to {end}, "
                         f"the file has {size}")

  def get(self, key: str, default=None):
    field = self.reader.fields.get(key)
    if field is None:
      return default
    try:
      return field.contents()
    except Exception as e:
      raise ValueError(f"{self.path}: metadata {key!r} cannot be read: {e}") from e

  def require(self, key: str):
    value = self.get(key)
    if value is None:
      raise ValueError(f"{self.path}: metadata {key!r} is missing")
    return value

  def array(self, name: str) -> np.ndarray:
    """Tensor `name` dequantised to float32, in NumPy (= PyTorch [out, in]) orientation."""
    from gguf import GGMLQuantizationType, quants

    t = self.tensors.get(name)
    if t is None:
      raise ValueError(f"{self.path}: tensor {name!r} is missing")
    qtype = GGMLQuantizationType(int(t.tensor_type))
    if qtype.name not in _SUPPORTED_TYPE_NAMES:
      raise ValueError(f"{self.path}: tensor {name!r} has type {qtype.name}, which this "
                       f"importer does not dequantise; supported: {list(_SUPPORTED_TYPE_NAMES)}")
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    try:
      value = quants.dequantize(np.asarray(t.data), qtype)
    except Exception as e:
      raise ValueError(f"{self.path}: tensor {name!r} ({qtype.name}, shape {shape}) cannot be "
                       f"dequantised: {e}") from e
    return np.asarray(value, np.float32).reshape(shape)


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Invert llama.cpp's `permute` of attn_q/attn_k rows ([n_heads * hd, ...] or bias [n*hd]).

  llama.cpp maps row (head, half, j) of HF's rotate-half layout to (head, j, half): pairs of
  rotated dims become adjacent. This maps them back.
  """
  rest = w.shape[1:]
  hd = w.shape[0] // n_heads
  return w.reshape(n_heads, hd // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- config


def _config(f: _File, dtype: str) -> TransformerConfig:
  arch = f.require("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{f.path}: general.architecture={arch!r} is not supported; supported: "
                     f"{list(SUPPORTED_ARCHITECTURES)}")
  if dtype not in DTYPES:
    raise ValueError(f"load_gguf: dtype={dtype!r}: must be one of {DTYPES}")
  key = lambda k: f"{arch}.{k}"
  d_model = int(f.require(key("embedding_length")))
  num_heads = int(f.require(key("attention.head_count")))
  num_kv_heads = int(f.get(key("attention.head_count_kv"), num_heads))
  head_dim = int(f.get(key("attention.key_length"), d_model // num_heads))
  value_dim = int(f.get(key("attention.value_length"), head_dim))
  rope_dim = int(f.get(key("rope.dimension_count"), head_dim))
  if value_dim != head_dim or rope_dim != head_dim:
    raise ValueError(f"{f.path}: key_length={head_dim}, value_length={value_dim}, "
                     f"rope.dimension_count={rope_dim}: only equal key/value head dims with "
                     "full-width RoPE are supported")
  scaling = f.get(key("rope.scaling.type"))
  if (scaling not in (None, "none") and float(f.get(key("rope.scaling.factor"), 1.0)) != 1.0) \
      or "rope_freqs.weight" in f.tensors:
    raise ValueError(f"{f.path}: RoPE scaling ({scaling or 'rope_freqs.weight'}) is not "
                     "supported")
  tokens = f.require("tokenizer.ggml.tokens")
  vocab_size = len(tokens)
  embed = f.tensors.get("token_embd.weight")
  if embed is None:
    raise ValueError(f"{f.path}: tensor 'token_embd.weight' is missing")
  embed_rows = int(embed.shape[-1])
  if embed_rows != vocab_size:
    raise ValueError(f"{f.path}: token_embd.weight has {embed_rows} rows but "
                     f"tokenizer.ggml.tokens lists {vocab_size} tokens")
  window = f.get(key("attention.sliding_window"))
  return TransformerConfig(
      vocab_size=vocab_size,
      d_model=d_model,
      num_layers=int(f.require(key("block_count"))),
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=head_dim,
      mlp_dim=int(f.require(key("feed_forward_length"))),
      max_seq_len=int(f.get(key("context_length"), 2048)),
      rope_theta=float(f.get(key("rope.freq_base"), 10_000.0)),
      norm_eps=float(f.get(key("attention.layer_norm_rms_epsilon"), 1e-5)),
      tie_embeddings="output.weight" not in f.tensors,
      qkv_bias="blk.0.attn_q.bias" in f.tensors,
      sliding_window=int(window) if window else None,
      dtype=dtype,
      param_dtype=dtype,
  )


def gguf_config(path: str | os.PathLike, *, dtype: str = "float32") -> TransformerConfig:
  """The `TransformerConfig` a GGUF file describes (reads metadata only)."""
  return _config(_File(path), dtype)


# ----------------------------------------------------------------------------- weights


def _weights(f: _File, cfg: TransformerConfig) -> dict[str, np.ndarray]:
  """All tensors of `f` in `dera_jax.models.weights` layout (float32)."""
  arch = f.get("general.architecture")
  permuted = arch == "llama"  # llama.cpp permutes q/k rows for llama only
  h, kv, hd, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model

  def proj(name, n_heads, rope):  # [n*hd, D] -> [D, n, hd]
    w = f.array(name)
    if w.shape != (n_heads * hd, d):
      raise ValueError(f"{f.path}: tensor {name!r} has shape {w.shape}, the metadata implies "
                       f"{(n_heads * hd, d)}")
    if rope and permuted:
      w = _unpermute_rope_rows(w, n_heads)
    return w.reshape(n_heads, hd, d).transpose(2, 0, 1)

  def bias(name, n_heads, rope):  # [n*hd] -> [n, hd]
    b = f.array(name)
    if rope and permuted:
      b = _unpermute_rope_rows(b, n_heads)
    return b.reshape(n_heads, hd)

  per_layer: dict[str, list[np.ndarray]] = {}
  for i in range(cfg.num_layers):
    p = f"blk.{i}."
    layer = {
        "attn_norm": f.array(p + "attn_norm.weight"),
        "q": proj(p + "attn_q.weight", h, True),
        "k": proj(p + "attn_k.weight", kv, True),
        "v": proj(p + "attn_v.weight", kv, False),
        "o": f.array(p + "attn_output.weight").T.reshape(h, hd, d),
        "mlp_norm": f.array(p + "ffn_norm.weight"),
        "gate": f.array(p + "ffn_gate.weight").T,
        "up": f.array(p + "ffn_up.weight").T,
        "down": f.array(p + "ffn_down.weight").T,
    }
    if cfg.qkv_bias:
      layer["q_bias"] = bias(p + "attn_q.bias", h, True)
      layer["k_bias"] = bias(p + "attn_k.bias", kv, True)
      layer["v_bias"] = bias(p + "attn_v.bias", kv, False)
    for name, value in layer.items():
      per_layer.setdefault(name, []).append(value)

  arrays = {f"layers.{name}": np.stack(values) for name, values in per_layer.items()}
  arrays["embed"] = f.array("token_embd.weight")
  arrays["final_norm"] = f.array("output_norm.weight")
  if not cfg.tie_embeddings:
    arrays["lm_head"] = f.array("output.weight").T
  return arrays


def _model(f: _File, dtype: str):
  from flax import nnx

  from dera_jax.models.transformer import Transformer
  from dera_jax.models.weights import assign_weights

  cfg = _config(f, dtype)
  arrays = _weights(f, cfg)
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  assign_weights(model, arrays, source=str(f.path))
  return model


def load_gguf_model(path: str | os.PathLike, *, dtype: str = "float32"):
  """The `Transformer` of a GGUF file, weights dequantised and cast to `dtype`."""
  return _model(_File(path), dtype)


# ----------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table of byte-level BPE."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _byte_level_backend(f: _File, tokens: list[str]):
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

  merges = f.get("tokenizer.ggml.merges")
  if not merges:
    raise ValueError(f"{f.path}: tokenizer.ggml.model='gpt2' needs tokenizer.ggml.merges")
  spelling = _bytes_to_unicode()
  alphabet = set(spelling.values())
  vocab = {}
  for i, token in enumerate(tokens):
    # llama.cpp writes a few tokens (e.g. runs of spaces) as raw text: respell them as bytes.
    if not set(token) <= alphabet:
      token = "".join(spelling[b] for b in token.encode("utf-8"))
    vocab.setdefault(token, i)
  pairs = [tuple(m.split(" ", 1)) for m in merges]
  backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None,
                                 continuing_subword_prefix="", end_of_word_suffix="",
                                 fuse_unk=False, byte_fallback=False))
  pre = f.get("tokenizer.ggml.pre", "default")
  if pre not in _PRE_TOKENIZERS:
    warnings.warn(f"{f.path}: tokenizer.ggml.pre={pre!r} is not known here; splitting text "
                  f"with GPT-2's regex (known: {sorted(_PRE_TOKENIZERS)})")
    pre = "default"
  digits, split = _PRE_TOKENIZERS[pre]
  steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
  steps += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
  backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
  backend.decoder = decoders.ByteLevel()
  types = f.get("tokenizer.ggml.token_type") or []
  special = [AddedToken(t, special=True, normalized=False)
             for t, kind in zip(tokens, types) if kind == _CONTROL]
  user = [AddedToken(t, special=False, normalized=False)
          for t, kind in zip(tokens, types) if kind == _USER_DEFINED]
  if special:
    backend.add_special_tokens(special)
  if user:
    backend.add_tokens(user)
  return backend


def _tokenizer(f: _File):
  from dera_jax.data.tokenizer import Tokenizer

  kind = f.require("tokenizer.ggml.model")
  if kind not in SUPPORTED_TOKENIZERS:
    raise ValueError(f"{f.path}: tokenizer.ggml.model={kind!r} is not supported; supported: "
                     f"{list(SUPPORTED_TOKENIZERS)}")
  tokens = list(f.require("tokenizer.ggml.tokens"))
  backend = _byte_level_backend(f, tokens)

  def token_id(key):
    value = f.get(f"tokenizer.ggml.{key}")
    if value is None:
      return None
    value = int(value)
    if not 0 <= value < len(tokens):
      raise ValueError(f"{f.path}: tokenizer.ggml.{key}={value} is outside the vocabulary "
                       f"(0..{len(tokens) - 1})")
    return value

  bos = token_id("bos_token_id")
  eos_ids = []
  for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
    value = token_id(key)
    if value is not None and value not in eos_ids:
      eos_ids.append(value)
  add_bos = f.get("tokenizer.ggml.add_bos_token")
  return Tokenizer(backend, bos_id=bos, eos_ids=eos_ids, pad_id=token_id("padding_token_id"),
                   add_bos=bool(add_bos) if add_bos is not None else False,
                   chat_template=f.get("tokenizer.chat_template"))


def load_gguf_tokenizer(path: str | os.PathLike):
  """The `dera_jax.data.tokenizer.Tokenizer` a GGUF file's metadata describes."""
  return _tokenizer(_File(path))


# ----------------------------------------------------------------------------- both


def load_gguf(path: str | os.PathLike, *, dtype: str = "float32"):
  """Load a GGUF checkpoint.

  Args:
    path: a .gguf file (one shard).
    dtype: compute and parameter dtype of the model ("float32", "bfloat16", "float16"); the
      weights are dequantised to float32 first, then cast.
  Returns:
    (model, tokenizer): a `Transformer` and a `dera_jax.data.tokenizer.Tokenizer`.
  Raises:
    ValueError naming the file and the field/tensor for an unsupported architecture, tokenizer
    or tensor type, a missing tensor, a shape mismatch, or a truncated file.
  """
  f = _File(path)
  tokenizer = _tokenizer(f)
  return _model(f, dtype), tokenizer
