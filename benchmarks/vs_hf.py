"""DeRa decoding: our jitted sampler against the transformers (PyTorch) ways of doing it.

On the same weights, for each model pair (SFT, aligned) — `tiny` and `100m` (random Llama
configs built by transformers with seeds 0 and 1, written with `save_pretrained` and read into
ours with `load_hf`) and `smollm2` (SmolLM2-135M-Instruct from its Q4_1 GGUF, paired with a
copy whose weights carry seeded Gaussian noise) — it times greedy decoding from
softmax(λ·h_aligned + (1−λ)·h_sft):

  (a) ours:        `DeRaSampler`, float32, stack_models=True ("stacked"), False ("pair") and
                   pair_devices=jax.devices()[:2] ("devices": each model on its own device;
                   this process starts with two CPU devices, which share the machine's cores);
  (b) hf_generate: the paper's demo — `aligned.generate(...)` with a `LogitsProcessor` that runs
                   the SFT model beside it with its own `DynamicCache` (fed one new token per
                   call), mixing λ·aligned + (1−λ)·sft logits; batch 1, fresh cache per call;
  (c) hf_loop:     a hand-written batched transformers loop: both models with their own caches,
                   left-padded batch, attention masks and position ids, no `generate()`.

Correctness comes first: greedy tokens of (a) stacked, (a) pair and (c) must agree on a batch
of ragged (left-padded) prompts, and (b) on some of its rows one at a time, at each λ of
--check_lambdas; a mismatch is written to the JSON and then fails the run.

Timing: every row decodes exactly --new_tokens tokens (no stop token, none of the methods can
stop early); one warm-up call, then the median of --repeats calls. Per method: new tokens/s,
prefill ms, and ms per decode step = (call − prefill) / (new_tokens − 1) (the first new token
comes out of the prefill; HF methods time their prefill inside each call, ours — one jitted
call — through separate calls of the sampler's jitted prefill). The batch-1 decode step is compared with a floor: the bytes of both
models' weights over the memory bandwidth measured here (numpy copies of a 1 GiB array), and,
for reference, over the read bandwidth (numpy sums of the same array).

    python -m benchmarks.vs_hf --out=benchmarks/results/vs_hf.json
    python -m benchmarks.vs_hf --models=tiny --batch_sizes=1,4 --repeats=1   # quick check
"""

from __future__ import annotations

import os

# Two CPU devices, so that (a) can also run with pair_devices; the other variants use the first
# (measured: one or two devices make no difference to them). Must precede the jax import;
# only when run as a program, so importing this module changes nothing.
if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=2").strip()

import concurrent.futures
import datetime
import gc
import inspect
import json
import platform
import resource
import shutil
import tempfile
import time

import jax
import numpy as np
import torch
import transformers
from absl import app, flags
from transformers import (AutoModelForCausalLM, DynamicCache, GenerationConfig, LogitsProcessor,
                          LogitsProcessorList)

from benchmarks.report import cpu_model
from dera_jax.models import fetch
from dera_jax.models.gguf import load_gguf
from dera_jax.models.hf import load_hf, save_hf
from dera_jax.sampling import DeRaSampler
from dera_jax.sampling import sampler as sampler_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "benchmarks/results/vs_hf.json", "JSON output path.")
flags.DEFINE_list("models", ["tiny", "100m", "smollm2"], "Model pairs to run.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes of (a) and (c); (b) is batch 1.")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per row in the timed calls.")
flags.DEFINE_list("new_tokens", [], "New tokens per row: one value for every model, or "
                  "name=value pairs; default tiny=64, 100m=32, smollm2=32.")
flags.DEFINE_integer("repeats", 3, "Timed calls per case after one warm-up (median reported).")
flags.DEFINE_float("lam", 0.5, "λ of the timed calls.")
flags.DEFINE_list("check_lambdas", ["0.5", "2.0"], "λ values of the greedy agreement check.")
flags.DEFINE_integer("check_batch", 4, "Rows of the agreement check: ragged, left-padded "
                     "prompts decoded as one batch by (a) and (c).")
flags.DEFINE_integer("check_rows", 2, "Rows of the check batch also decoded by (b), one at a "
                     "time.")
flags.DEFINE_float("perturb", 0.02, "smollm2: the aligned copy's noise, as a fraction of each "
                   "parameter array's standard deviation.")
