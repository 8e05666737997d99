"""Reward model: `python -m experiments.train_reward --config=configs/reward.py
--config.init_from=SFT_DIR/model --workdir=DIR`.

Bradley–Terry on the task's preference pairs; the trunk starts from the SFT model. Rewards are
normalised to mean 0 / std 1 on samples of the SFT model (config.normalize). Writes
DIR/reward_model (`save_scalar_head_model`), DIR/metrics.jsonl and resumable checkpoints.
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from experiments import common
from dera_jax.models.heads import ScalarHeadModel, save_scalar_head_model
from dera_jax.sampling import Sampler
from dera_jax.training.common import make_optimizer
from dera_jax.training.lora import LoRAConfig
from dera_jax.training.loop import train_loop
from dera_jax.training.reward import (init_reward_state, make_reward_eval_step, make_reward_step,
                                      normalize_rewards)

def sft_sample_batches(model, tokenizer, prompts: list[dict], c) -> list[dict]:
  """SFT-format batches of the SFT model's own samples for `prompts` (for normalisation)."""
  ids = [tokenizer.encode(r["prompt"]) for r in prompts]
  sampler = Sampler(model, max_prompt_len=c.max_prompt_len, max_new_tokens=c.max_new_tokens,
                    stop_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id)
  out = sampler(ids, seed=c.seed)
  t = c.max_prompt_len + c.max_new_tokens
  tokens = np.full((len(ids), t), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(ids), t), bool)
  loss_mask = np.zeros((len(ids), t), bool)
  for i, (p, y) in enumerate(zip(ids, out.token_lists())):
    row = p + y
    tokens[i, :len(row)], mask[i, :len(row)] = row, True
    loss_mask[i, len(p):len(row)] = True
  return [{"tokens": tokens[i:i + c.batch_size], "mask": mask[i:i + c.batch_size],
           "loss_mask": loss_mask[i:i + c.batch_size]} for i in range(0, len(ids), c.batch_size)]


def run(c, workdir: str) -> str:
  """Train with config `c` in `workdir`; returns the path of the model written."""
  common.validate_common(c)
  common.check(0 <= c.label_noise < 0.5, "label_noise", c.label_noise, "must be in [0, 0.5)")
  tokenizer = common.tokenizer_for(c)
  train = common.pipeline(c, "preference", "train", tokenizer)
  held_out = common.pipeline(c, "preference", "validation", tokenizer, shuffle=False,
                             batch_size=min(c.num_eval_examples, 256))[0]
  sft = common.new_model(c, tokenizer.vocab_size)
  model = ScalarHeadModel(nnx.clone(sft), rngs=nnx.Rngs(c.seed))
  lora = LoRAConfig(rank=c.lora_rank, alpha=c.lora_alpha) if c.lora_rank else None
  optimizer = make_optimizer(c.learning_rate, weight_decay=c.weight_decay, clip_norm=c.grad_clip)
  spec, state = init_reward_state(model, optimizer, lora=lora)
  step = make_reward_step(spec, optimizer)
  evaluate = make_reward_eval_step(spec)
  state, metrics = train_loop(
      step_fn=step, init_state=state, batch_at=lambda i: train[i - 1], num_steps=c.num_steps,
      workdir=workdir, config=c, name="reward", seed=c.seed,
      checkpoint_every=c.checkpoint_every, keep_checkpoints=c.keep_checkpoints,
      log_every=c.log_every, eval_fn=lambda s: evaluate(s, held_out), eval_every=c.eval_every,
      checkpoint_fields=common.TRAINER_FIELDS)
  if c.normalize:
    data = common.records(c, "prompts", "validation")
    prompts = [data[i] for i in range(min(c.num_normalize_samples, len(data)))]
    state = normalize_rewards(spec, state, sft_sample_batches(sft, tokenizer, prompts, c))
  reward_model = spec.export(state.params, state.frozen)
  path = os.path.join(workdir, "reward_model")
  save_scalar_head_model(reward_model, path, overwrite=True)
  print(f"[reward] done: held-out accuracy {metrics.get('eval_accuracy', float('nan')):.3f}; "
        f"normalisation shift {float(reward_model.shift[...]):.3f} scale "
        f"{float(reward_model.scale[...]):.3f}; model in {path}", flush=True)
  return path


if __name__ == "__main__":
  common.run_app(run, "configs/reward.py")
