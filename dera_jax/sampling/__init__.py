"""DeRa sampling: the mixing rule, token filters and the jitted two-model sampler."""

from dera_jax.sampling.mixing import kl_estimate, mix_log_probs, mix_logits, sequence_log_prob
from dera_jax.sampling.sampler import DeRaSampler, SampleOutput, Sampler

__all__ = ["DeRaSampler", "Sampler", "SampleOutput", "mix_logits", "mix_log_probs",
           "sequence_log_prob", "kl_estimate"]
