"""KL-regularised RL: `python -m experiments.train_policy --config=configs/policy.py
--config.init_from=SFT_DIR/model --config.reward_model=RM_DIR/reward_model --workdir=DIR`.

Maximises r(x, y) − β·KL(π ‖ π_sft) with RLOO (k samples per prompt, leave-one-out baseline;
the default) or PPO (clipped ratio, value head initialised from the reward model, GAE).
Rollouts are drawn with `dera_jax.sampling`; the KL uses log-probs at the sampling temperature.
Writes DIR/model, DIR/metrics.jsonl and resumable checkpoints.
"""

from __future__ import annotations

import math
import os

from flax import nnx

from experiments import common
from dera_jax.models.checkpoint import save_checkpoint
from dera_jax.models.heads import load_scalar_head_model
from dera_jax.training.common import make_optimizer
from dera_jax.training.lora import LoRAConfig
from dera_jax.training.loop import train_loop
from dera_jax.training.ppo import PPOTrainer
from dera_jax.training.rloo import RLOOTrainer

ALGORITHMS = ("rloo", "ppo")


def validate(c) -> None:
  common.validate_common(c)
  common.check(c.algorithm in ALGORITHMS, "algorithm", c.algorithm, f"must be one of {ALGORITHMS}")
  common.check(math.isfinite(c.beta) and c.beta > 0, "beta", c.beta, "must be a finite number > 0")
  common.check(c.algorithm != "rloo" or (isinstance(c.k, int) and c.k >= 2), "k", c.k,
               "RLOO needs k >= 2 samples per prompt")
  common.check(c.temperature > 0, "temperature", c.temperature, "must be > 0")
  common.check(bool(c.init_from), "init_from", c.init_from,
               "RL needs the SFT model (a checkpoint directory) as policy init and reference")
  common.check(bool(c.reward_model), "reward_model", c.reward_model,
               "needs a reward model directory (DIR/reward_model of train_reward)")
  for path_field in ("init_from", "reward_model"):
    common.check(os.path.isdir(c[path_field]), path_field, c[path_field], "no such directory")


def build_trainer(c, tokenizer):
  sft = common.new_model(c, tokenizer.vocab_size)
  reward_model = load_scalar_head_model(c.reward_model)
  lora = LoRAConfig(rank=c.lora_rank, alpha=c.lora_alpha) if c.lora_rank else None
  optimizer = make_optimizer(c.learning_rate, weight_decay=c.weight_decay, clip_norm=c.grad_clip)
  settings = dict(ref_model=sft, reward_model=reward_model, beta=c.beta,
                  temperature=c.temperature, max_new_tokens=c.max_new_tokens,
                  stop_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id, lora=lora)
  if c.algorithm == "rloo":
    return RLOOTrainer(nnx.clone(sft), optimizer, k=c.k, **settings)
  value_model = load_scalar_head_model(c.reward_model)
  return PPOTrainer(nnx.clone(sft), value_model, optimizer, gamma=c.gamma, lam=c.gae_lambda,
                    clip_eps=c.clip_eps, **settings)


def run(c, workdir: str) -> str:
  """Train with config `c` in `workdir`; returns the path of the model written."""
  validate(c)
  tokenizer = common.tokenizer_for(c)
  prompts = common.pipeline(c, "prompts", "train", tokenizer)
  trainer = build_trainer(c, tokenizer)
  state, metrics = train_loop(
      step_fn=trainer.step, init_state=trainer.init_state(), batch_at=lambda i: prompts[i - 1],
      num_steps=c.num_steps, workdir=workdir, config=c, name=c.algorithm, seed=c.seed,
      checkpoint_every=c.checkpoint_every, keep_checkpoints=c.keep_checkpoints,
      log_every=c.log_every, checkpoint_fields=common.TRAINER_FIELDS)
  path = os.path.join(workdir, "model")
  save_checkpoint(trainer.policy_model(state), path, overwrite=True)
  print(f"[{c.algorithm}] done: {metrics}; model in {path}", flush=True)
  return path


if __name__ == "__main__":
  common.run_app(run, "configs/policy.py")
