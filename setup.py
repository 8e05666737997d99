"""dera_jax: decoding-time realignment (DeRa) of language models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="dera_jax",
    version="0.1.0",
    description="Decoding-time realignment of language models (DeRa) in JAX/Flax",
    python_requires=">=3.10",
    packages=find_packages(include=["dera_jax", "dera_jax.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "ml_collections",
        "absl-py",
        "tensorflow-datasets",
        "array-record",
        "grain",
        "numpy",
        "ml_dtypes",
        # Checkpoint import: tokenizers, chat templates, GGUF files (no PyTorch at run time).
        "tokenizers",
        "sentencepiece",
        "jinja2",
        "gguf",
        "matplotlib",  # result plots (PNG)
    ],
    extras_require={
        # transformers (PyTorch) is the reference for imported weights and the speed peer:
        # tests and benchmarks only, never a runtime dependency.
        "test": ["pytest", "hypothesis", "chex", "scipy", "torch==2.13.0", "transformers",
                 "safetensors", "accelerate", "trl"],
        "hf": ["torch==2.13.0", "transformers", "safetensors", "accelerate", "trl"],
    },
)