flags.DEFINE_float("bandwidth_gib", 1.0, "Size of the array copied to measure bandwidth.")
flags.DEFINE_string("workdir", None, "Where the HF checkpoints are written (default: a "
                    "temporary folder, removed at the end).")

DEFAULT_NEW_TOKENS = {"tiny": 64, "100m": 32, "smollm2": 32}
_LLAMA = dict(rope_theta=10_000.0, rms_norm_eps=1e-5, max_position_embeddings=2048,
              tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
HF_CONFIGS = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, **_LLAMA),
    "100m": dict(vocab_size=32_000, hidden_size=768, intermediate_size=2048,
                 num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4, **_LLAMA),
}
TARGETS = {
    "a_vs_b_batch1": "ours (best variant) new tokens/s >= 2x (b) at batch 1",
    "a_vs_c_batch32": "ours (best variant) new tokens/s >= 1.2x (c) at batch 32",
    "a_step_vs_floor_batch1": "ours (best) batch-1 decode ms/step <= 1.5x the weight-bytes floor",
}


# ----------------------------------------------------------------------------- machine


def _memory_bandwidth(gib: float, repeats: int = 5) -> dict:
  """Memory copy bandwidth: best of `repeats` copies of a `gib` GiB array (numpy).

  bytes moved per copy = 2 × array bytes (each byte is read once and written once; the
  write-allocate reads a CPU may add are not counted, so this is the bandwidth a streaming
  kernel sees). Measured single-threaded (np.copyto) and with one thread per CPU, each thread
  copying a contiguous slice (numpy releases the GIL while copying); the larger is used.
  """
  n = int(gib * 2**30) // 8
  src = np.arange(n, dtype=np.float64)
  dst = np.empty_like(src)
  np.copyto(dst, src)  # touch every page first
  nbytes = src.nbytes

  def best(fn):
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return min(times)

  single = best(lambda: np.copyto(dst, src))
  workers = os.cpu_count() or 1
  bounds = np.linspace(0, n, workers + 1).astype(int)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    def threaded():
      list(pool.map(lambda i: np.copyto(dst[bounds[i]:bounds[i + 1]],
                                        src[bounds[i]:bounds[i + 1]]), range(workers)))
    multi = best(threaded)

    def threaded_read():
      list(pool.map(lambda i: np.add.reduce(src[bounds[i]:bounds[i + 1]]), range(workers)))
    read = best(threaded_read)
  del src, dst
  single_bw, multi_bw = 2 * nbytes / single, 2 * nbytes / multi
  return {"array_bytes": nbytes, "repeats": repeats,
          "formula": "bandwidth = 2 * array_bytes / best_copy_seconds (read + write)",
          "single_thread_gb_s": single_bw / 1e9, "threads": workers,
          "multi_thread_gb_s": multi_bw / 1e9, "bytes_per_s": max(single_bw, multi_bw),
          "read_formula": "read_bandwidth = array_bytes / best_threaded_sum_seconds",
          "read_bytes_per_s": nbytes / read}


def _machine() -> dict:
  info = {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "jax_device": str(jax.devices()[0]),
          "torch": torch.__version__, "transformers": transformers.__version__,
          "torch_num_threads": torch.get_num_threads(),
          "torch_set_num_threads": "torch.set_num_threads(os.cpu_count())",
          "cpu_model": cpu_model()}
  return info


# ----------------------------------------------------------------------------- models


def _perturbed(model, scale: float, seed: int):
  """A copy of our `model` with N(0, (scale · std(array))²) noise added to every parameter
  array (a stacked [layers, ...] array counts as one)."""
  from flax import nnx
  rng = np.random.default_rng(seed)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def noisy(x):
    x = np.asarray(x)
    std = float(x.std()) or 1.0
    return (x + scale * std * rng.standard_normal(x.shape)).astype(x.dtype)

  return nnx.merge(graphdef, jax.tree.map(noisy, params), rest)


