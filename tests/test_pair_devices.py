"""DeRaSampler(pair_devices=...): each model on its own device."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest
from flax import nnx

from dera_jax.models import Transformer, tiny_config
from dera_jax.sampling import DeRaSampler


def test_two_devices_draw_what_one_device_draws():
  """In a fresh process with two CPU devices (the device count is fixed at JAX start-up)."""
  script = pathlib.Path(__file__).with_name("pair_devices_check.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "pair_devices ok" in result.stdout


@pytest.mark.parametrize("bad", ["same device twice", "a string", "one device"])
def test_pair_devices_must_be_two_distinct_devices(bad):
  cfg = tiny_config(vocab_size=64)
  sft, aligned = Transformer(cfg, rngs=nnx.Rngs(0)), Transformer(cfg, rngs=nnx.Rngs(1))
  devices = {"same device twice": [jax.devices()[0]] * 2, "a string": "cpu",
             "one device": jax.devices()[:1]}[bad]
  with pytest.raises(ValueError, match="pair_devices=.*must be two distinct jax devices"):
    DeRaSampler(sft, aligned, max_prompt_len=4, max_new_tokens=2, pair_devices=devices)
