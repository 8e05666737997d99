"""The shared training loop: resume after SIGKILL gives the uninterrupted run's metrics,
a different config in the same workdir is refused by name, a NaN loss stops the run at its
step and keeps the last good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from dera_jax.training.loop import train_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.d_model=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
        "--config.model.num_kv_heads=1", "--config.model.head_dim=16", "--config.model.mlp_dim=64",
        "--config.batch_size=8", "--config.num_examples=64", "--config.log_every=1",
        "--config.checkpoint_every=4", "--config.eval_every=0", "--config.num_steps=40",
        "--config.warmup_steps=5"]


def _train_sft(workdir, *extra, wait=True):
  cmd = [sys.executable, "-m", "experiments.train_sft", f"--workdir={workdir}", *TINY, *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if wait:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out
  return proc


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row for row in map(json.loads, f) if "loss" in row}


@pytest.mark.slow  # ~20 s: a training process killed mid-run and resumed
def test_resume_after_sigkill_gives_the_uninterrupted_metrics(tmp_path):
  code, out = _train_sft(tmp_path / "straight")
  assert code == 0, out[-3000:]
  straight = _metrics(tmp_path / "straight")

  killed = tmp_path / "killed"
  proc = _train_sft(killed, wait=False)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "8").is_dir():
    assert proc.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "model").exists()
  code, out = _train_sft(killed)
  assert code == 0, out[-3000:]
  assert "resumed from step" in out
  resumed = _metrics(killed)
  assert sorted(resumed) == sorted(straight) == list(range(1, 41))
  for step in straight:
    np.testing.assert_allclose(resumed[step]["loss"], straight[step]["loss"], rtol=1e-6)


def _toy_loop(workdir, *, nan_at=None, lr=0.1, num_steps=12):
  def step_fn(state, batch, rng):
    loss = jnp.where(state["step"] + 1 == (nan_at or -1), jnp.nan, state["w"] ** 2)
    return {"w": state["w"] - lr * 2 * state["w"], "step": state["step"] + 1}, {"loss": loss}

  return train_loop(step_fn=step_fn, init_state={"w": jnp.float32(3.0), "step": jnp.int32(0)},
                    batch_at=lambda i: None, num_steps=num_steps, workdir=str(workdir),
                    config={"lr": lr, "workdir": str(workdir)}, name="toy",
                    checkpoint_every=5, log_every=1)


def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
  with pytest.raises(FloatingPointError, match=r"step 7: loss is nan.*last good checkpoint is "
                                               r"step 5"):
    _toy_loop(tmp_path, nan_at=7)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]


def test_resuming_under_a_different_config_names_the_field(tmp_path):
  _toy_loop(tmp_path, num_steps=6)
  with pytest.raises(ValueError, match=r"different config: lr: checkpoint has 0.1, now 0.2"):
    _toy_loop(tmp_path, lr=0.2, num_steps=10)


def test_resume_continues_from_the_checkpoint_in_process(tmp_path):
  state, _ = _toy_loop(tmp_path, num_steps=6)   # checkpoints at 5 and 6
  resumed, _ = _toy_loop(tmp_path, num_steps=12)
  straight, _ = _toy_loop(tmp_path / "straight", num_steps=12)
  assert int(resumed["step"]) == 12
  np.testing.assert_allclose(float(resumed["w"]), float(straight["w"]), rtol=1e-6)