def _build_pair(name: str, workdir: str):
  """(ours_sft, ours_aligned, hf_sft, hf_aligned, info) on the same weights."""
  if name in HF_CONFIGS:
    config = transformers.LlamaConfig(**HF_CONFIGS[name])
    hf, ours = [], []
    for seed in (0, 1):
      torch.manual_seed(seed)
      model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
      path = os.path.join(workdir, f"{name}-seed{seed}")
      model.save_pretrained(path)
      hf.append(model)
      ours.append(load_hf(path)[0])
    info = {"source": "transformers LlamaConfig, random init", "hf_config": HF_CONFIGS[name],
            "sft": "seed 0", "aligned": "seed 1 (a second random init)"}
    return ours[0], ours[1], hf[0], hf[1], info
  if name == "smollm2":
    path = fetch.smollm2_gguf()
    ours_sft, _ = load_gguf(path)
    hf_sft = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    # transformers cannot save_pretrained a model it loaded from GGUF, so the perturbed copy
    # is made on our side and exported with save_hf for transformers to read.
    ours_aligned = _perturbed(ours_sft, FLAGS.perturb, seed=1)
    aligned_path = os.path.join(workdir, "smollm2-perturbed")
    save_hf(ours_aligned, None, aligned_path)
    hf_aligned = AutoModelForCausalLM.from_pretrained(aligned_path, dtype=torch.float32).eval()
    info = {"source": str(path), "sft": "SmolLM2-135M-Instruct Q4_1 GGUF, dequantised to float32 "
            "(ours: load_gguf; HF: from_pretrained(gguf_file=...))",
            "aligned": f"the same + N(0, ({FLAGS.perturb}·std)²) noise per parameter array "
            "(seed 1), made on our side, save_hf -> HF from_pretrained"}
    return ours_sft, ours_aligned, hf_sft, hf_aligned, info
  raise ValueError(f"--models: unknown model {name!r}; known: tiny, 100m, smollm2")


def _hf_param_bytes(model) -> int:
  """Bytes of a HF model's distinct parameter tensors (tied embeddings counted once)."""
  seen, total = set(), 0
  for p in model.parameters():
    if p.data_ptr() not in seen:
      seen.add(p.data_ptr())
      total += p.numel() * p.element_size()
  return total


def _our_param_bytes(model) -> int:
  from flax import nnx
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ----------------------------------------------------------------------------- prompts


def _prompts(rng, n: int, lengths, vocab: int) -> list[list[int]]:
  low = min(32, vocab // 4)  # keep clear of the special tokens at the start of real vocabularies
  return [rng.integers(low, vocab, int(lengths[i % len(lengths)])).tolist() for i in range(n)]


def _left_pad_torch(prompts, pad_id: int = 0):
  t = max(map(len, prompts))
  ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
  mask = torch.zeros((len(prompts), t), dtype=torch.long)
  for i, p in enumerate(prompts):
    if p:
      ids[i, t - len(p):] = torch.tensor(p)
      mask[i, t - len(p):] = 1
  return ids, mask


# ----------------------------------------------------------------------------- methods

# transformers 5.x renamed forward's `past_key_values` to `cache` (the old name warns).
_CACHE_KW = ("cache" if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward)
             .parameters else "past_key_values")


class _Ours:
  """(a): DeRaSampler; prefill is timed separately through the sampler's own jitted prefill."""

  def __init__(self, sft, aligned, *, variant: str, new_tokens: int, prompt_len: int):
    options = {"stacked": dict(stack_models=True), "pair": dict(stack_models=False),
               "devices": dict(pair_devices=jax.devices()[:2])}[variant]
    self.sampler = DeRaSampler(sft, aligned, max_prompt_len=prompt_len,
                               max_new_tokens=new_tokens, stop_ids=[], pad_id=0, **options)
    self.new_tokens = new_tokens

  def generate(self, prompts, lam: float) -> np.ndarray:
    out = self.sampler(prompts, lambdas=lam, temperature=0.0, seed=0)
    assert (out.lengths == self.new_tokens).all(), out.lengths
    return out.tokens

  def prefill(self, prompts) -> None:
    s = self.sampler
    tokens, mask = sampler_lib.inputs.left_pad(prompts, max_len=s.max_prompt_len,
                                               vocab_size=s.vocab_size, pad_id=s.pad_id)
    jax.block_until_ready(sampler_lib._prefill_jit(s._spec, s._states, tokens, mask))


