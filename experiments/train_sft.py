"""Supervised fine-tuning: `python -m experiments.train_sft --config=configs/sft.py --workdir=DIR`.

Writes DIR/metrics.jsonl, DIR/checkpoints/ (resumable: run the same command again) and, at
the end, DIR/model (a `save_checkpoint` directory the next stages load).
"""

from __future__ import annotations

import os

import jax
import optax
from flax import nnx

from experiments import common
from dera_jax.models.checkpoint import save_checkpoint
from dera_jax.training.loop import train_loop
from dera_jax.training.sft import SFTBatch, init_train_state, make_sft_step, sft_loss

def validate(c) -> None:
  common.validate_common(c)
  common.check(0 <= c.warmup_steps < c.num_steps, "warmup_steps", c.warmup_steps,
               f"must be in [0, num_steps={c.num_steps})")


def run(c, workdir: str) -> str:
  """Train with config `c` in `workdir`; returns the path of the model written."""
  validate(c)
  tokenizer = common.tokenizer_for(c)
  train = common.pipeline(c, "sft", "train", tokenizer)
  held_out = common.pipeline(c, "sft", "validation", tokenizer, batch_size=min(
      c.num_eval_examples, 256), shuffle=False)[0]
  model = common.new_model(c, tokenizer.vocab_size)
  print(f"[sft] {model.config.num_params / 1e6:.2f}M parameters, {c.num_examples} examples",
        flush=True)
  schedule = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, c.warmup_steps,
                                                c.num_steps, c.learning_rate * 0.05)
  optimizer = optax.chain(optax.clip_by_global_norm(c.grad_clip),
                          optax.adamw(schedule, weight_decay=c.weight_decay))
  graphdef, state = init_train_state(model, optimizer)
  step = make_sft_step(graphdef, optimizer)
  as_batch = lambda b: SFTBatch(tokens=b["tokens"], mask=b["mask"], loss_mask=b["loss_mask"])
  held_out = as_batch(held_out)

  @jax.jit
  def evaluate(state):
    loss, _ = sft_loss(nnx.merge(graphdef, state.params), held_out)
    return {"loss": loss, "perplexity": jax.numpy.exp(loss)}

  state, metrics = train_loop(
      step_fn=lambda s, b, rng: step(s, b), init_state=state,
      batch_at=lambda i: as_batch(train[i - 1]), num_steps=c.num_steps, workdir=workdir,
      config=c, name="sft", seed=c.seed, checkpoint_every=c.checkpoint_every,
      keep_checkpoints=c.keep_checkpoints, log_every=c.log_every, eval_fn=evaluate,
      eval_every=c.eval_every)
  path = os.path.join(workdir, "model")
  save_checkpoint(nnx.merge(graphdef, state.params), path, overwrite=True)
  print(f"[sft] done: {metrics}; model in {path}", flush=True)
  return path


if __name__ == "__main__":
  common.run_app(run, "configs/sft.py")
