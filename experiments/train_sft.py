"""Supervised fine-tuning: `python -m experiments.train_sft --config=configs/sft.py --workdir=DIR`.

Writes DIR/metrics.jsonl, DIR/checkpoints/ (resumable: run the same command again) and, at
the end, DIR/model (a `save_checkpoint` directory the next stages load).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from dera_jax.data import list_task
from dera_jax.data.tokenizer import ByteTokenizer
from dera_jax.models import Transformer, tiny_config
from dera_jax.models.checkpoint import load_checkpoint, save_checkpoint
from dera_jax.training.loop import train_loop
from dera_jax.training.sft import SFTBatch, init_train_state, make_sft_step, sft_loss

config_flags.DEFINE_config_file("config", "configs/sft.py", "Training config.")
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, final model).",
                    required=True)
FLAGS = flags.FLAGS

TASKS = ("lists",)


def validate(c) -> None:
  """Start-up checks, before any model is built."""
  if c.task not in TASKS:
    raise ValueError(f"config.task={c.task!r}: must be one of {TASKS}")
  for name in ("num_examples", "seq_len", "batch_size", "num_steps", "checkpoint_every",
               "keep_checkpoints", "log_every"):
    if int(c[name]) < 1:
      raise ValueError(f"config.{name}={c[name]}: must be >= 1")
  if c.batch_size > c.num_examples:
    raise ValueError(f"config.batch_size={c.batch_size} is larger than the dataset "
                     f"(config.num_examples={c.num_examples})")
  if not 0 <= c.warmup_steps < c.num_steps:
    raise ValueError(f"config.warmup_steps={c.warmup_steps}: must be in [0, num_steps="
                     f"{c.num_steps})")
  if not c.learning_rate > 0:
    raise ValueError(f"config.learning_rate={c.learning_rate}: must be > 0")


def encode_examples(tokenizer, examples, seq_len: int) -> SFTBatch:
  """[BOS] prompt response [EOS], right-padded; the loss covers response + EOS."""
  n = len(examples)
  tokens = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((n, seq_len), bool)
  loss_mask = np.zeros((n, seq_len), bool)
  for i, ex in enumerate(examples):
    prompt = tokenizer.encode(ex.prompt)
    ids = prompt + tokenizer.encode(ex.response, add_special_tokens=False) + list(
        tokenizer.eos_ids[:1])
    if len(ids) > seq_len:
      raise ValueError(f"example {i} has {len(ids)} tokens: more than config.seq_len={seq_len}")
    tokens[i, :len(ids)], mask[i, :len(ids)] = ids, True
    loss_mask[i, len(prompt):len(ids)] = True
  return SFTBatch(tokens=tokens, mask=mask, loss_mask=loss_mask)


def build_model(c, vocab_size: int) -> Transformer:
  if c.init_from:
    return load_checkpoint(c.init_from)
  config = tiny_config(vocab_size=vocab_size, max_seq_len=max(c.seq_len + 64, 128),
                       **c.model.to_dict())
  return Transformer(config, rngs=nnx.Rngs(c.seed))


def main(argv):
  del argv
  c = FLAGS.config
  validate(c)
  tokenizer = ByteTokenizer()
  train = encode_examples(tokenizer, list_task.make_examples(c.num_examples, seed=c.seed),
                          c.seq_len)
  held_out = encode_examples(tokenizer, list_task.make_examples(256, seed=c.seed + 10_000),
                             c.seq_len)
  model = build_model(c, tokenizer.vocab_size)
  print(f"[sft] {model.config.num_params / 1e6:.2f}M parameters, {c.num_examples} examples",
        flush=True)
  schedule = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, c.warmup_steps,
                                                c.num_steps, c.learning_rate * 0.05)
  optimizer = optax.chain(optax.clip_by_global_norm(c.grad_clip),
                          optax.adamw(schedule, weight_decay=c.weight_decay))
  graphdef, state = init_train_state(model, optimizer)
  step = make_sft_step(graphdef, optimizer)

  def batch_at(i: int) -> SFTBatch:
    idx = np.random.default_rng([c.seed, i]).integers(0, c.num_examples, c.batch_size)
    return SFTBatch(tokens=train.tokens[idx], mask=train.mask[idx],
                    loss_mask=train.loss_mask[idx])

  @jax.jit
  def evaluate(state):
    loss, _ = sft_loss(nnx.merge(graphdef, state.params), held_out)
    return {"loss": loss, "perplexity": jax.numpy.exp(loss)}

  state, metrics = train_loop(
      step_fn=lambda s, b, rng: step(s, b), init_state=state, batch_at=batch_at,
      num_steps=c.num_steps, workdir=FLAGS.workdir, config=c, name="sft", seed=c.seed,
      checkpoint_every=c.checkpoint_every, keep_checkpoints=c.keep_checkpoints,
      log_every=c.log_every, eval_fn=evaluate, eval_every=c.eval_every)
  save_checkpoint(nnx.merge(graphdef, state.params), os.path.join(FLAGS.workdir, "model"),
                  overwrite=True)
  print(f"[sft] done: {metrics}; model in {os.path.join(FLAGS.workdir, 'model')}", flush=True)


if __name__ == "__main__":
  app.run(main)
