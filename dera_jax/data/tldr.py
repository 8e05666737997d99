"""TL;DR (Reddit) summarization from OpenAI's summarize-from-feedback release, as TFDS.

The files are not downloaded: a user places them in the manual directory
(`tfds.download.DownloadConfig(manual_dir=...)`, or the `manual_dir` argument of
`prepare_tldr`). Two configs:

  "sft"          demonstrations. `<manual_dir>/*.jsonl` (the release's `tldr_3_filtered/`
                 files `train.jsonl`, `valid.jsonl`, `test.jsonl`; a `tldr_3_filtered/`
                 subdirectory is looked in too). One JSON object per line with string
                 fields id, subreddit, title, post, summary. Split name = file stem.
  "comparisons"  human preference pairs. `<manual_dir>/comparisons/*.json[l]` (the release's
                 `comparisons/batch*.json`, or `train.jsonl`, …). One JSON object per line:
                 {"info": {"id", "post", "title", "subreddit"}, "summaries": [{"text", …},
                 {"text", …}], "choice": 0 or 1, …}. A record's split is its own "split"
                 string when it has one (the release's: "train", "valid1", "valid2"), else
                 its file's stem. `info.post` may be absent or null when `info.article` is there (the
                 CNN/DM comparisons); the article is then the post (subreddit, title "").

Every record is checked before anything is written: a missing or wrongly typed field
raises `ValueError` naming the file, the line number and the field.

Stored records (all text unless said otherwise):
  sft:          id, subreddit, title, post, summary
  comparisons:  id, subreddit, title, post, summaries (list[text], 2 items), choice (int),
                policies (list[text]: each summary's "policy", "" if absent)

`sft_example` / `comparison_example` turn them into the pipelines' records with the prompt
format of the paper ("SUBREDDIT: r/…\\nTITLE: …\\nPOST: …\\nTL;DR:", response " <summary>").
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Iterator

import tensorflow_datasets as tfds

from dera_jax.data import builders

SFT_SCHEMA = {"id": "text", "subreddit": "text", "title": "text", "post": "text",
              "summary": "text"}
COMPARISON_SCHEMA = {"id": "text", "subreddit": "text", "title": "text", "post": "text",
                     "summaries": "list[text]", "choice": "int", "policies": "list[text]"}
_SPLIT_NAME = re.compile(r"^\w+$")


class Tldr(builders.RecordBuilder, skip_registration=False):
  """TFDS builder "tldr" with configs "sft" and "comparisons" (see the module docstring)."""

  name = "tldr"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="sft", description="TL;DR demonstrations (tldr_3_filtered)"),
      tfds.core.BuilderConfig(name="comparisons",
                              description="TL;DR human comparisons of two summaries"),
  ]
  DESCRIPTION = "Reddit TL;DR from OpenAI's summarize-from-feedback release."
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put the summarize-from-feedback files in the manual directory:
    sft:          train.jsonl, valid.jsonl, test.jsonl (from tldr_3_filtered/)
    comparisons:  comparisons/batch*.json (or comparisons/train.jsonl, ...)
  """

  def schema(self):
    return SFT_SCHEMA if self.builder_config.name == "sft" else COMPARISON_SCHEMA

  def split_records(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    if self.builder_config.name == "sft":
      return sft_splits(manual_dir)
    return comparison_splits(manual_dir)


def prepare_tldr(config: str, *, manual_dir: str, data_dir: str
                 ) -> dict[str, builders.RecordSource]:
  """Build (once) config "sft" or "comparisons" from `manual_dir` into `data_dir`;
  {split: RecordSource}."""
  if config not in ("sft", "comparisons"):
    raise ValueError(f"config={config!r}: accepted 'sft' or 'comparisons'")
  builder = Tldr(config=config, data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builders.sources_of(builder)


# ----------------------------------------------------------------------------- reading

def _jsonl(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed object) of each non-blank line; ValueError naming file and line."""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield line_no, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {line_no}: not valid JSON ({e.msg})") from e


def _string(obj: Any, key: str, where: str, *, prefix: str = "") -> str:
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: expected a JSON object{' at ' + prefix if prefix else ''}, "
                     f"found {type(obj).__name__}")
  if key not in obj:
    raise ValueError(f"{where}: missing field {prefix + key!r}")
  value = obj[key]
  if not isinstance(value, str):
    raise ValueError(f"{where}: field {prefix + key!r} should be a string, found "
                     f"{type(value).__name__} {value!r:.60}")
  return value


def parse_sft_record(obj: Any, where: str) -> dict[str, str]:
  """One demonstration line -> the stored record; ValueError naming `where` and the field."""
  return {key: _string(obj, key, where) for key in SFT_SCHEMA}


def parse_comparison_record(obj: Any, where: str) -> dict[str, Any]:
  """One comparison line -> the stored record; ValueError naming `where` and the field."""
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: expected a JSON object, found {type(obj).__name__}")
  if "info" not in obj:
    raise ValueError(f"{where}: missing field 'info'")
  info = obj["info"]
  record = {"id": _string(info, "id", where, prefix="info.")}
  article = "article" in info  # a CNN/DM comparison: no subreddit/title, the article is the post
  for key in ("subreddit", "title", "post"):
    if article and info.get(key) is None:
      record[key] = "" if key != "post" else _string(info, "article", where, prefix="info.")
    else:
      record[key] = _string(info, key, where, prefix="info.")
  if "summaries" not in obj:
    raise ValueError(f"{where}: missing field 'summaries'")
  summaries = obj["summaries"]
  if not isinstance(summaries, list) or len(summaries) != 2:
    raise ValueError(f"{where}: field 'summaries' should be a list of 2 objects, found "
                     f"{summaries!r:.80}")
  texts, policies = [], []
  for i, summary in enumerate(summaries):
    texts.append(_string(summary, "text", where, prefix=f"summaries[{i}]."))
    policy = summary.get("policy", "")
    policies.append(policy if isinstance(policy, str) else str(policy))
  if "choice" not in obj:
    raise ValueError(f"{where}: missing field 'choice'")
  choice = obj["choice"]
  if isinstance(choice, bool) or not isinstance(choice, int) or choice not in (0, 1):
    raise ValueError(f"{where}: field 'choice' should be 0 or 1, found {choice!r:.40}")
  record.update(summaries=texts, choice=choice, policies=policies)
  return record


def _sft_files(manual_dir: str) -> list[str]:
  for folder in (manual_dir, os.path.join(manual_dir, "tldr_3_filtered")):
    files = sorted(glob.glob(os.path.join(folder, "*.jsonl")))
    if files:
      return files
  raise ValueError(f"{manual_dir}: no TL;DR SFT files (*.jsonl, e.g. train.jsonl, valid.jsonl, "
                   "test.jsonl) there or in its tldr_3_filtered/ subdirectory")


def _split_of_file(path: str) -> str:
  stem = os.path.basename(path).split(".")[0]
  if not _SPLIT_NAME.match(stem):
    raise ValueError(f"{path}: the file name {stem!r} is not a valid split name (use "
                     "letters, digits and _)")
  return stem


def sft_splits(manual_dir: str) -> dict[str, list[dict[str, str]]]:
  """{split: records} of the demonstration files, every line checked first."""
  out: dict[str, list] = {}
  for path in _sft_files(manual_dir):
    records = [parse_sft_record(obj, f"{path} line {line_no}")
               for line_no, obj in _jsonl(path)]
    out.setdefault(_split_of_file(path), []).extend(records)
  return out


def comparison_splits(manual_dir: str) -> dict[str, list[dict[str, Any]]]:
  """{split: records} of the comparison files, every line checked first."""
  folder = os.path.join(manual_dir, "comparisons")
  files = sorted(glob.glob(os.path.join(folder, "*.json")) +
                 glob.glob(os.path.join(folder, "*.jsonl")))
  if not files:
    raise ValueError(f"{folder}: no TL;DR comparison files (*.json or *.jsonl)")
  out: dict[str, list] = {}
  for path in files:
    for line_no, obj in _jsonl(path):
      where = f"{path} line {line_no}"
      record = parse_comparison_record(obj, where)
      split = obj.get("split", None)
      if split is None:
        split = _split_of_file(path)
      elif not isinstance(split, str) or not _SPLIT_NAME.match(split):
        raise ValueError(f"{where}: field 'split' should be a split name string, found "
                         f"{split!r:.40}")
      out.setdefault(split, []).append(record)
  return out


# ----------------------------------------------------------------------------- formatting

def format_prompt(record: dict[str, Any]) -> str:
  """The paper's prompt: "SUBREDDIT: r/<sub>\\nTITLE: <title>\\nPOST: <post>\\nTL;DR:"."""
  return (f"SUBREDDIT: r/{record['subreddit']}\nTITLE: {record['title']}\n"
          f"POST: {record['post']}\nTL;DR:")


def sft_example(record: dict[str, Any]) -> dict[str, str]:
  """A stored "sft" record -> {"prompt", "response"} for `pipeline.sft_pipeline`."""
  return {"prompt": format_prompt(record), "response": " " + record["summary"].strip()}


def comparison_example(record: dict[str, Any]) -> dict[str, str]:
  """A stored "comparisons" record -> {"prompt", "chosen", "rejected"} for
  `pipeline.preference_pipeline`."""
  choice = int(record["choice"])
  summaries = list(record["summaries"])
  return {"prompt": format_prompt(record), "chosen": " " + summaries[choice].strip(),
          "rejected": " " + summaries[1 - choice].strip()}


def prompt_example(record: dict[str, Any]) -> dict[str, str]:
  """Any TL;DR record -> {"prompt"} for `pipeline.prompt_pipeline`."""
  return {"prompt": format_prompt(record)}
