"""The built-in tasks: generated, seeded, judged exactly. `get_task(name)` returns one.

    length         a list rewarded for brevity or a target length (`length.LengthConfig`)
    summarization  keep a document's key facts, drop distractors
                   (`summarization.SummarizationConfig`)
    hallucination  answer from a context, state nothing unsupported
                   (`hallucination.HallucinationConfig`)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dera_jax.data.tasks.base import (SPLITS, Example, PreferencePair, Task, records,
                                      split_of)
from dera_jax.data.tasks.hallucination import HallucinationConfig, HallucinationTask
from dera_jax.data.tasks.length import LengthConfig, LengthTask
from dera_jax.data.tasks.summarization import SummarizationConfig, SummarizationTask

TASKS: dict[str, tuple[type[Task], type]] = {
    "length": (LengthTask, LengthConfig),
    "summarization": (SummarizationTask, SummarizationConfig),
    "hallucination": (HallucinationTask, HallucinationConfig),
}


def known_tasks() -> tuple[str, ...]:
  return tuple(sorted(TASKS))


def get_task(name: str, config: Any = None, **overrides) -> Task:
  """The task `name`, with `config` (its config dataclass, or a mapping of its fields) and/or
  field `overrides` (e.g. `get_task("length", mode="target", target_items=2)`).

  Raises:
    ValueError: an unknown name (the message lists the known ones) or config field.
  """
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known_tasks())}")
  task_cls, config_cls = TASKS[name]
  if config is None:
    fields: dict[str, Any] = {}
  elif isinstance(config, config_cls):
    fields = dataclasses.asdict(config)
  elif isinstance(config, Mapping):
    fields = dict(config)
  else:
    raise ValueError(f"task {name!r}: config must be a {config_cls.__name__} or a mapping, "
                     f"got {type(config).__name__}")
  fields.update(overrides)
  known = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"task {name!r}: unknown config field(s) {', '.join(unknown)}; "
                     f"{config_cls.__name__} has {', '.join(sorted(known))}")
  return task_cls(config_cls(**fields))


__all__ = ["SPLITS", "TASKS", "Example", "PreferencePair", "Task", "get_task", "known_tasks",
           "records", "split_of", "HallucinationConfig", "HallucinationTask", "LengthConfig",
           "LengthTask", "SummarizationConfig", "SummarizationTask"]
