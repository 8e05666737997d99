"""Glue shared by the training apps: task data as records, tokenizer, models, start-up checks.

Experiments read configs and files; the library (`dera_jax`) does not.
"""

from __future__ import annotations

import math
from typing import Callable

from flax import nnx

from dera_jax.data import list_task
from dera_jax.data.builders import build_dataset
from dera_jax.data.tasks import get_task, known_tasks
from dera_jax.data.tasks.base import records as task_records
from dera_jax.data.pipeline import preference_pipeline, prompt_pipeline, sft_pipeline
from dera_jax.data.tokenizer import ByteTokenizer
from dera_jax.models import Transformer, tiny_config
from dera_jax.models.checkpoint import load_checkpoint

def run_app(run: Callable, default_config: str) -> None:
  """Run `run(config, workdir)` as an absl program: `--config=FILE [--config.field=value]
  --workdir=DIR`. Flags are defined here, only when a module runs as a program, so apps can
  import each other's `run`."""
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", default_config, "Config file (get_config()).")
  flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  def main(argv):
    del argv
    run(flags.FLAGS.config, flags.FLAGS.workdir)  # its return value is not an exit status

  app.run(main)


TASKS = ("lists",) + known_tasks()
# What a trainer state checkpoints: the frozen reference / reward models are rebuilt.
TRAINER_FIELDS = ("params", "opt_state", "step", "hparams")


def check(condition: bool, field: str, value, allowed: str) -> None:
  if not condition:
    raise ValueError(f"config.{field}={value!r}: {allowed}")


def validate_common(c) -> None:
  """Start-up checks shared by every training config, before any model is built."""
  check(c.task in TASKS, "task", c.task, f"must be one of {TASKS}")
  for name in ("batch_size", "num_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
    check(int(c[name]) >= 1, name, c[name], "must be >= 1")
  check(math.isfinite(c.learning_rate) and c.learning_rate > 0, "learning_rate",
        c.learning_rate, "must be a finite number > 0")


def tokenizer_for(c):
  return ByteTokenizer()


def records(c, kind: str, split: str) -> list[dict]:
  """The task's records of `kind` ("sft", "preference", "prompts") for `split`.

  With `config.data_dir` set they are written once as a TFDS dataset (array_record, no
  TensorFlow) and read back with `tfds.data_source`; otherwise they stay in memory.
  """
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}: must be one of {KINDS}")
  seed = c.seed + {"train": 0, "validation": 10_000, "test": 20_000}[split]
  n = c.num_examples if split == "train" else c.get("num_eval_examples", 256)
  data = _generate(c.task, kind, split, n, seed, c.get("label_noise", 0.0))
  if not c.get("data_dir"):
    return data
  name = f"dera_{c.task}_{kind}_seed{seed}_n{n}".replace("-", "_")
  if kind == "preference":
    name += f"_noise{int(round(1000 * c.get('label_noise', 0.0)))}"
  sources = build_dataset(name, {key: "text" for key in data[0]}, {split: data},
                          data_dir=c.data_dir)
  return sources[split]


KINDS = ("sft", "preference", "prompts")


def _generate(task_name: str, kind: str, split: str, n: int, seed: int, noise: float) -> list:
  if task_name == "lists":
    if kind == "sft":
      return [{"prompt": e.prompt, "response": e.response}
              for e in list_task.make_examples(n, seed=seed)]
    if kind == "preference":
      return list_task.preference_pairs(n, seed=seed, noise=noise)
    return [{"prompt": e.prompt} for e in list_task.make_examples(n, seed=seed)]
  task = get_task(task_name)
  if kind == "sft":
    return task_records(task.sft_examples(n, seed, split=split))
  if kind == "preference":
    return task_records(task.preference_pairs(n, seed + 1, noise=noise, split=split))
  return [{"prompt": e.prompt} for e in task.make_split(split, n, seed)]


def check_dataset(c, data: list) -> None:
  check(len(data) > 0, "num_examples", c.num_examples, "the dataset is empty")
  check(c.batch_size <= len(data), "batch_size", c.batch_size,
        f"is larger than the dataset ({len(data)} records)")


def pipeline(c, kind: str, split: str, tokenizer, *, batch_size=None, shuffle=True):
  """A grain pipeline over the task's records; `pipeline[k]` is batch k (repeats forever)."""
  data = records(c, kind, split)
  check_dataset(c, data)
  kw = dict(batch_size=batch_size or c.batch_size, seed=c.seed, shuffle=shuffle, num_epochs=None,
            shard_index=0, shard_count=1)
  if kind == "sft":
    return sft_pipeline(data, tokenizer, max_length=c.seq_len, **kw)
  if kind == "preference":
    return preference_pipeline(data, tokenizer, max_length=c.seq_len, **kw)
  return prompt_pipeline(data, tokenizer, max_prompt_length=c.max_prompt_len, **kw)


def new_model(c, vocab_size: int, *, seed_offset: int = 0) -> Transformer:
  """From `c.init_from` (a checkpoint dir) or a fresh tiny model of `c.model`'s shape."""
  if c.get("init_from"):
    return load_checkpoint(c.init_from)
  config = tiny_config(vocab_size=vocab_size, max_seq_len=max(c.seq_len + 64, 128),
                       **c.model.to_dict())
  return Transformer(config, rngs=nnx.Rngs(c.seed + seed_offset))
