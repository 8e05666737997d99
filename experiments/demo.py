"""`make demo`: DeRa decoding of two small models trained here, at several λ.

1. SFT: a byte-level decoder learns the built-in "lists" task (1–6 items per answer).
2. Aligned: the SFT model fine-tuned on brief answers only (1–2 items) — a stand-in for an
   RLHF model aligned towards brevity (the full RL pipeline is `experiments/reproduce`).
3. DeRa: one sweep samples every prompt at every λ (prefilled once), and per-λ statistics are
   printed: items per answer, length, log-probs under each model and the KL estimate to SFT.
   λ < 1 interpolates towards SFT, λ > 1 extrapolates beyond the aligned model.

    python -m experiments.demo --workdir=runs/demo
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from dera_jax.data import list_task
from dera_jax.data.tokenizer import ByteTokenizer
from dera_jax.models import Transformer, tiny_config
from dera_jax.sampling import DeRaSampler
from dera_jax.training.sft import SFTBatch, init_train_state, make_sft_step

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Where summary.json is written.")
flags.DEFINE_integer("seed", 0, "Seed of data, initialisation and sampling.")
flags.DEFINE_integer("sft_steps", 400, "SFT training steps.")
flags.DEFINE_integer("aligned_steps", 150, "Fine-tuning steps of the aligned model.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_integer("samples_per_prompt", 64, "DeRa samples per prompt and λ.")
flags.DEFINE_list("lambdas", ["0", "0.25", "0.5", "1", "1.5", "2"], "The λ grid.")

SEQ_LEN = 64


def encode(tokenizer, examples) -> SFTBatch:
  """[BOS] prompt response [EOS], right-padded to SEQ_LEN; loss on response + EOS."""
  n = len(examples)
  tokens = np.full((n, SEQ_LEN), tokenizer.pad_id, np.int32)
  mask = np.zeros((n, SEQ_LEN), bool)
  loss_mask = np.zeros((n, SEQ_LEN), bool)
  for i, ex in enumerate(examples):
    prompt = tokenizer.encode(ex.prompt)
    ids = prompt + tokenizer.encode(ex.response, add_special_tokens=False) + [tokenizer.EOS]
    if len(ids) > SEQ_LEN:
      raise ValueError(f"example {i} has {len(ids)} tokens: more than SEQ_LEN={SEQ_LEN}")
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = True
    loss_mask[i, len(prompt):len(ids)] = True
  return SFTBatch(tokens=tokens, mask=mask, loss_mask=loss_mask)


def train(model, data: SFTBatch, *, steps: int, lr: float, seed: int, name: str):
  """Adam with warm-up and cosine decay; prints progress; returns the trained model."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 5), steps, lr * 0.05)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, 0.0))
  graphdef, state = init_train_state(model, optimizer)
  step_fn = make_sft_step(graphdef, optimizer)
  rng = np.random.default_rng(seed)
  n = data.tokens.shape[0]
  start = time.perf_counter()
  for step in range(1, steps + 1):
    idx = rng.integers(0, n, FLAGS.batch_size)
    batch = SFTBatch(tokens=data.tokens[idx], mask=data.mask[idx], loss_mask=data.loss_mask[idx])
    state, metrics = step_fn(state, batch)
    if step % 100 == 0 or step == steps:
      elapsed = time.perf_counter() - start
      rate = step / elapsed
      print(f"  [{name}] step {step}/{steps}  loss {float(metrics['loss']):.3f}  "
            f"{rate:.1f} steps/s  ETA {(steps - step) / rate:.0f}s", flush=True)
  return nnx.merge(graphdef, state.params)