class _SFTBeside(LogitsProcessor):
  """The paper demo's processor: the SFT model runs beside `generate` with its own cache.

  The first call feeds the whole prompt, every later call the one new token; the scores it
  returns are λ·(aligned logits) + (1−λ)·(SFT logits).
  """

  def __init__(self, sft, lam: float):
    self.sft, self.lam = sft, lam
    self.cache = DynamicCache(config=sft.config)
    self.seen = 0
    self.first_done = None  # perf_counter() when the first call (both prefills) returned

  def __call__(self, input_ids, scores):
    new = input_ids[:, self.seen:]
    self.seen = input_ids.shape[1]
    out = self.sft(input_ids=new, use_cache=True, logits_to_keep=1, **{_CACHE_KW: self.cache})
    mixed = self.lam * scores + (1 - self.lam) * out.logits[:, -1].float()
    if self.first_done is None:
      self.first_done = time.perf_counter()
    return mixed


class _HFGenerate:
  """(b): `aligned.generate` + `_SFTBeside`, one prompt at a time, greedy, no EOS."""

  def __init__(self, sft, aligned, *, new_tokens: int):
    self.sft, self.aligned, self.new_tokens = sft, aligned, new_tokens
    self.prefill_seconds = []  # per prompt: start of generate -> first mixed scores

  def _run(self, prompt, lam, new_tokens):
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=0,
                              bos_token_id=None)
    ids = torch.tensor([prompt], dtype=torch.long)
    beside = _SFTBeside(self.sft, lam)
    start = time.perf_counter()
    with torch.inference_mode():
      out = self.aligned.generate(
          input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
          logits_processor=LogitsProcessorList([beside]))
    self.prefill_seconds.append(beside.first_done - start)
    new = out[0, ids.shape[1]:].numpy()
    assert new.shape == (new_tokens,), new.shape
    return new

  def generate(self, prompts, lam: float) -> np.ndarray:
    return np.stack([self._run(p, lam, self.new_tokens) for p in prompts])



class _HFLoop:
  """(c): batched greedy loop over both HF models, each with its own DynamicCache."""

  def __init__(self, sft, aligned, *, new_tokens: int):
    self.sft, self.aligned, self.new_tokens = sft, aligned, new_tokens
    self.prefill_seconds = []  # per call: start -> both models' prompt logits

  def _run(self, prompts, lam, new_tokens):
    start = time.perf_counter()
    ids, mask = _left_pad_torch(prompts)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    models = (self.aligned, self.sft)
    caches = [DynamicCache(config=m.config) for m in models]
    out = []
    with torch.inference_mode():
      logits = [m(input_ids=ids, attention_mask=mask, position_ids=positions,
                  use_cache=True, logits_to_keep=1, **{_CACHE_KW: c}).logits[:, -1]
                for m, c in zip(models, caches)]
      self.prefill_seconds.append(time.perf_counter() - start)
      next_pos = positions[:, -1:] + 1
      ones = torch.ones((len(prompts), 1), dtype=mask.dtype)
      for t in range(new_tokens):
        token = (lam * logits[0] + (1 - lam) * logits[1]).argmax(-1)
        out.append(token)
        if t == new_tokens - 1:
          break
        mask = torch.cat([mask, ones], dim=1)
        logits = [m(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **{_CACHE_KW: c}).logits[:, -1]
                  for m, c in zip(models, caches)]
        next_pos = next_pos + 1
    return torch.stack(out, dim=1).numpy()

  def generate(self, prompts, lam: float) -> np.ndarray:
    return self._run(prompts, lam, self.new_tokens)


# ----------------------------------------------------------------------------- measuring


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), times


def _time_method(method, prompts, new_tokens: int, *, compile_timing: bool = False) -> dict:
  """One warm-up call, then `repeats` timed calls.

  Prefill: the HF methods time it inside each call (start -> both models' logits for the
  first new token); for ours (one jitted call) it is timed apart, through the sampler's own
  jitted prefill. decode_ms_per_step = (call − prefill) / (new_tokens − 1).
  """
  if compile_timing:
    jax.clear_caches()  # the check already compiled some shapes: time a fresh compile
  start = time.perf_counter()
  method.generate(prompts, FLAGS.lam)  # warm-up (and, for ours, compilation)
  first = time.perf_counter() - start
  inline = hasattr(method, "prefill_seconds")
  if inline:
    method.prefill_seconds.clear()
  call, calls = _median_time(lambda: method.generate(prompts, FLAGS.lam), FLAGS.repeats)
  steps = max(new_tokens - 1, 1)
  if inline:  # per call; (b) runs its prompts one by one, so sum their prefills per call
    per_call = np.asarray(method.prefill_seconds).reshape(len(calls), -1).sum(1)
    prefill = float(np.median(per_call))
    decode = float(np.median((np.asarray(calls) - per_call) / steps))
  else:
    method.prefill(prompts)  # warm-up
    prefill, _ = _median_time(lambda: method.prefill(prompts), FLAGS.repeats)
    decode = max(call - prefill, 0.0) / steps
  row = {"seconds_per_call": call, "call_seconds": calls, "prefill_ms": 1000 * prefill,
         "prefill_timing": "inside each timed call" if inline else "separate calls",
         "new_tokens_per_s": len(prompts) * new_tokens / call,
         "ms_per_token": 1000 * call / new_tokens, "decode_ms_per_step": 1000 * decode}
  if compile_timing:
    row["first_call_seconds"] = first
    row["compile_seconds"] = max(first - call, 0.0)
  return row


