"""Training throughput: the SFT step and a whole RLOO iteration (rollout + experience + update).

For a tiny and a ~100M-parameter config: tokens/s of the jitted SFT step (B×T tokens per step)
and of an RLOO iteration (N = prompts × k rows of prompt + response, reward from a scalar-head
model of the same size, KL to a frozen reference), with compile time (first call minus the
median warm call). JSON out, a markdown table printed.

    python -m benchmarks.train --out=benchmarks/results/train.json
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from benchmarks.report import write_report
from dera_jax.models import Transformer, config_100m, tiny_config
from dera_jax.models.heads import ScalarHeadModel
from dera_jax.training.common import make_optimizer
from dera_jax.training.rloo import RLOOTrainer
from dera_jax.training.sft import SFTBatch, init_train_state, make_sft_step

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "benchmarks/results/train.json", "JSON output path.")
flags.DEFINE_list("configs", ["tiny", "100m"], "Model configs.")
flags.DEFINE_integer("repeats", 3, "Timed calls per case (median reported).")

# name -> (config, SFT batch, SFT seq len, RLOO prompts, k, prompt len, new tokens)
CASES = {
    "tiny": (lambda: tiny_config(vocab_size=512), 32, 128, 16, 4, 32, 32),
    "100m": (lambda: config_100m(), 4, 128, 4, 2, 32, 16),
}


def _median_time(fn, repeats: int) -> tuple[float, float]:
  """(first call seconds, median of `repeats` later calls)."""
  start = time.perf_counter()
  fn(0)
  first = time.perf_counter() - start
  times = []
  for r in range(repeats):
    start = time.perf_counter()
    fn(r + 1)
    times.append(time.perf_counter() - start)
  return first, float(np.median(times))


def bench_sft(config, batch: int, seq: int) -> dict:
  model = Transformer(config, rngs=nnx.Rngs(0))
  optimizer = optax.adamw(1e-4)
  graphdef, state = init_train_state(model, optimizer)
  step = make_sft_step(graphdef, optimizer)
  rng = np.random.default_rng(0)
  batches = [SFTBatch(tokens=rng.integers(0, config.vocab_size, (batch, seq)).astype(np.int32),
                      mask=np.ones((batch, seq), bool), loss_mask=np.ones((batch, seq), bool))
             for _ in range(FLAGS.repeats + 1)]
  holder = {"state": state}

  def run(i):
    holder["state"], metrics = step(holder["state"], batches[i])
    jax.block_until_ready(metrics["loss"])

  first, steady = _median_time(run, FLAGS.repeats)
  return {"batch": batch, "seq_len": seq, "seconds_per_step": steady,
          "tokens_per_s": batch * seq / steady, "compile_seconds": max(first - steady, 0.0)}


def bench_rloo(config, prompts: int, k: int, prompt_len: int, new_tokens: int) -> dict:
  policy = Transformer(config, rngs=nnx.Rngs(0))
  reference = nnx.clone(policy)
  reward_model = ScalarHeadModel(Transformer(config, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(1),
                                 head_init_std=0.02)
  trainer = RLOOTrainer(policy, make_optimizer(1e-5), ref_model=reference,
                        reward_model=reward_model, beta=0.05, k=k, max_new_tokens=new_tokens)
  holder = {"state": trainer.init_state()}
  rng = np.random.default_rng(0)
  batch = {"prompt_tokens": rng.integers(0, config.vocab_size, (prompts, prompt_len)
                                         ).astype(np.int32),
           "prompt_mask": np.ones((prompts, prompt_len), bool)}

  def run(i):
    holder["state"], metrics = trainer.step(holder["state"], batch, jax.random.key(i))
    jax.block_until_ready(metrics["loss"])

  first, steady = _median_time(run, FLAGS.repeats)
  rows = prompts * k
  return {"prompts": prompts, "k": k, "prompt_len": prompt_len, "new_tokens": new_tokens,
          "seconds_per_iteration": steady,
          "tokens_per_s": rows * (prompt_len + new_tokens) / steady,
          "new_tokens_per_s": rows * new_tokens / steady,
          "compile_seconds": max(first - steady, 0.0)}


def main(argv):
  del argv
  results = []
  for name in FLAGS.configs:
    make_config, batch, seq, prompts, k, prompt_len, new_tokens = CASES[name]
    config = make_config()
    load = os.getloadavg()[0]
    row = {"config": name, "params_millions": config.num_params / 1e6,
           "sft": bench_sft(config, batch, seq),
           "rloo": bench_rloo(config, prompts, k, prompt_len, new_tokens)}
    row["load_average"] = [load, os.getloadavg()[0]]
    print(f"{name}: SFT {row['sft']['tokens_per_s']:.0f} tok/s, RLOO iteration "
          f"{row['rloo']['seconds_per_iteration']:.2f}s ({row['rloo']['tokens_per_s']:.0f} tok/s)",
          flush=True)
    results.append(row)
  write_report(FLAGS.out, results)
  print("\n| config | params | SFT step B×T | SFT tokens/s | RLOO iteration (prompts×k, new) "
        "| s/iteration | RLOO tokens/s | compile s (SFT / RLOO) |")
  print("|---|---|---|---|---|---|---|---|")
  for r in results:
    s, l = r["sft"], r["rloo"]
    print(f"| {r['config']} | {r['params_millions']:.1f}M | {s['batch']}×{s['seq_len']} | "
          f"{s['tokens_per_s']:.0f} | {l['prompts']}×{l['k']}, {l['new_tokens']} | "
          f"{l['seconds_per_iteration']:.2f} | {l['tokens_per_s']:.0f} | "
          f"{s['compile_seconds']:.1f} / {l['compile_seconds']:.1f} |")
  print(f"\nwrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
