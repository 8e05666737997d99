"""Throughput of the DeRa sampler against the same code's single-model path.

For each model config (tiny, ~100M) and batch size (1, 32): new tokens/s of
  - dera_stacked: DeRaSampler, two models of one architecture in one vmapped call,
  - dera_pair:    DeRaSampler forced onto the general two-call path,
  - single:       Sampler with one model (the ceiling: DeRa does two forward passes per token),
plus compile time (first call minus a warm call), the XLA memory footprint of the decode
program and the process's peak RSS. Every row decodes exactly `new_tokens` tokens (no stop ids).

    python -m benchmarks.sampler --out=benchmarks/results/sampler.json
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.report import write_report
from dera_jax.models import Transformer, config_100m, tiny_config
from dera_jax.sampling import DeRaSampler, Sampler
from dera_jax.sampling import sampler as sampler_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "benchmarks/results/sampler.json", "JSON output path.")
flags.DEFINE_list("configs", ["tiny", "100m"], "Model configs to run.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes.")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per row.")
flags.DEFINE_integer("repeats", 3, "Timed calls per case (the median is reported).")

CONFIGS = {
    "tiny": (lambda: tiny_config(vocab_size=512, max_seq_len=1024), 128),
    "100m": (lambda: config_100m(), 32),
}


def _decode_memory_bytes(sampler, prompts, kwargs) -> int | None:
  """argument + output + temp bytes of the compiled decode program (XLA's own accounting)."""
  try:
    tokens, mask = sampler_lib.inputs.left_pad(prompts, max_len=sampler.max_prompt_len,
                                               vocab_size=sampler.vocab_size,
                                               pad_id=sampler.pad_id)
    caches, lp = sampler_lib._prefill_jit(sampler._spec, sampler._states, tokens, mask)
    n = tokens.shape[0]
    f32 = lambda v: np.full((n,), v, np.float32)
    compiled = sampler_lib._decode_jit.lower(
        sampler._spec, sampler._states, caches, lp, mask.sum(1).astype(np.int32),
        f32(kwargs.get("lambdas", 0.0)), f32(1.0), np.zeros(n, np.int32), f32(1.0),
        np.uint32(0), np.arange(n, dtype=np.int32)).compile()
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # memory_analysis is best effort on some backends
    return None


def _time_cases(samplers: dict, prompts, new_tokens) -> dict[str, dict]:
  """Compile each path, then time them round-robin (so load changes hit all paths alike)."""
  first = {}
  for path, (sampler, kwargs) in samplers.items():
    start = time.perf_counter()
    out = sampler(prompts, **kwargs)
    first[path] = time.perf_counter() - start
    assert (out.lengths == new_tokens).all()
  times = {path: [] for path in samplers}
  for r in range(FLAGS.repeats):
    for path, (sampler, kwargs) in samplers.items():
      start = time.perf_counter()
      sampler(prompts, seed=r + 1, **kwargs)
      times[path].append(time.perf_counter() - start)
  results = {}
  for path in samplers:
    steady = float(np.median(times[path]))
    results[path] = {"seconds_per_call": steady,
                     "compile_seconds": max(first[path] - steady, 0.0),
                     "new_tokens_per_s": len(prompts) * new_tokens / steady,
                     "ms_per_step": 1000 * steady / new_tokens}
  return results


def main(argv):
  del argv
  results = []
  for name in FLAGS.configs:
    make_config, new_tokens = CONFIGS[name]
    config = make_config()
    sft = Transformer(config, rngs=nnx.Rngs(0))
    aligned = Transformer(config, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    settings = dict(max_prompt_len=FLAGS.prompt_len, max_new_tokens=new_tokens, stop_ids=[])
    samplers = {
        "single": (Sampler(sft, **settings), {}),
        "dera_stacked": (DeRaSampler(sft, aligned, stack_models=True, **settings),
                         {"lambdas": 0.5}),
        "dera_pair": (DeRaSampler(sft, aligned, stack_models=False, **settings),
                      {"lambdas": 0.5}),
    }
    for batch in map(int, FLAGS.batch_sizes):
      prompts = [rng.integers(0, config.vocab_size, FLAGS.prompt_len).tolist()
                 for _ in range(batch)]
      row = {"config": name, "params_millions": config.num_params / 1e6, "batch": batch,
             "prompt_len": FLAGS.prompt_len, "new_tokens": new_tokens}
      load_before = os.getloadavg()[0]
      row.update(_time_cases(samplers, prompts, new_tokens))
      row["load_average"] = [load_before, os.getloadavg()[0]]
      for path, (sampler, kwargs) in samplers.items():
        row[path]["decode_program_bytes"] = _decode_memory_bytes(sampler, prompts, kwargs)
        print(f"{name} batch={batch} {path}: {row[path]['new_tokens_per_s']:.1f} tok/s, "
              f"{row[path]['ms_per_step']:.2f} ms/step, "
              f"compile {row[path]['compile_seconds']:.1f}s", flush=True)
      for path in ("dera_stacked", "dera_pair"):
        row[f"{path}_vs_single"] = (row[path]["new_tokens_per_s"]
                                    / row["single"]["new_tokens_per_s"])
      row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
      results.append(row)

  write_report(FLAGS.out, results)

  print("\n| config | batch | single tok/s | DeRa stacked tok/s | ratio | DeRa pair tok/s | ratio "
        "| compile s (DeRa) | decode program MB (DeRa) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in results:
    mb = r["dera_stacked"]["decode_program_bytes"]
    print(f"| {r['config']} | {r['batch']} | {r['single']['new_tokens_per_s']:.0f} | "
          f"{r['dera_stacked']['new_tokens_per_s']:.0f} | {r['dera_stacked_vs_single']:.2f} | "
          f"{r['dera_pair']['new_tokens_per_s']:.0f} | {r['dera_pair_vs_single']:.2f} | "
          f"{r['dera_stacked']['compile_seconds']:.1f} | "
          f"{'-' if mb is None else f'{mb / 2**20:.0f}'} |")
  print(f"\nwrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
