"""DeRa vs retrained for a chat model pair you already have: an SFT checkpoint and its DPO
checkpoint (HF directories or .gguf files), on your preference data.

    python -m experiments.reproduce --config=configs/chat.py --workdir=runs/chat \
        --config.sft_model=/models/zephyr-sft --config.aligned_model=/models/zephyr-dpo \
        --config.beta=0.1 --config.task_data=/data/prefs

`beta` is the β the aligned checkpoint was trained at. `task_data` holds train.jsonl,
validation.jsonl and test.jsonl, one {"prompt", "chosen", "rejected"} object per line. Prompts
are rendered as a user turn of the SFT tokenizer's chat template. The retrained baselines are
DPO (LoRA) from the SFT model at β/λ on half of the training pairs; a reward model learns from
the same half (the learned-reward column) and a second one from the other half is the gold judge.
Scale through config values alone.
"""

from configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.task = "preference_files"
  c.task_data = ""  # required: the folder of {train,validation,test}.jsonl
  c.sft_model = ""  # required: the SFT checkpoint
  c.aligned_model = ""  # required: the DPO checkpoint, trained from sft_model at `beta`
  c.beta = 0.1
  c.lambdas = "0,0.5,1,2,4"
  c.train_seeds = 1  # one given aligned model; seeds of the retrained ones alone would not pair
  c.gold = "reward_model"
  c.overlong = "truncate"  # a long post / prompt loses its start, as in the paper's setup
  c.chat_template = True
  c.dtype = "bfloat16"
  c.seq_len = 1024
  c.max_prompt_len = 512
  for stage in (c.sft, c.reward, c.policy):
    stage.task, stage.seq_len, stage.max_prompt_len = c.task, c.seq_len, c.max_prompt_len
    stage.num_examples = 10**9  # every pair of the files
    stage.num_eval_examples = 256
  c.reward.num_steps, c.reward.batch_size, c.reward.learning_rate = 1000, 32, 1e-5
  c.reward.label_noise = 0.0
  c.reward.lora_rank = 16
  c.reward.max_new_tokens = 256
  c.reward.num_normalize_samples = 256
  c.reward.checkpoint_every, c.reward.eval_every = 250, 250
  c.policy.algorithm = "dpo"
  c.policy.lora_rank = 16
  c.policy.num_steps, c.policy.batch_size, c.policy.learning_rate = 1000, 32, 5e-6
  c.policy.checkpoint_every = 250
  c.eval.num_prompts = 200
  c.eval.samples_per_prompt = 1
  c.eval.sampling_seeds = 3
  c.eval.max_new_tokens = 256
  c.eval.score_batch_size = 16
  return c
