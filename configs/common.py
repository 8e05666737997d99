"""Fields every training config shares (the quickstart scale: tiny models, one CPU)."""

import ml_collections


def training_defaults(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "lists"  # lists | length | summarization | hallucination (built-in, generated)
  #                   | tldr | preference_files (user files in `task_data`)
  c.task_data = ""  # the folder a file task reads
  c.data_dir = ""  # "" keeps task records in memory; else a TFDS (array_record) data dir
  c.tokenizer = "bytes"  # "bytes", or a HF dir / tokenizer dir / .gguf file to take it from
  c.chat_template = False  # render each prompt as a user turn of the tokenizer's chat template
  c.dtype = "float32"  # of models loaded from init_from: float32 | bfloat16 | float16
  c.preference_subset = "all"  # all | proxy | gold: which half of the pairs (see experiments)
  c.seed = 0
  c.data_seed = -1  # seed of the generated / sampled data; -1: `seed`
  c.overlong = "error"  # records longer than seq_len: "error" or "truncate" (the prompt's left)
  c.num_examples = 4000  # training records generated for the task
  c.num_eval_examples = 256
  c.seq_len = 64  # prompt + response tokens
  c.max_prompt_len = 24
  c.batch_size = 32
  c.num_steps = 200
  c.learning_rate = 1e-3
  c.warmup_steps = 20
  c.weight_decay = 0.0
  c.grad_clip = 1.0
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  c.log_every = 20
  c.eval_every = 100
  c.init_from = ""  # a checkpoint directory (e.g. the SFT run's DIR/model)
  c.lora_rank = 0  # 0 = full fine-tuning; else LoRA adapters of this rank
  c.lora_alpha = 16.0
  c.model = ml_collections.ConfigDict()
  c.model.d_model = 128
  c.model.num_layers = 3
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 32
  c.model.mlp_dim = 256
  c.update(overrides)
  return c
