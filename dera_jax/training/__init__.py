"""Training: SFT (next-token loss on responses)."""

from dera_jax.training.sft import SFTBatch, TrainState, make_sft_step, sft_loss

__all__ = ["SFTBatch", "TrainState", "make_sft_step", "sft_loss"]
