"""Training: SFT, reward model (Bradley–Terry), DPO, KL-regularised RL (RLOO, PPO), LoRA,
and the shared loop with checkpoints."""

from dera_jax.training.common import (ModelSpec, NonFiniteLossError, TrainerState, check_finite,
                                      make_optimizer, prepare_model, set_hparam)
from dera_jax.training.dpo import (init_dpo_state, make_dpo_step, make_reference_fn,
                                   precompute_reference)
from dera_jax.training.lora import LoRAConfig, init_lora, merge_lora
from dera_jax.training.ppo import PPOTrainer
from dera_jax.training.reward import (init_reward_state, make_reward_eval_step, make_reward_step,
                                      make_score_fn, normalize_rewards)
from dera_jax.training.rloo import RLOOTrainer
from dera_jax.training.rollout import rollout
from dera_jax.training.sft import (SFTBatch, TrainState, init_train_state, make_sft_eval_step,
                                   make_sft_step, sft_evaluate, sft_loss)

__all__ = [
    "ModelSpec", "NonFiniteLossError", "TrainerState", "check_finite", "make_optimizer",
    "prepare_model", "set_hparam", "init_dpo_state", "make_dpo_step", "make_reference_fn",
    "precompute_reference", "LoRAConfig", "init_lora", "merge_lora", "PPOTrainer",
    "init_reward_state", "make_reward_eval_step", "make_reward_step", "make_score_fn",
    "normalize_rewards", "RLOOTrainer", "rollout", "SFTBatch", "TrainState", "init_train_state",
    "make_sft_eval_step", "make_sft_step", "sft_evaluate", "sft_loss",
]
