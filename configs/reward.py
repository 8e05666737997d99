"""Reward model (Bradley–Terry) on the task's preference pairs, trunk from the SFT model."""

from configs.common import training_defaults


def get_config():
  c = training_defaults(num_steps=300, learning_rate=1e-3)
  c.label_noise = 0.1  # probability that a preference label is flipped
  c.normalize = True  # rewards to mean 0 / std 1 on samples of the SFT model
  c.num_normalize_samples = 256
  c.max_new_tokens = 40
  return c
