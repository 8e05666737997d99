"""Tasks read from user-supplied files (no exact gold judge), for paper-scale runs.

    task = get_file_task("tldr", "/data/tldr")              # summarize-from-feedback files
    task = get_file_task("preference_files", "/data/chat")  # {train,validation,test}.jsonl
    task.make_split("validation", 64, seed=0)   # Examples: prompt + reference response
    task.sft_records("train"); task.preference_records("train")

"tldr": the folder `dera_jax.data.tldr` reads (demonstrations `train/valid/test.jsonl`,
comparisons `comparisons/*.json[l]`); our splits map to its files as train -> train,
validation -> valid, test -> test (demonstrations) and train -> train, validation -> valid1,
test -> valid2 (comparisons, by their "split" field).

"preference_files": `<folder>/{train,validation,test}.jsonl`, one JSON object per line with
string fields "prompt", "chosen", "rejected" (chosen preferred). Demonstrations are the chosen
responses. A bad line raises ValueError naming the file, the line and the field.

These tasks have no exact judge: `gold_score` raises, and the experiments judge with a second
reward model trained on held-out pairs (`config.gold="reward_model"`). Their task metric is the
response length in words.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from dera_jax.data import tldr
from dera_jax.data.tasks.base import Example, check_split

FILE_TASKS = ("preference_files", "tldr")


class FileTask:
  """Records read once from a folder; a split's examples are a seeded subset of them."""

  name = ""
  metric_names = ("words",)
  has_gold_judge = False

  def __init__(self, path: str):
    if not os.path.isdir(path):
      raise ValueError(f"task {self.name!r}: data folder {path!r} does not exist")
    self.path = path
    self._sft, self._pairs = self._read(path)

  def _read(self, path: str) -> tuple[dict[str, list], dict[str, list]]:
    """({split: [{"prompt", "response"}]}, {split: [{"prompt", "chosen", "rejected"}]})."""
    raise NotImplementedError

  @property
  def primary_metric(self) -> str:
    return self.metric_names[0]

  def sft_records(self, split: str) -> list[dict[str, str]]:
    return list(self._get(self._sft, split, "demonstrations"))

  def preference_records(self, split: str) -> list[dict[str, str]]:
    return list(self._get(self._pairs, split, "comparisons"))

  def make_split(self, split: str, n: int, seed: int) -> list[Example]:
    """`n` distinct prompts of `split` (a seeded choice; all of them when there are fewer),
    each with its reference response."""
    records = self._get(self._sft, split, "demonstrations")
    by_prompt: dict[str, str] = {}
    for r in records:
      by_prompt.setdefault(r["prompt"], r["response"])
    prompts = sorted(by_prompt)
    order = np.random.default_rng(seed).permutation(len(prompts))[:n]
    return [Example(prompt=prompts[i], response=by_prompt[prompts[i]]) for i in order]

  def gold_score(self, example: Example, response: str) -> float:
    raise ValueError(f"task {self.name!r} has no exact gold judge; judge with a reward model "
                     "trained on held-out pairs (config.gold='reward_model')")

  def task_metric(self, example: Example, response: str) -> dict[str, float]:
    return {"words": float(len(response.split()))}

  def _get(self, table: dict[str, list], split: str, what: str) -> list:
    check_split(split)
    if not table.get(split):
      raise ValueError(f"task {self.name!r}: no {what} for split {split!r} in {self.path}")
    return table[split]


class TldrTask(FileTask):
  """Reddit TL;DR (summarize-from-feedback files, see `dera_jax.data.tldr`)."""

  name = "tldr"
  SFT_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
  PAIR_SPLITS = {"train": "train", "validation": "valid1", "test": "valid2"}

  def _read(self, path):
    demos = tldr.sft_splits(path)
    pairs = tldr.comparison_splits(path)
    sft = {ours: [tldr.sft_example(r) for r in demos.get(theirs, [])]
           for ours, theirs in self.SFT_SPLITS.items()}
    prefs = {ours: [tldr.comparison_example(r) for r in pairs.get(theirs, [])]
             for ours, theirs in self.PAIR_SPLITS.items()}
    return sft, prefs


class PreferenceFileTask(FileTask):
  """Prompt / chosen / rejected JSONL files, one per split (see the module docstring)."""

  name = "preference_files"
  FIELDS = ("prompt", "chosen", "rejected")

  def _read(self, path):
    pairs = {}
    for split in ("train", "validation", "test"):
      file = os.path.join(path, f"{split}.jsonl")
      if not os.path.exists(file):
        raise ValueError(f"task 'preference_files': missing {file} (need train.jsonl, "
                         "validation.jsonl and test.jsonl with prompt/chosen/rejected lines)")
      pairs[split] = list(_read_pairs(file))
    sft = {split: [{"prompt": p["prompt"], "response": p["chosen"]} for p in rows]
           for split, rows in pairs.items()}
    return sft, pairs


def _read_pairs(file: str):
  with open(file, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{file} line {line_no}"
      try:
        obj: Any = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
      if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, found {type(obj).__name__}")
      for key in PreferenceFileTask.FIELDS:
        if not isinstance(obj.get(key), str) or not obj[key].strip():
          raise ValueError(f"{where}: field {key!r} must be a non-empty string, found "
                           f"{obj.get(key)!r:.60}")
      yield {key: obj[key] for key in PreferenceFileTask.FIELDS}


def get_file_task(name: str, path: str) -> FileTask:
  """The file-backed task `name` ("tldr" or "preference_files") reading folder `path`."""
  if name == "tldr":
    return TldrTask(path)
  if name == "preference_files":
    return PreferenceFileTask(path)
  raise ValueError(f"unknown file task {name!r}; known: {', '.join(FILE_TASKS)}")
