"""dera_jax: decoding-time realignment (DeRa) of language models in JAX/Flax."""

__version__ = "0.1.0"
