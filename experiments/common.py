"""Glue shared by the training apps: task data as records, tokenizer, models, start-up checks.

Experiments read configs and files; the library (`dera_jax`) does not.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Callable

import numpy as np
from flax import nnx

from dera_jax.data import list_task
from dera_jax.data.builders import build_dataset
from dera_jax.data.tasks import get_task, known_tasks
from dera_jax.data.tasks.base import records as task_records
from dera_jax.data.tasks.files import FILE_TASKS, get_file_task
from dera_jax.data.pipeline import preference_pipeline, prompt_pipeline, sft_pipeline
from dera_jax.data.tokenizer import ByteTokenizer
from dera_jax.models import Transformer, tiny_config
from dera_jax.models.loading import load_any, load_tokenizer

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
    if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint op at INFO
      from absl import logging
      logging.set_verbosity(logging.WARNING)
    run(flags.FLAGS.config, flags.FLAGS.workdir)  # its return value is not an exit status

  app.run(main)


TASKS = ("lists",) + known_tasks() + FILE_TASKS
PREFERENCE_SUBSETS = ("all", "proxy", "gold")
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
  """`config.tokenizer`: "bytes" (the built-in tasks' byte tokenizer) or the path of a HF
  directory, tokenizer directory or .gguf file whose tokenizer to use."""
  return _tokenizer(c.get("tokenizer", "bytes") or "bytes")


@functools.lru_cache(maxsize=4)
def _tokenizer(spec: str):
  return ByteTokenizer() if spec == "bytes" else load_tokenizer(spec)


def task_for(c):
  """The task of `config.task`: a built-in generated one, or a file task reading
  `config.task_data` ("tldr", "preference_files")."""
  if c.task in FILE_TASKS:
    check(bool(c.get("task_data")), "task_data", c.get("task_data"),
          f"task {c.task!r} reads user files: set config.task_data to their folder")
    return _file_task(c.task, c.task_data)
  return get_task(c.task)


@functools.lru_cache(maxsize=4)
def _file_task(name: str, path: str):
  return get_file_task(name, path)


def format_prompt(c, text: str) -> str:
  """A task prompt as the model sees it: rendered as one user turn through the tokenizer's chat
  template when `config.chat_template` is set, else unchanged."""
  if not c.get("chat_template", False):
    return text
  tokenizer = tokenizer_for(c)
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError(f"config.chat_template=True but the tokenizer {c.get('tokenizer')!r} has "
                     "no chat template")
  rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                           add_generation_prompt=True)
  bos = tokenizer.special_tokens.get("bos_token")
  if tokenizer.add_bos and bos and rendered.startswith(bos):
    rendered = rendered[len(bos):]  # encode() prepends BOS itself: do not have two
  return rendered


def records(c, kind: str, split: str) -> list[dict]:
  """The task's records of `kind` ("sft", "preference", "prompts") for `split`.

  With `config.data_dir` set they are written once as a TFDS dataset (array_record, no
  TensorFlow) and read back with `tfds.data_source`; otherwise they stay in memory.
  """
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}: must be one of {KINDS}")
  data_seed = c.get("data_seed", -1)
  seed = (c.seed if data_seed < 0 else data_seed) + {"train": 0, "validation": 10_000,
                                                     "test": 20_000}[split]
  n = c.num_examples if split == "train" else c.get("num_eval_examples", 256)
  if c.task in FILE_TASKS:
    data = _from_files(task_for(c), kind, split, n, seed)
  else:
    data = _generate(c.task, kind, split, n, seed, c.get("label_noise", 0.0))
  if split == "train":
    data = _preference_subset(c, kind, data)
  if c.get("chat_template", False):
    data = [dict(r, prompt=format_prompt(c, r["prompt"])) for r in data]
  if not c.get("data_dir") or c.task in FILE_TASKS:
    return data
  name = f"dera_{c.task}_{kind}_seed{seed}_n{n}".replace("-", "_")
  if kind == "preference":
    name += f"_noise{int(round(1000 * c.get('label_noise', 0.0)))}"
    if split == "train" and c.get("preference_subset", "all") != "all":
      name += f"_{c.preference_subset}"
  if c.get("chat_template", False):  # rendered prompts depend on the tokenizer's template
    name += f"_chat{zlib.crc32(str(c.tokenizer).encode('utf-8')):08x}"
  sources = build_dataset(name, {key: "text" for key in data[0]}, {split: data},
                          data_dir=c.data_dir)
  return sources[split]


KINDS = ("sft", "preference", "prompts")


def _from_files(task, kind: str, split: str, n: int, seed: int) -> list:
  """A file task's records: all of them, or a seeded subset of `n` when there are more."""
  if kind == "preference":
    data = task.preference_records(split)
  else:
    data = task.sft_records(split)
    if kind == "prompts":
      data = [{"prompt": r["prompt"]} for r in data]
  if n < len(data):
    keep = np.sort(np.random.default_rng(seed).permutation(len(data))[:n])
    data = [data[i] for i in keep]
  return data


def _preference_subset(c, kind: str, data: list) -> list:
  """`config.preference_subset`: "all" training pairs, or the "proxy" / "gold" half of them (a
  stable hash of the prompt), so that a gold reward model never sees the proxy's pairs."""
  subset = c.get("preference_subset", "all")
  check(subset in PREFERENCE_SUBSETS, "preference_subset", subset,
        f"must be one of {PREFERENCE_SUBSETS}")
  if kind != "preference" or subset == "all":
    return data
  half = 0 if subset == "proxy" else 1
  return [r for r in data if zlib.crc32(r["prompt"].encode("utf-8")) % 2 == half]


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
            shard_index=0, shard_count=1, overlong=c.get("overlong", "error"))
  if kind == "sft":
    return sft_pipeline(data, tokenizer, max_length=c.seq_len, **kw)
  if kind == "preference":
    return preference_pipeline(data, tokenizer, max_length=c.seq_len, **kw)
  return prompt_pipeline(data, tokenizer, max_prompt_length=c.max_prompt_len, **kw)


def new_model(c, vocab_size: int, *, seed_offset: int = 0) -> Transformer:
  """From `c.init_from` (a checkpoint dir, HF dir or .gguf file, in `c.dtype`) or a fresh
  tiny model of `c.model`'s shape."""
  if c.get("init_from"):
    return load_any(c.init_from, dtype=c.get("dtype", "float32"))[0]
  config = tiny_config(vocab_size=vocab_size, max_seq_len=max(c.seq_len + 64, 128),
                       **c.model.to_dict())
  return Transformer(config, rngs=nnx.Rngs(c.seed + seed_offset))