def _first_mismatch(a: np.ndarray, b: np.ndarray):
  """None if equal, else [row, step] of the first differing token."""
  diff = np.argwhere(np.asarray(a) != np.asarray(b))
  return None if diff.size == 0 else [int(x) for x in diff[0]]


def _check(methods, prompts, b_rows: int) -> dict:
  """Greedy token agreement of every method with ours (stacked) at each --check_lambdas."""
  result = {"rows": len(prompts), "row_lengths": [len(p) for p in prompts],
            "b_rows": b_rows, "lambdas": {}}
  ours = methods["a_stacked"]
  # How far apart the two models are: share of steps where the mixture's pick differs from
  # the pure SFT (λ = 0) / pure aligned (λ = 1) pick.
  ends = {lam: ours.generate(prompts, lam) for lam in (0.0, 1.0)}
  for lam in map(float, FLAGS.check_lambdas):
    ref = ours.generate(prompts, lam)
    entry = {}
    for name in [k for k in methods if k.startswith("a_") and k != "a_stacked"] + ["c_hf_loop"]:
      entry[name] = _first_mismatch(ref, methods[name].generate(prompts, lam))
    entry["b_hf_generate"] = _first_mismatch(
        ref[:b_rows], methods["b_hf_generate"].generate(prompts[:b_rows], lam))
    entry["agree"] = all(v is None for v in entry.values())
    entry["differs_from_sft_frac"] = float((ref != ends[0.0]).mean())
    entry["differs_from_aligned_frac"] = float((ref != ends[1.0]).mean())
    result["lambdas"][str(lam)] = entry
  result["agree"] = all(e["agree"] for e in result["lambdas"].values())
  return result


def _new_tokens(name: str) -> int:
  values = dict(DEFAULT_NEW_TOKENS)
  for item in FLAGS.new_tokens:
    if "=" in item:
      key, value = item.split("=", 1)
      values[key] = int(value)
    else:
      values = {k: int(item) for k in values}
  return values[name]


