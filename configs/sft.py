"""SFT on the built-in lists task with a small byte-level decoder (CPU, about a minute)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "lists"  # built-in task whose demonstrations are trained on
  c.seed = 0
  c.num_examples = 4000  # demonstrations generated for the task
  c.seq_len = 64
  c.batch_size = 64
  c.num_steps = 400
  c.learning_rate = 3e-3
  c.warmup_steps = 50
  c.weight_decay = 0.0
  c.grad_clip = 1.0
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  c.log_every = 20
  c.eval_every = 100
  c.init_from = ""  # "" = random init from c.model; else a checkpoint dir written by a run

  c.model = ml_collections.ConfigDict()
  c.model.d_model = 128
  c.model.num_layers = 3
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 32
  c.model.mlp_dim = 256
  return c
