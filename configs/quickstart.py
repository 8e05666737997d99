"""The whole DeRa-vs-retrained protocol on the built-in length task, sized for 2 CPU cores.

SFT -> reward model -> aligned model at β -> models retrained at β/λ -> DeRa at the same λ ->
evaluation -> results/. `make demo` runs this config.
"""

import ml_collections

from configs.common import training_defaults


def get_config():
  c = ml_collections.ConfigDict()
  c.task = "length"  # length | summarization | hallucination
  c.seed = 0
  c.beta = 0.5  # KL strength of the aligned model (0.1 already saturates the length task)
  c.lambdas = "0,0.5,1,2,4"  # DeRa grid; retrained at β/λ (λ=0: SFT, λ=1: aligned)
  c.seq_len = 64  # prompt + response tokens (bytes + BOS/EOS)
  c.max_prompt_len = 24
  c.data_dir = ""  # "" keeps the task records in memory; else a TFDS data dir
  c.task_data = ""  # the user-file folder of task "tldr" / "preference_files"
  c.tokenizer = "auto"  # "auto": sft_model's or sft.init_from's tokenizer, else bytes
  c.chat_template = False  # prompts as a user turn of the tokenizer's chat template
  c.dtype = "float32"  # of imported models
  c.overlong = "error"  # prompt + response over seq_len: "error" or "truncate" (prompt's left)
  c.sft_model = ""  # an existing SFT checkpoint (HF dir, .gguf, orbax) instead of training one
  c.aligned_model = ""  # an existing aligned checkpoint (π_β) instead of training one
  c.gold = "task"  # judge: "task" (the task's exact judge) | "reward_model" (a second reward
  #                  model trained on the half of the pairs the proxy never sees)
  c.train_seeds = 2  # aligned and retrained models trained with seeds seed, seed+1, …

  shared = dict(task=c.task, seed=c.seed, seq_len=c.seq_len, max_prompt_len=c.max_prompt_len)
  c.sft = training_defaults(num_steps=300, learning_rate=3e-3, batch_size=64, warmup_steps=30,
                            log_every=50, checkpoint_every=100, eval_every=100, **shared)
  c.reward = training_defaults(num_steps=150, learning_rate=1e-3, batch_size=32, warmup_steps=0,
                               log_every=50, checkpoint_every=150, eval_every=150, **shared)
  c.reward.label_noise = 0.1
  c.reward.normalize = True
  c.reward.num_normalize_samples = 128
  c.reward.max_new_tokens = 32
  c.policy = training_defaults(num_steps=60, learning_rate=5e-4, batch_size=16, warmup_steps=0,
                               log_every=20, checkpoint_every=60, **shared)
  c.policy.algorithm = "rloo"  # rloo | ppo | dpo (on the task's preference pairs)
  c.policy.beta = c.beta  # set per stage: β for the aligned model, β/λ for the retrained ones
  c.policy.reward_model = ""  # set by the pipeline
  c.policy.k = 4
  c.policy.temperature = 1.0
  c.policy.max_new_tokens = 32
  c.policy.gamma = 1.0
  c.policy.gae_lambda = 0.95
  c.policy.clip_eps = 0.2

  c.eval = ml_collections.ConfigDict()
  c.eval.num_prompts = 32  # per split (validation, test)
  c.eval.samples_per_prompt = 4
  c.eval.sampling_seeds = 2  # the spread is over train_seeds x sampling_seeds runs
  c.eval.temperature = 1.0
  c.eval.max_new_tokens = 32
  c.eval.score_batch_size = 64  # rows per reward-model call
  return c
