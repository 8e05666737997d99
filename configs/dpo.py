"""DPO at β against the SFT model (the reference), on the task's preference pairs."""

from configs.common import training_defaults


def get_config():
  c = training_defaults(num_steps=200, learning_rate=5e-4)
  c.beta = 0.1
  c.label_noise = 0.1
  return c
