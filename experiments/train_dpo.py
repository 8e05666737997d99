"""DPO: `python -m experiments.train_dpo --config=configs/dpo.py --config.init_from=SFT_DIR/model
--workdir=DIR`.

The policy starts from the SFT model, which is also the frozen reference; the reference
log-probs of each batch are computed once, when the batch is drawn. Writes DIR/model
(LoRA merged when `lora_rank` > 0), DIR/metrics.jsonl and resumable checkpoints.
"""

from __future__ import annotations

import math
import os

from flax import nnx

from experiments import common
from dera_jax.models.checkpoint import save_checkpoint
from dera_jax.training.common import make_optimizer
from dera_jax.training.dpo import init_dpo_state, make_dpo_step, make_reference_fn
from dera_jax.training.lora import LoRAConfig
from dera_jax.training.loop import train_loop

def run(c, workdir: str) -> str:
  """Train with config `c` in `workdir`; returns the path of the model written."""
  common.validate_common(c)
  common.check(math.isfinite(c.beta) and c.beta > 0, "beta", c.beta, "must be a finite number > 0")
  common.check(bool(c.init_from), "init_from", c.init_from,
               "DPO needs the SFT model (a checkpoint directory) as policy init and reference")
  tokenizer = common.tokenizer_for(c)
  train = common.pipeline(c, "preference", "train", tokenizer)
  reference = common.new_model(c, tokenizer.vocab_size)
  add_reference = make_reference_fn(reference)
  lora = LoRAConfig(rank=c.lora_rank, alpha=c.lora_alpha) if c.lora_rank else None
  optimizer = make_optimizer(c.learning_rate, weight_decay=c.weight_decay, clip_norm=c.grad_clip)
  spec, state = init_dpo_state(nnx.clone(reference), optimizer, beta=c.beta, lora=lora)
  step = make_dpo_step(spec, optimizer)
  state, metrics = train_loop(
      step_fn=step, init_state=state, batch_at=lambda i: add_reference(train[i - 1]),
      num_steps=c.num_steps, workdir=workdir, config=c, name="dpo", seed=c.seed,
      checkpoint_every=c.checkpoint_every, keep_checkpoints=c.keep_checkpoints,
      log_every=c.log_every, checkpoint_fields=common.TRAINER_FIELDS)
  path = os.path.join(workdir, "model")
  save_checkpoint(spec.export(state.params, state.frozen), path, overwrite=True)
  print(f"[dpo] done: {metrics}; model in {path}", flush=True)
  return path


if __name__ == "__main__":
  common.run_app(run, "configs/dpo.py")
