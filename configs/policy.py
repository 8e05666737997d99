"""KL-regularised RL (RLOO by default, PPO as an option) against a learned reward model."""

from configs.common import training_defaults


def get_config():
  c = training_defaults(num_steps=100, learning_rate=5e-4, batch_size=16, log_every=10,
                        checkpoint_every=50)
  c.algorithm = "rloo"  # "rloo" | "ppo"
  c.beta = 0.1  # KL strength to the SFT model
  c.k = 4  # samples per prompt (RLOO)
  c.temperature = 1.0
  c.max_new_tokens = 40
  c.reward_model = ""  # DIR/reward_model of a train_reward run
  c.gamma = 1.0  # PPO
  c.gae_lambda = 0.95  # PPO
  c.clip_eps = 0.2  # PPO
  return c
