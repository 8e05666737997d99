"""Checkpoints of a training run: an orbax `CheckpointManager` plus the run's config.

    run = RunCheckpoints(workdir, config=cfg_dict, save_every=100, keep=3)
    state, start = run.restore_or(init_state)      # resume if a checkpoint exists
    ...
    run.save(step, state)                          # writes every `save_every` steps
    run.save(step, state, force=True)              # the last step
    run.close()

The config is stored beside the weights (JSON); resuming under a different config raises a
ValueError that names every field that differs, so a workdir cannot silently mix two runs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

# Fields that may change between a run and its resumption without changing what it computes.
RESUMABLE_FIELDS = ("workdir", "log_every", "checkpoint_every", "keep_checkpoints")


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
  """A nested dict / ConfigDict as {"a.b": value} with JSON-compatible values."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  out = {}
  for key, value in dict(config).items():
    name = f"{prefix}{key}"
    if hasattr(value, "to_dict") or isinstance(value, dict):
      out.update(flatten_config(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Human-readable differences between two flattened configs, resumable fields ignored."""
  out = []
  for name in sorted(set(stored) | set(current)):
    if name.split(".")[-1] in RESUMABLE_FIELDS:
      continue
    a, b = stored.get(name, "<absent>"), current.get(name, "<absent>")
    if a != b:
      out.append(f"{name}: checkpoint has {a!r}, now {b!r}")
  return out


class RunCheckpoints:
  """Save every `save_every` steps and at the end, keep the last `keep`, config beside them."""

  def __init__(self, workdir: str, *, config: Any, save_every: int, keep: int):
    if save_every < 1 or keep < 1:
      raise ValueError(f"save_every={save_every}, keep={keep}: both must be >= 1")
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.config = json.loads(json.dumps(flatten_config(config), default=str))
    self.save_every = save_every
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def check_config(self) -> None:
    """Raise if the latest checkpoint was written under a different config."""
    step = self.latest_step()
    if step is None:
      return
    stored = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config
    differences = config_differences(stored, self.config)
    if differences:
      raise ValueError(f"{self.directory} holds checkpoints of a different config: "
                       + "; ".join(differences) + ". Use another --workdir or delete it.")

  def restore_or(self, init_state) -> tuple[Any, int]:
    """(the latest checkpointed state, its step), or (init_state, 0) when there is none."""
    step = self.latest_step()
    if step is None:
      return init_state, 0
    self.check_config()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), init_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored.state, step

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Write `state` at `step` if it is a multiple of save_every (or `force`)."""
    if not force and step % self.save_every:
      return False
    if step in self.manager.all_steps():
      return False
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(self.config)), force=True)
    self.manager.wait_until_finished()
    return True

  def close(self) -> None:
    self.manager.close()
