"""Tokenizers, datasets and the built-in tasks."""