def main(argv):
  del argv
  lambdas = [float(x) for x in FLAGS.lambdas]
  tokenizer = ByteTokenizer()
  config = tiny_config(vocab_size=tokenizer.vocab_size, d_model=128, num_layers=3, num_heads=4,
                       num_kv_heads=2, head_dim=32, mlp_dim=256, max_seq_len=SEQ_LEN + 16)
  t0 = time.perf_counter()
  print(f"1/3 SFT: {config.num_params / 1e6:.2f}M-parameter byte-level decoder on the lists "
        "task (1-6 items per answer)", flush=True)
  sft_data = encode(tokenizer, list_task.make_examples(4000, seed=FLAGS.seed))
  sft = train(Transformer(config, rngs=nnx.Rngs(FLAGS.seed)), sft_data,
              steps=FLAGS.sft_steps, lr=3e-3, seed=FLAGS.seed, name="sft")

  print("2/3 aligned: the SFT model fine-tuned on brief answers (1-2 items)", flush=True)
  brief = encode(tokenizer, list_task.make_examples(2000, seed=FLAGS.seed + 1,
                                                    allowed_counts=(1, 2)))
  aligned = train(nnx.clone(sft), brief, steps=FLAGS.aligned_steps, lr=1e-3,
                  seed=FLAGS.seed + 1, name="aligned")

  print(f"3/3 DeRa sweep over λ = {lambdas}", flush=True)
  categories = sorted(list_task.CATEGORIES)
  prompts = [tokenizer.encode(list_task.prompt_for(c)) for c in categories]
  prompts = [p for p in prompts for _ in range(FLAGS.samples_per_prompt)]
  sampler = DeRaSampler(sft, aligned, max_prompt_len=max(map(len, prompts)),
                        max_new_tokens=48, stop_ids=[tokenizer.EOS], pad_id=tokenizer.PAD)
  t_sample = time.perf_counter()
  out = sampler.sweep(prompts, lambdas=lambdas, seed=FLAGS.seed)
  t_sample = time.perf_counter() - t_sample
  texts = [[tokenizer.decode(ids) for ids in row] for row in out.token_lists()]

  rows = []
  for k, lam in enumerate(lambdas):
    items = np.array([list_task.count_items(t) for t in texts[k]])
    rows.append({
        "lambda": lam,
        "mean_items": float(items.mean()),
        "items_histogram": np.bincount(items, minlength=list_task.MAX_ITEMS + 2).tolist(),
        "mean_length": float(out.lengths[k].mean()),
        "stopped": float((out.lengths[k] < 48).mean()),
        "logp_policy": float(out.sequence_logprobs()[k].mean()),
        "logp_sft": float(out.sft_sequence_logprobs()[k].mean()),
        "logp_aligned": float(out.aligned_sequence_logprobs()[k].mean()),
        "kl_to_sft": float(out.kl_to_sft()[k]),
        "examples": [texts[k][i * FLAGS.samples_per_prompt] for i in range(len(categories))],
    })

  print(f"\nDeRa: {len(prompts)} samples per λ, {len(lambdas)} λ values, "
        f"{out.lengths.sum() / t_sample:.0f} new tokens/s (incl. compile)\n")
  print("| λ | items/answer | length | log p_λ | log π_sft | log π_aligned | KL(p_λ‖π_sft) |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['lambda']:g} | {r['mean_items']:.2f} | {r['mean_length']:.1f} | "
          f"{r['logp_policy']:.2f} | {r['logp_sft']:.2f} | {r['logp_aligned']:.2f} | "
          f"{r['kl_to_sft']:.2f} |")
  print()
  for r in rows:
    print(f"λ={r['lambda']:g}: " + " | ".join(repr(t) for t in r["examples"]))

  os.makedirs(FLAGS.workdir, exist_ok=True)
  path = os.path.join(FLAGS.workdir, "summary.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"rows": rows, "seconds": time.perf_counter() - t0}, f, indent=1)
  os.replace(tmp, path)
  print(f"\nwrote {path} ({time.perf_counter() - t0:.0f}s in all)")


if __name__ == "__main__":
  jax.config.parse_flags_with_absl()
  app.run(main)
