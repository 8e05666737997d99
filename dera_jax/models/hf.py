"""Hugging Face checkpoints: `load_hf` reads a local HF model directory into a `Transformer`
and a `Tokenizer`; `save_hf` writes one that transformers' `from_pretrained` reads back.

Families: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM. Weights
are read from safetensors files (one `model.safetensors` or shards listed in
`model.safetensors.index.json`) with a small reader of our own, so bfloat16 needs neither
PyTorch nor a framework: tensors are viewed as `ml_dtypes.bfloat16`. Shards are read one at a
time into preallocated stacked [L, ...] arrays; the model itself is created abstractly
(`nnx.eval_shape`) and only the final arrays are materialised.

HF -> our layout (HF Linear weights are [out, in]):

    model.embed_tokens.weight [V, D]              -> embed [V, D]
    lm_head.weight [V, D]                         -> lm_head [D, V]    (absent when tied)
    model.norm.weight [D]                         -> final_norm [D]
    layers.i.input_layernorm.weight [D]           -> layers.attn_norm[i]
    layers.i.self_attn.q_proj.weight [H*hd, D]    -> layers.q[i] [D, H, hd]   (heads major)
    layers.i.self_attn.{k,v}_proj.weight          -> layers.{k,v}[i] [D, KV, hd]
    layers.i.self_attn.{q,k,v}_proj.bias          -> layers.{q,k,v}_bias[i] [heads, hd]
    layers.i.self_attn.o_proj.weight [D, H*hd]    -> layers.o[i] [H, hd, D]
    layers.i.post_attention_layernorm.weight      -> layers.mlp_norm[i]
    layers.i.mlp.{gate,up}_proj.weight [F, D]     -> layers.{gate,up}[i] [D, F]
    layers.i.mlp.down_proj.weight [D, F]          -> layers.down[i] [F, D]
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any

import ml_dtypes
import numpy as np
from flax import nnx

from dera_jax.data.tokenizer import Tokenizer
from dera_jax.models.atomic import atomic_directory
from dera_jax.models.config import DTYPES, TransformerConfig
from dera_jax.models.transformer import Transformer
from dera_jax.models.weights import assign_weights, weight_shapes

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                 "GemmaForCausalLM")
_MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                "Qwen2ForCausalLM": "qwen2", "GemmaForCausalLM": "gemma"}
# Families' defaults of tie_word_embeddings when config.json omits it.
_TIED_DEFAULT = {"LlamaForCausalLM": False, "MistralForCausalLM": False,
                 "Qwen2ForCausalLM": False, "GemmaForCausalLM": True}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
_ACTIVATIONS_OUT = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16}
_CONFIG = "config.json"
_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_GENERATION = "generation_config.json"


# ------------------------------------------------------------------------------ config

def config_from_hf(hf: dict[str, Any], *, dtype: str = "float32",
                   param_dtype: str | None = None, source: str = _CONFIG) -> TransformerConfig:
  """A `TransformerConfig` from the dict of a HF config.json.

  Raises:
    ValueError naming `source` and the field for anything we cannot represent exactly.
  """
  archs = hf.get("architectures") or []
  arch = archs[0] if archs else None
  if arch is None:  # fall back on model_type
    arch = {v: k for k, v in _MODEL_TYPES.items()}.get(hf.get("model_type"))
  if arch not in ARCHITECTURES:
    raise ValueError(f"{source}: architecture {arch or hf.get('model_type')!r} is not "
                     f"supported; supported: {', '.join(ARCHITECTURES)}")
  param_dtype = dtype if param_dtype is None else param_dtype
  for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
    if value not in DTYPES:
      raise ValueError(f"load_hf: {name}={value!r} is not supported; allowed: {DTYPES}")

  def need(key):
    if key not in hf:
      raise ValueError(f"{source}: missing field {key!r}")
    return hf[key]

  d, heads = need("hidden_size"), need("num_attention_heads")
  kv_heads = hf.get("num_key_value_heads") or heads
  head_dim = hf.get("head_dim") or d // heads

  # RoPE: transformers v5 writes rope_parameters, v4 rope_theta (+ rope_scaling).
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
  for field, params in (("rope_parameters", rope), ("rope_scaling", scaling)):
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in (None, "default"):
      raise ValueError(f"{source}: {field} of type {kind!r} is not implemented (only plain "
                       "RoPE, rope_type 'default')")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
      raise ValueError(f"{source}: {field}.partial_rotary_factor="
                       f"{params['partial_rotary_factor']} is not implemented")

  act_name = hf.get("hidden_act")
  if arch == "GemmaForCausalLM":
    # Gemma's "gelu" is a legacy name of the tanh approximation (transformers rewrites it too).
    act_name = hf.get("hidden_activation") or act_name or "gelu_pytorch_tanh"
    if act_name == "gelu":
      act_name = "gelu_pytorch_tanh"
  act_name = act_name or "silu"
  if act_name not in _ACTIVATIONS:
    raise ValueError(f"{source}: hidden_act={act_name!r} is not supported; supported: "
                     f"{sorted(_ACTIVATIONS)}")

  if hf.get("mlp_bias"):
    raise ValueError(f"{source}: mlp_bias=true is not supported (no MLP biases in our layers)")
  if arch in ("LlamaForCausalLM", "GemmaForCausalLM", "MistralForCausalLM") and hf.get(
      "attention_bias"):
    raise ValueError(f"{source}: attention_bias=true puts a bias on o_proj, which is not "
                     "supported (only q/k/v biases, as in Qwen2)")
  if hf.get("use_bidirectional_attention"):
    raise ValueError(f"{source}: use_bidirectional_attention=true is not supported")

  window = None
  if arch == "MistralForCausalLM":
    window = hf.get("sliding_window")
  elif arch == "Qwen2ForCausalLM":
    types = hf.get("layer_types")
    if types is None and hf.get("use_sliding_window") and hf.get("sliding_window"):
      first = hf.get("max_window_layers", 0)
      types = ["sliding_attention" if i >= first else "full_attention"
               for i in range(need("num_hidden_layers"))]
    if types and hf.get("use_sliding_window", True) and hf.get("sliding_window"):
      if len(set(types)) > 1:
        raise ValueError(f"{source}: a mix of sliding-window and full-attention layers "
                         f"(layer_types={types}) is not supported")
      if types[0] == "sliding_attention":
        window = hf["sliding_window"]

  is_gemma = arch == "GemmaForCausalLM"
  return TransformerConfig(
      vocab_size=need("vocab_size"), d_model=d, num_layers=need("num_hidden_layers"),
      num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
      mlp_dim=need("intermediate_size"),
      max_seq_len=hf.get("max_position_embeddings") or 2048,
      rope_theta=float(theta), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      norm_add_one=is_gemma, activation=_ACTIVATIONS[act_name],
      tie_embeddings=bool(hf.get("tie_word_embeddings", _TIED_DEFAULT[arch])),
      qkv_bias=arch == "Qwen2ForCausalLM", scale_embeddings=is_gemma, sliding_window=window,
      dtype=dtype, param_dtype=param_dtype,
      init_std=float(hf.get("initializer_range") or 0.02))


def architecture_of(config: TransformerConfig) -> str:
  """The HF architecture that computes what `config` does.

  Raises:
    ValueError if no supported HF family has this combination of switches.
  """
  c = config
  if c.query_scale is not None and c.query_scale != c.head_dim ** -0.5:
    raise ValueError(f"save_hf: query_scale={c.query_scale} has no HF equivalent in "
                     f"{ARCHITECTURES}")
  if c.norm_add_one or c.scale_embeddings:
    if not (c.norm_add_one and c.scale_embeddings) or c.qkv_bias or c.sliding_window:
      raise ValueError(
          "save_hf: GemmaForCausalLM needs norm_add_one and scale_embeddings together, without "
          f"qkv_bias or sliding_window; got norm_add_one={c.norm_add_one}, scale_embeddings="
          f"{c.scale_embeddings}, qkv_bias={c.qkv_bias}, sliding_window={c.sliding_window}")
    return "GemmaForCausalLM"
  if c.qkv_bias:
    return "Qwen2ForCausalLM"
  if c.sliding_window:
    return "MistralForCausalLM"
  return "LlamaForCausalLM"


def config_to_hf(config: TransformerConfig, *, bos_id: int | None = None,
                 eos_ids: tuple[int, ...] = (), pad_id: int | None = None) -> dict[str, Any]:
  """The config.json dict for `config` (inverse of `config_from_hf`)."""
  c = config
  arch = architecture_of(c)
  out: dict[str, Any] = {
      "architectures": [arch], "model_type": _MODEL_TYPES[arch],
      "vocab_size": c.vocab_size, "hidden_size": c.d_model,
      "intermediate_size": c.mlp_dim, "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim, "hidden_act": _ACTIVATIONS_OUT[c.activation],
      "max_position_embeddings": c.max_seq_len, "initializer_range": c.init_std,
      "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
      "tie_word_embeddings": c.tie_embeddings, "attention_dropout": 0.0,
      "bos_token_id": bos_id, "pad_token_id": pad_id,
      "eos_token_id": (list(eos_ids) if len(eos_ids) > 1 else
                       (eos_ids[0] if eos_ids else None)),
      "torch_dtype": c.param_dtype, "dtype": c.param_dtype, "use_cache": True,
  }
  if arch in ("LlamaForCausalLM", "GemmaForCausalLM"):
    out.update(attention_bias=False)
  if arch == "LlamaForCausalLM":
    out.update(mlp_bias=False, pretraining_tp=1)
  if arch == "GemmaForCausalLM":
    out["hidden_activation"] = out["hidden_act"]
  if arch == "MistralForCausalLM":
    out["sliding_window"] = c.sliding_window
  if arch == "Qwen2ForCausalLM":
    window = c.sliding_window
    out.update(use_sliding_window=window is not None, sliding_window=window,
               max_window_layers=0 if window is not None else c.num_layers,
               layer_types=["sliding_attention" if window else "full_attention"] * c.num_layers)
  return out


# ------------------------------------------------------------------------- safetensors

class _SafetensorsFile:
  """A minimal safetensors reader: header validation and numpy tensors of any float dtype."""

  def __init__(self, path: str):
    self.path = path
    if not os.path.exists(path):
      raise ValueError(f"safetensors file {path} is missing")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise ValueError(f"{path}: truncated or not a safetensors file ({size} bytes)")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise ValueError(f"{path}: truncated safetensors file (header of {n} bytes, file of "
                         f"{size} bytes)")
      try:
        header = json.loads(f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (bad header: {e})") from e
    header.pop("__metadata__", None)
    self.base = 8 + n
    self.header = header
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if self.base + end > size:
      raise ValueError(f"{path}: truncated safetensors file: its header describes "
                       f"{self.base + end} bytes, the file has {size}")
    self._file = None

  def __enter__(self):
    self._file = open(self.path, "rb")
    return self

  def __exit__(self, *exc):
    self._file.close()
    self._file = None

  def keys(self):
    return self.header.keys()

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    dtype = _ST_DTYPES.get(info["dtype"])
    if dtype is None:
      raise ValueError(f"{self.path}: tensor {name} has dtype {info['dtype']}; weights must be "
                       f"one of {sorted(_ST_DTYPES)}")
    start, stop = info["data_offsets"]
    count = int(np.prod(info["shape"], dtype=np.int64))
    if (stop - start) != count * np.dtype(dtype).itemsize:
      raise ValueError(f"{self.path}: tensor {name}: {stop - start} bytes for shape "
                       f"{info['shape']} of {info['dtype']}")
    self._file.seek(self.base + start)
    data = np.fromfile(self._file, dtype=dtype, count=count)
    return data.reshape(info["shape"])


def _weight_files(path: str) -> dict[str, list[str]]:
  """file name -> the tensor names the index puts there (None: every tensor in the file)."""
  index_path = os.path.join(path, _INDEX)
  if os.path.exists(index_path):
    with open(index_path, encoding="utf-8") as f:
      try:
        weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{index_path}: not a safetensors index ({e})") from e
    files: dict[str, list[str]] = {}
    for tensor, file in weight_map.items():
      files.setdefault(file, []).append(tensor)
    for file in files:
      if not os.path.exists(os.path.join(path, file)):
        raise ValueError(f"{path}: shard {file} listed in {_INDEX} is missing")
    return files
  if os.path.exists(os.path.join(path, _SINGLE)):
    return {_SINGLE: None}
  found = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".gguf"))]
  raise ValueError(f"{path}: no {_SINGLE} or {_INDEX}" +
                   (f" (found {found}; only safetensors are read)" if found else ""))


_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "mlp_norm",
    "self_attn.q_proj.weight": "q", "self_attn.k_proj.weight": "k",
    "self_attn.v_proj.weight": "v", "self_attn.o_proj.weight": "o",
    "self_attn.q_proj.bias": "q_bias", "self_attn.k_proj.bias": "k_bias",
    "self_attn.v_proj.bias": "v_bias", "mlp.gate_proj.weight": "gate",
    "mlp.up_proj.weight": "up", "mlp.down_proj.weight": "down",
}
_TOP_NAMES = {"model.embed_tokens.weight": "embed", "embed_tokens.weight": "embed",
              "model.norm.weight": "final_norm", "norm.weight": "final_norm",
              "lm_head.weight": "lm_head"}
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def _hf_shape(name: str, c: TransformerConfig) -> tuple[int, ...]:
  """The HF shape of one tensor (per layer for layer weights), by our short name."""
  q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  return {"embed": (c.vocab_size, c.d_model), "lm_head": (c.vocab_size, c.d_model),
          "final_norm": (c.d_model,), "attn_norm": (c.d_model,), "mlp_norm": (c.d_model,),
          "q": (q, c.d_model), "k": (kv, c.d_model), "v": (kv, c.d_model), "o": (c.d_model, q),
          "q_bias": (q,), "k_bias": (kv,), "v_bias": (kv,), "gate": (c.mlp_dim, c.d_model),
          "up": (c.mlp_dim, c.d_model), "down": (c.d_model, c.mlp_dim)}[name]


def _read_weights(path: str, model, config: TransformerConfig) -> dict[str, np.ndarray]:
  """All weights in our layout, read shard by shard into preallocated stacked arrays.

  Every header is checked first (truncation, names, shapes, dtypes, coverage), so a bad
  checkpoint fails before any tensor data is read.
  """
  shapes = weight_shapes(model)
  filled = {name: np.zeros(shape[0] if name.startswith("layers.") else 1, bool)
            for name, shape in shapes.items()}
  plan, unexpected = [], []
  for file, listed in _weight_files(path).items():
    st = _SafetensorsFile(os.path.join(path, file))
    items = []
    for hf_name in (list(st.keys()) if listed is None else listed):
      if hf_name not in st.header:
        raise ValueError(f"{st.path}: tensor {hf_name} (listed in {_INDEX}) is missing")
      match = _LAYER.match(hf_name)
      if match:
        layer, ours = int(match.group(1)), _LAYER_NAMES.get(match.group(2))
        ours = ours and f"layers.{ours}"
      else:
        layer, ours = None, _TOP_NAMES.get(hf_name)
      if ours is None or ours not in shapes or (layer is not None
                                                and layer >= config.num_layers):
        if not (_IGNORED.search(hf_name) or (hf_name == "lm_head.weight"
                                             and config.tie_embeddings)):
          unexpected.append(hf_name)
        continue
      short = ours.split(".")[-1]
      info = st.header[hf_name]
      if tuple(info["shape"]) != _hf_shape(short, config):
        raise ValueError(f"{st.path}: tensor {hf_name} has shape {tuple(info['shape'])}, the "
                         f"config needs {_hf_shape(short, config)}")
      if info["dtype"] not in _ST_DTYPES:
        raise ValueError(f"{st.path}: tensor {hf_name} has dtype {info['dtype']}; weights "
                         f"must be one of {sorted(_ST_DTYPES)}")
      filled[ours][0 if layer is None else layer] = True
      items.append((hf_name, ours, short, layer))
    plan.append((st, items))
  if unexpected:
    raise ValueError(f"{path}: tensors the config does not account for: "
                     f"{unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
  missing = []
  for ours, done in filled.items():
    for i in np.flatnonzero(~done):
      missing.append(_hf_name(ours, int(i) if ours.startswith("layers.") else None))
  if missing:
    raise ValueError(f"{path}: tensors missing from the checkpoint: {missing[:8]}"
                     f"{' …' if len(missing) > 8 else ''}")

  np_dtype = _NP_DTYPES[config.param_dtype]
  arrays = {name: np.empty(shape, np_dtype) for name, shape in shapes.items()}
  for st, items in plan:  # one shard at a time, one tensor at a time
    with st:
      for hf_name, ours, short, layer in items:
        value = st.get(hf_name)
        if value.ndim == 2 and short != "embed":  # Linear [out, in] -> [in, out]
          value = value.T
        if layer is None:
          arrays[ours][...] = value.reshape(shapes[ours])
        else:
          arrays[ours][layer] = value.reshape(shapes[ours][1:])
        del value
  return arrays


def _hf_name(ours: str, layer: int | None) -> str:
  if layer is None:
    return {v: k for k, v in _TOP_NAMES.items() if k.startswith(("model.", "lm_"))}[ours]
  short = ours.split(".", 1)[1]
  suffix = {v: k for k, v in _LAYER_NAMES.items()}[short]
  return f"model.layers.{layer}.{suffix}"


# ----------------------------------------------------------------------------- public

def load_hf(path: str, *, dtype: str = "float32",
            param_dtype: str | None = None) -> tuple[Transformer, Tokenizer | None]:
  """Load a local HF checkpoint directory.

  Args:
    path: a directory with config.json, model.safetensors (or shards and
      model.safetensors.index.json), and tokenizer files.
    dtype: compute dtype of the model ("float32", "bfloat16", "float16").
    param_dtype: storage dtype of the parameters; None: the same as `dtype`.
  Returns:
    (model, tokenizer); tokenizer is None if the directory has no tokenizer files.
  Raises:
    ValueError naming the file, field or tensor for anything missing or unsupported.
  """
  path = os.fspath(path)
  config_path = os.path.join(path, _CONFIG)
  if not os.path.isdir(path):
    raise ValueError(f"load_hf: {path} is not a directory")
  if not os.path.exists(config_path):
    raise ValueError(f"load_hf: {config_path} is missing")
  with open(config_path, encoding="utf-8") as f:
    try:
      hf_config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{config_path}: not valid JSON ({e})") from e
  config = config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype, source=config_path)
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  arrays = _read_weights(path, model, config)
  assign_weights(model, arrays, source=path)
  del arrays

  tokenizer = None
  if any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model")):
    eos = _eos_ids(path, hf_config)
    tokenizer = Tokenizer.from_pretrained(path, eos_ids=eos)
  return model, tokenizer


def _eos_ids(path: str, hf_config: dict) -> list[int] | None:
  """generation_config.json's eos ids (None: let the tokenizer read them), else config.json's."""
  gen_path = os.path.join(path, _GENERATION)
  if os.path.exists(gen_path):
    with open(gen_path, encoding="utf-8") as f:
      if json.load(f).get("eos_token_id") is not None:
        return None
  eos = hf_config.get("eos_token_id")
  if eos is None:
    return None
  return [eos] if isinstance(eos, int) else list(eos)


def hf_weights(model: Transformer) -> dict[str, np.ndarray]:
  """The model's parameters as HF tensors (names and [out, in] layout), in param_dtype."""
  c = model.config
  np_dtype = _NP_DTYPES[c.param_dtype]
  get = lambda p: np.asarray(p[...]).astype(np_dtype)
  out = {"model.embed_tokens.weight": get(model.embed),
         "model.norm.weight": get(model.final_norm)}
  if not c.tie_embeddings:
    out["lm_head.weight"] = np.ascontiguousarray(get(model.lm_head).T)
  layers = model.layers
  names = ["attn_norm", "mlp_norm", "q", "k", "v", "o", "gate", "up", "down"]
  if c.qkv_bias:
    names += ["q_bias", "k_bias", "v_bias"]
  suffix = {v: k for k, v in _LAYER_NAMES.items()}
  for name in names:
    stacked = get(getattr(layers, name))
    for i in range(c.num_layers):
      w = stacked[i]
      if name in ("q", "k", "v"):
        w = w.reshape(c.d_model, -1).T
      elif name == "o":
        w = w.reshape(-1, c.d_model).T
      elif name in ("gate", "up", "down"):
        w = w.T
      elif name.endswith("_bias"):
        w = w.reshape(-1)
      out[f"model.layers.{i}.{suffix[name]}"] = np.ascontiguousarray(w)
  return out