def _run_model(name: str, workdir: str, bandwidth: dict) -> dict:
  """One model pair: check, time every method at every batch size, compare with the floors
  (`bandwidth`: what `_memory_bandwidth` measured)."""
  new_tokens = _new_tokens(name)
  batches = sorted(set(map(int, FLAGS.batch_sizes)))
  t0 = time.perf_counter()
  sft, aligned, hf_sft, hf_aligned, info = _build_pair(name, workdir)
  vocab = int(sft.vocab_size)
  weight_bytes = _our_param_bytes(sft) + _our_param_bytes(aligned)
  hf_bytes = _hf_param_bytes(hf_sft) + _hf_param_bytes(hf_aligned)
  row = {"model": name, **info, "params_millions": _our_param_bytes(sft) / 4e6,
         "vocab_size": vocab, "new_tokens": new_tokens, "prompt_len": FLAGS.prompt_len,
         "lambda_timed": FLAGS.lam, "weight_bytes_both_models": weight_bytes,
         "hf_weight_bytes_both_models": hf_bytes,
         "hf_attn_implementation": hf_sft.config._attn_implementation,
         "load_seconds": time.perf_counter() - t0}
  print(f"[{name}] {row['params_millions']:.1f}M params, loaded in {row['load_seconds']:.1f}s",
        flush=True)

  def methods_for(n_new):
    variants = ["stacked", "pair"] + (["devices"] if jax.device_count() >= 2 else [])
    ours = {f"a_{v}": _Ours(sft, aligned, variant=v, new_tokens=n_new,
                            prompt_len=FLAGS.prompt_len) for v in variants}
    return {**ours,
            "b_hf_generate": _HFGenerate(hf_sft, hf_aligned, new_tokens=n_new),
            "c_hf_loop": _HFLoop(hf_sft, hf_aligned, new_tokens=n_new)}

  methods = methods_for(new_tokens)
  rng = np.random.default_rng(0)
  # Correctness first: ragged, left-padded prompts (lengths prompt_len, prompt_len − 7, …).
  n_check = max(FLAGS.check_batch, FLAGS.check_rows)
  lengths = [FLAGS.prompt_len - (7 * i) % FLAGS.prompt_len for i in range(n_check)]
  check_prompts = _prompts(rng, n_check, lengths, vocab)
  t0 = time.perf_counter()
  row["check"] = _check(methods, check_prompts, min(FLAGS.check_rows, n_check))
  row["check"]["seconds"] = time.perf_counter() - t0
  print(f"[{name}] greedy agreement: {row['check']['agree']} "
        f"({row['check']['seconds']:.0f}s)", flush=True)
  if not row["check"]["agree"]:
    return row

  row["batches"] = {}
  for batch in batches:
    prompts = _prompts(rng, batch, [FLAGS.prompt_len], vocab)
    entry = {}
    for method_name, method in methods.items():
      if method_name == "b_hf_generate" and batch != 1:
        continue
      entry[method_name] = _time_method(method, prompts, new_tokens,
                                        compile_timing=method_name.startswith("a_"))
      r = entry[method_name]
      print(f"[{name}] batch={batch} {method_name}: {r['new_tokens_per_s']:.1f} tok/s, "
            f"prefill {r['prefill_ms']:.1f} ms, decode {r['decode_ms_per_step']:.2f} ms/step"
            + (f", compile {r['compile_seconds']:.1f}s" if "compile_seconds" in r else ""),
            flush=True)
    best = max([k for k in methods if k.startswith("a_")],
               key=lambda k: entry[k]["new_tokens_per_s"])
    entry["a_best"] = best
    entry["stacked_vs_pair"] = (entry["a_stacked"]["new_tokens_per_s"]
                                / entry["a_pair"]["new_tokens_per_s"])
    entry["a_vs_c"] = entry[best]["new_tokens_per_s"] / entry["c_hf_loop"]["new_tokens_per_s"]
    if "b_hf_generate" in entry:
      entry["a_vs_b"] = entry[best]["new_tokens_per_s"] / entry["b_hf_generate"][
          "new_tokens_per_s"]
    row["batches"][str(batch)] = entry

  floor_ms = 1000 * weight_bytes / bandwidth["bytes_per_s"]
  row["floor"] = {"ms_per_step": floor_ms,
                  "formula": "floor_ms = 1000 * weight_bytes_both_models / bandwidth_bytes_per_s",
                  "read_ms_per_step": 1000 * weight_bytes / bandwidth["read_bytes_per_s"],
                  "read_formula": "1000 * weight_bytes_both_models / read_bytes_per_s"}
  targets = {}
  b1, b32 = row["batches"].get("1"), row["batches"].get("32")
  if b1:
    for k in [k for k in methods if k in b1]:
      b1[k]["decode_step_vs_floor"] = b1[k]["decode_ms_per_step"] / floor_ms
    targets["a_vs_b_batch1"] = {"measured": b1["a_vs_b"], "target": 2.0,
                                "pass": bool(b1["a_vs_b"] >= 2.0)}
    ratio = b1[b1["a_best"]]["decode_step_vs_floor"]
    targets["a_step_vs_floor_batch1"] = {"measured": ratio, "target": 1.5,
                                         "pass": bool(ratio <= 1.5)}
  if b32:
    targets["a_vs_c_batch32"] = {"measured": b32["a_vs_c"], "target": 1.2,
                                 "pass": bool(b32["a_vs_c"] >= 1.2)}
  row["targets"] = targets
  row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  del methods, sft, aligned, hf_sft, hf_aligned
  gc.collect()
  return row


# ----------------------------------------------------------------------------- report


def _write(report: dict) -> None:
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  tmp = FLAGS.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, FLAGS.out)


