"""SFT on the built-in lists task with a small byte-level decoder (CPU, about a minute)."""

from configs.common import training_defaults


def get_config():
  return training_defaults(num_steps=400, learning_rate=3e-3, batch_size=64, warmup_steps=50)
