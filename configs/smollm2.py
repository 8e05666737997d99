"""The protocol on a real model: SmolLM2-135M-Instruct as the SFT model, LoRA-DPO aligned and
retrained versions of it, on the hallucination task (exact judge), sized for 2 CPU cores.

    G=$(python -m dera_jax.models.fetch smollm2)   # the GGUF, checksum-verified
    python -m experiments.reproduce --config=configs/smollm2.py --config.sft_model=$G \
        --workdir=runs/smollm2

Prompts are rendered as a user turn of SmolLM2's chat template. The reward model (a LoRA trunk
with a scalar head) gives the learned-reward column; the aligned model is DPO at β on the task's
noisy preference pairs and the retrained ones DPO at β/λ, every one a LoRA (merged) of SmolLM2.
"""

from configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.task = "hallucination"
  c.sft_model = ""  # required: the SmolLM2 GGUF (python -m dera_jax.models.fetch smollm2)
  c.chat_template = True
  c.beta = 0.1
  c.lambdas = "0,0.5,1,2"
  c.train_seeds = 1  # one DPO run per β on 2 cores; the spread is over sampling seeds
  c.seq_len = 96  # tokens: chat-formatted context + question (~60) and an answer
  c.max_prompt_len = 72
  for stage in (c.reward, c.policy):
    stage.task, stage.seq_len, stage.max_prompt_len = c.task, c.seq_len, c.max_prompt_len
    stage.lora_rank, stage.lora_alpha = 8, 16.0
    stage.num_examples, stage.num_eval_examples = 2000, 32
    stage.batch_size, stage.warmup_steps = 8, 0
  c.reward.num_steps, c.reward.learning_rate = 40, 1e-3
  c.reward.checkpoint_every, c.reward.eval_every, c.reward.log_every = 40, 40, 10
  c.reward.num_normalize_samples = 32
  c.reward.max_new_tokens = 24
  c.policy.algorithm = "dpo"
  c.policy.num_steps, c.policy.learning_rate = 40, 1e-3
  c.policy.checkpoint_every, c.policy.log_every = 40, 10
  c.eval.num_prompts = 24
  c.eval.samples_per_prompt = 2
  c.eval.sampling_seeds = 2
  c.eval.max_new_tokens = 24
  c.eval.score_batch_size = 16
  return c