def _table(report: dict) -> str:
  lines = [
      "| model | batch | (a) stacked tok/s | (a) pair tok/s | (a) devices tok/s "
      "| (b) HF generate tok/s | (c) HF loop tok/s | a/b | a/c | decode ms/step a·b·c "
      "| floor ms (copy · read) | a step/floor (copy · read) | compile s (a) |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  tps = lambda e, k: f"{e[k]['new_tokens_per_s']:.1f}" if k in e else "–"
  for r in report["results"]:
    floor = r["floor"]["ms_per_step"] if "floor" in r else float("nan")
    read_floor = r["floor"]["read_ms_per_step"] if "floor" in r else float("nan")
    for batch, e in r.get("batches", {}).items():
      best = e[e["a_best"]]
      steps = " · ".join(f"{e[k]['decode_ms_per_step']:.1f}" if k in e else "–"
                         for k in (e["a_best"], "b_hf_generate", "c_hf_loop"))
      a_vs_b = f"{e['a_vs_b']:.2f}" if "a_vs_b" in e else "–"
      lines.append(
          f"| {r['model']} ({r['params_millions']:.0f}M) | {batch} | {tps(e, 'a_stacked')} "
          f"| {tps(e, 'a_pair')} | {tps(e, 'a_devices')} | {tps(e, 'b_hf_generate')} "
          f"| {tps(e, 'c_hf_loop')} | {a_vs_b} | {e['a_vs_c']:.2f} | {steps} "
          f"| {floor:.3g} · {read_floor:.3g} | {best['decode_ms_per_step'] / floor:.2f} · "
          f"{best['decode_ms_per_step'] / read_floor:.2f} | {best['compile_seconds']:.1f} |")
  lines += ["", "| model | target | measured | result |", "|---|---|---|---|"]
  for r in report["results"]:
    if not r["check"]["agree"]:
      lines.append(f"| {r['model']} | greedy agreement | MISMATCH | fail |")
      continue
    for key, t in r["targets"].items():
      lines.append(f"| {r['model']} | {TARGETS[key]} | {t['measured']:.2f} "
                   f"| {'pass' if t['pass'] else 'miss'} |")
  bw = report["bandwidth"]
  lines += ["", f"(a) best variant per row (stacked/pair): " + ", ".join(
      f"{r['model']}@{b}={e['a_best'].removeprefix('a_')} ({e['stacked_vs_pair']:.2f}x)"
      for r in report["results"] for b, e in r.get("batches", {}).items()),
      f"copy bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s (single thread "
      f"{bw['single_thread_gb_s']:.1f}, {bw['threads']} threads {bw['multi_thread_gb_s']:.1f}), "
      f"read bandwidth {bw['read_bytes_per_s'] / 1e9:.1f} GB/s; "
      f"load average start {report['loadavg_start']}, end {report['loadavg_end']}; "
      f"cpu_count {report['machine']['cpu_count']}, torch threads "
      f"{report['machine']['torch_num_threads']}"]
  return "\n".join(lines)


def main(argv):
  del argv
  torch.set_num_threads(os.cpu_count())
  report = {"started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "machine": _machine(),
            "settings": {"models": FLAGS.models, "batch_sizes": FLAGS.batch_sizes,
                         "prompt_len": FLAGS.prompt_len, "repeats": FLAGS.repeats,
                         "lambda_timed": FLAGS.lam, "check_lambdas": FLAGS.check_lambdas,
                         "greedy": True, "dtype": "float32",
                         "timing": "one warm-up call, then median of `repeats` calls; "
                                   "decode_ms_per_step = (call - prefill) / (new_tokens - 1)",
                         "torch": "torch.inference_mode(), float32, "
                                  "torch.set_num_threads(os.cpu_count())"},
            "targets": TARGETS, "results": []}
  report["bandwidth"] = _memory_bandwidth(FLAGS.bandwidth_gib)
  print(f"memory bandwidth {report['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s", flush=True)
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="dera_vs_hf_")
  failed = []
  try:
    for name in FLAGS.models:
      row = _run_model(name, workdir, report["bandwidth"])
      report["results"].append(row)
      _write(report)
      if not row["check"]["agree"]:
        failed.append(name)
  finally:
    if FLAGS.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
  report["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
  report["table"] = _table(report)
  _write(report)
  print("\n" + report["table"])
  print(f"\nwrote {FLAGS.out}")
  assert not failed, (f"greedy outputs disagree for {failed}: see 'check' in {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
