"""DeRa vs retrained on Reddit TL;DR summarization, from the user's summarize-from-feedback files
and a base model imported from Hugging Face (the paper's summarization setting).

    python -m experiments.reproduce --config=configs/tldr.py --workdir=runs/tldr \
        --config.task_data=/data/tldr --config.sft.init_from=/models/qwen2-0.5b

`task_data` is the folder `dera_jax.data.tldr` reads (train/valid/test.jsonl demonstrations and
comparisons/*.json). SFT fine-tunes the imported model on the demonstrations (its tokenizer is
used); the reward model learns from half of the human comparisons and a second reward model,
trained on the other half, is the gold judge; the aligned and retrained models are RLOO at β
and β/λ. Scale through config values alone (steps, batch sizes, lora_rank, dtype, eval sizes).
"""

from configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.task = "tldr"
  c.task_data = ""  # required: the folder of the TL;DR files
  c.gold = "reward_model"
  c.overlong = "truncate"  # a long post / prompt loses its start, as in the paper's setup
  c.beta = 0.05
  c.lambdas = "0,0.5,1,2,4"
  c.train_seeds = 2  # aligned and retrained RLOO runs twice each (the spread covers training)
  c.seq_len = 576  # prompt (up to 512 tokens) + summary
  c.max_prompt_len = 512
  c.dtype = "bfloat16"
  c.sft.init_from = ""  # required: a HF directory (Llama, Mistral, Qwen2 or Gemma family)
  for stage in (c.sft, c.reward, c.policy):
    stage.task, stage.seq_len, stage.max_prompt_len = c.task, c.seq_len, c.max_prompt_len
    stage.num_examples = 10**9  # every record of the files
    stage.num_eval_examples = 256
  c.sft.num_steps, c.sft.batch_size, c.sft.learning_rate, c.sft.warmup_steps = 2000, 64, 1e-5, 100
  c.sft.checkpoint_every, c.sft.eval_every = 500, 500
  c.reward.num_steps, c.reward.batch_size, c.reward.learning_rate = 2000, 64, 1e-5
  c.reward.label_noise = 0.0  # human labels: no noise added
  c.reward.max_new_tokens = 48
  c.reward.num_normalize_samples = 512
  c.reward.checkpoint_every, c.reward.eval_every = 500, 500
  c.policy.num_steps, c.policy.batch_size, c.policy.learning_rate = 1000, 32, 1e-6
  c.policy.k = 4
  c.policy.max_new_tokens = 48
  c.policy.checkpoint_every = 250
  c.eval.num_prompts = 256
  c.eval.samples_per_prompt = 2
  c.eval.sampling_seeds = 3
  c.eval.max_new_tokens = 48
  c.eval.score_batch_size = 32
  return c
