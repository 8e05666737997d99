"""The training loop every trainer shares: resume, steps, progress, JSONL metrics, checkpoints.

    state, metrics = train_loop(step_fn=train_step, init_state=state, batch_at=batch_at,
                                num_steps=1000, workdir=workdir, config=config, name="sft")

- `step_fn(state, batch, rng) -> (state, metrics)` is the jitted, pure train step.
- `batch_at(step) -> batch` gives the batch of a step deterministically, so a resumed run sees
  exactly the batches an uninterrupted one would.
- Metrics go to `workdir/metrics.jsonl` (one line per logged step; lines after the resumed
  step are dropped on resume). Progress (steps/s, ETA) is printed every `log_every` steps.
- A non-finite loss stops the run with a FloatingPointError that names the step; no checkpoint
  is written after it, so the last good checkpoint survives.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from dera_jax.training.checkpointing import RunCheckpoints


def _to_host(metrics: dict) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def _trim_metrics(path: str, last_step: int) -> None:
  """Keep only the lines of steps <= last_step (atomic rewrite)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(lines)
  os.replace(tmp, path)


def train_loop(*, step_fn: Callable, init_state: Any, batch_at: Callable[[int], Any],
               num_steps: int, workdir: str, config: Any, name: str, seed: int = 0,
               checkpoint_every: int = 100, keep_checkpoints: int = 3, log_every: int = 10,
               eval_fn: Callable[[Any], dict] | None = None, eval_every: int = 0,
               loss_key: str = "loss",
               checkpoint_fields: tuple[str, ...] | None = None) -> tuple[Any, dict[str, float]]:
  """Run (or resume) `num_steps` steps of `step_fn`; returns the final state and metrics.

  `checkpoint_fields`: for a dataclass state, checkpoint only these fields (e.g. params,
  opt_state, step, hparams — not the frozen reference and reward models, which the run
  rebuilds at start-up); None checkpoints the whole state.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps}: must be >= 1")
  os.makedirs(workdir, exist_ok=True)
  checkpoints = RunCheckpoints(workdir, config=config, save_every=checkpoint_every,
                               keep=keep_checkpoints)
  if checkpoint_fields is None:
    state, start = checkpoints.restore_or(init_state)
  else:
    view = {f: getattr(init_state, f) for f in checkpoint_fields}
    restored, start = checkpoints.restore_or(view)
    state = dataclasses.replace(init_state, **restored)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  _trim_metrics(metrics_path, start)
  if start:
    print(f"[{name}] resumed from step {start}", flush=True)
  base_key = jax.random.key(seed)
  pending: list[tuple[int, dict]] = []  # device metrics not yet checked for NaN
  last: dict[str, float] = {}
  t0, done_at_t0 = time.perf_counter(), start

  def flush(step: int) -> None:
    nonlocal last
    with open(metrics_path, "a") as f:
      for s, m in pending:
        host = _to_host(m)
        loss = host.get(loss_key)
        if loss is not None and not math.isfinite(loss):
          latest = checkpoints.latest_step()
          checkpoints.close()
          raise FloatingPointError(
              f"[{name}] step {s}: {loss_key} is {loss}; stopping. The last good checkpoint "
              f"is step {latest} in {checkpoints.directory}")
        if s % log_every == 0 or s == num_steps:
          f.write(json.dumps({"step": s, **host}) + "\n")
        last = host
    pending.clear()
    rate = (step - done_at_t0) / max(time.perf_counter() - t0, 1e-9)
    keys = [k for k in (loss_key, "reward", "kl", "accuracy", "length") if k in last]
    shown = " ".join(f"{k} {last[k]:.4g}" for k in keys or list(last)[:4])
    print(f"[{name}] step {step}/{num_steps} {shown} {rate:.2f} steps/s "
          f"ETA {(num_steps - step) / max(rate, 1e-9):.0f}s", flush=True)

  for step in range(start + 1, num_steps + 1):
    state, metrics = step_fn(state, batch_at(step), jax.random.fold_in(base_key, step))
    pending.append((step, metrics))
    due_save = step % checkpoint_every == 0 or step == num_steps
    if step % log_every == 0 or due_save:
      flush(step)  # also checks for NaN before anything is saved
    if eval_fn is not None and eval_every and (step % eval_every == 0 or step == num_steps):
      evaluation = {f"eval_{k}": v for k, v in _to_host(eval_fn(state)).items()}
      with open(metrics_path, "a") as f:
        f.write(json.dumps({"step": step, **evaluation}) + "\n")
      print(f"[{name}] step {step} " + " ".join(f"{k} {v:.4g}" for k, v in evaluation.items()),
            flush=True)
      last.update(evaluation)
    saved = state if checkpoint_fields is None else {f: getattr(state, f)
                                                      for f in checkpoint_fields}
    checkpoints.save(step, saved, force=step == num_steps)
  checkpoints.close()
  return state, last