def save_hf(model: Transformer, tokenizer: Tokenizer | None, path: str, *,
            overwrite: bool = False) -> None:
  """Write `model` (and `tokenizer`) as a HF checkpoint directory at `path`.

  Files: config.json, generation_config.json, model.safetensors, and the tokenizer's files.
  Everything is written into a temporary directory beside `path` and renamed into place, so a
  failure leaves nothing half-written.

  Raises:
    ValueError if the config has no HF equivalent; FileExistsError if `path` exists and not
    `overwrite`.
  """
  import safetensors.numpy

  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"save_hf: {path} exists (pass overwrite=True to replace it)")
  bos = getattr(tokenizer, "bos_id", None)
  eos = tuple(getattr(tokenizer, "eos_ids", ()) or ())
  pad = getattr(tokenizer, "pad_id", None)
  hf_config = config_to_hf(model.config, bos_id=bos, eos_ids=eos, pad_id=pad)
  with atomic_directory(path, overwrite=overwrite, what="save_hf") as tmp:
    with open(os.path.join(tmp, _CONFIG), "w", encoding="utf-8") as f:
      json.dump(hf_config, f, indent=2)
    generation = {"bos_token_id": bos, "pad_token_id": pad,
                  "eos_token_id": hf_config["eos_token_id"]}
    with open(os.path.join(tmp, _GENERATION), "w", encoding="utf-8") as f:
      json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)
    safetensors.numpy.save_file(hf_weights(model), os.path.join(tmp, _SINGLE),
                                metadata={"format": "pt"})
    if tokenizer is not None:
      if not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(f"save_hf: tokenizer of type {type(tokenizer).__name__} cannot be "
                         "saved in HF format (use dera_jax.data.tokenizer.Tokenizer)")
      tokenizer.save_pretrained(tmp)
