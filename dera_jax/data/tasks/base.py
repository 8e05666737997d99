"""The interface every built-in task implements, and what it shares.

A task generates its own data (seeded, deterministic) and judges responses exactly:

    task = get_task("hallucination")
    train = task.make_split("train", 1000, seed=0)          # prompts + reference responses
    sft = task.sft_examples(4000, seed=1)                   # demonstrations of varied quality
    pairs = task.preference_pairs(2000, seed=2, noise=0.1)  # gold-labelled, 10% flipped
    task.gold_score(train[0], " Bo has a cat.")              # the gold judge
    task.task_metric(train[0], " Bo has a cat.")             # {"hallucination_rate": ..., ...}

Splits. Whether a prompt belongs to "train", "validation" or "test" is a fixed function of the
prompt text (a stable hash of it, 80/10/10), so the three splits never share a prompt whatever
the seeds; `make_split` draws examples from the task's generator and keeps those of its split.
Within a split prompts may repeat when n exceeds the prompts there.

Responses follow the convention of `dera_jax.data.list_task`: they start with a space and the
pipeline appends EOS. `records()` turns examples and pairs into the dicts the grain pipelines
read ({"prompt", "response"} and {"prompt", "chosen", "rejected"}).

Byte budget. The models trained on these tasks are byte-level (`ByteTokenizer`), so every task
config has `max_bytes` (prompt + response, in UTF-8 bytes); generation checks every text it
produces against it and names the knob when one does not fit.
"""

from __future__ import annotations

import abc
import dataclasses
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

SPLITS = ("train", "validation", "test")
_SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}
_BUCKETS = 10  # hash buckets: 0..7 train, 8 validation, 9 test


@dataclasses.dataclass(frozen=True, kw_only=True)
class Example:
  """One prompt of a task.

  Attributes:
    prompt: the text the model continues.
    response: a response: the reference (best) one from `make_split`, a demonstration of varied
      quality from `sft_examples`.
    info: the structured fields the judge reads (e.g. the key facts), immutable values.
  """
  prompt: str
  response: str
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

  def record(self) -> dict[str, str]:
    return {"prompt": self.prompt, "response": self.response}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferencePair:
  """Two responses to one prompt, `chosen` preferred by the (noisy) labeller.

  `chosen_gold` / `rejected_gold` are the gold scores; `flipped` is True when label noise swapped
  them (then chosen_gold < rejected_gold).
  """
  example: Example
  chosen: str
  rejected: str
  chosen_gold: float
  rejected_gold: float
  flipped: bool

  @property
  def prompt(self) -> str:
    return self.example.prompt

  def record(self) -> dict[str, str]:
    return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def records(items: Sequence[Example | PreferencePair]) -> list[dict[str, str]]:
  """The dicts the grain pipelines read, one per example or pair."""
  return [item.record() for item in items]


def split_of(task_name: str, prompt: str) -> str:
  """The split a prompt belongs to: a stable hash of (task, prompt), 80/10/10."""
  bucket = zlib.crc32(f"{task_name}\x00{prompt}".encode("utf-8")) % _BUCKETS
  return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


def check_split(split: str) -> str:
  if split not in _SPLIT_INDEX:
    raise ValueError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
  return split


def check_count(name: str, n: int) -> int:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"{name}={n!r}: must be an integer >= 1")
  return int(n)


def sentences(response: str) -> list[str]:
  """A response cut into sentences at '.', each stripped; empty pieces dropped.

  The judges of the controlled-grammar tasks read responses this way: whatever lies between two
  periods (or after the last one) is one statement, well-formed or not.
  """
  return [s.strip() for s in response.split(".") if s.strip()]


class Task(abc.ABC):
  """A built-in task: generator of prompts and responses, and its exact judges.

  Subclasses set `name`, `metric_names` (the keys of `task_metric`, the first one the task's
  headline metric, `primary_metric`) and implement `_draw`, `sample_response`, `gold_score`
  and `task_metric`. `config` is a frozen dataclass with at least `max_bytes`.
  """

  name: str = ""
  metric_names: tuple[str, ...] = ()

  def __init__(self, config):
    self.config = config
    if not isinstance(config.max_bytes, int) or config.max_bytes < 8:
      raise ValueError(f"{type(config).__name__}.max_bytes={config.max_bytes!r}: must be an "
                       "integer >= 8")

  @property
  def primary_metric(self) -> str:
    return self.metric_names[0]

  # ------------------------------------------------------------ what subclasses define
  @abc.abstractmethod
  def _draw(self, rng: np.random.Generator) -> Example:
    """One example (prompt, reference response, info) from the task's generator."""

  @abc.abstractmethod
  def sample_response(self, example: Example, rng: np.random.Generator) -> str:
    """A demonstration of varied quality for `example` (the SFT data distribution)."""

  @abc.abstractmethod
  def gold_score(self, example: Example, response: str) -> float:
    """The gold judge: higher is better; exact for the controlled grammar."""

  @abc.abstractmethod
  def task_metric(self, example: Example, response: str) -> dict[str, float]:
    """The task's metrics for one response, keyed by `metric_names`."""

  # ------------------------------------------------------------ shared
  def make_split(self, split: str, n: int, seed: int) -> list[Example]:
    """`n` examples of `split`, with reference responses; a pure function of (split, n, seed).

    The prompts of different splits are disjoint (see the module docstring). The first m
    examples for a seed are the same whatever n >= m.
    """
    check_split(split)
    n = check_count("n", n)
    rng = self._rng(seed, split, "split")
    out: list[Example] = []
    tries, limit = 0, 1000 * n + 10_000
    while len(out) < n:
      tries += 1
      if tries > limit:
        raise RuntimeError(f"{self.name}: found only {len(out)} of {n} {split} prompts in "
                           f"{limit} draws; the prompt space of this config is too small")
      example = self._draw(rng)
      if split_of(self.name, example.prompt) == split:
        self._check_fits(example.prompt, example.response, "reference response")
        out.append(example)
    return out

  def sft_responses(self, examples: Sequence[Example], seed: int) -> list[str]:
    """One demonstration of varied quality per example, seeded."""
    rng = self._rng(seed, "sft", "responses")
    out = []
    for example in examples:
      response = self.sample_response(example, rng)
      self._check_fits(example.prompt, response, "demonstration")
      out.append(response)
    return out

  def sft_examples(self, n: int, seed: int, split: str = "train") -> list[Example]:
    """`n` examples of `split` whose responses are demonstrations of varied quality: the SFT data.

    Their quality spreads (the gold score varies), so that alignment has room to improve on SFT.
    """
    examples = self.make_split(split, n, seed)
    return [dataclasses.replace(ex, response=r)
            for ex, r in zip(examples, self.sft_responses(examples, seed))]

  def preference_pairs(self, n: int, seed: int, noise: float = 0.0,
                       split: str = "train") -> list[PreferencePair]:
    """`n` pairs of demonstrations for prompts of `split`, labelled by the gold judge.

    Both responses come from the demonstration distribution (`sample_response`), redrawn until
    their gold scores differ (ties teach nothing). The better one is `chosen`, except that each
    pair is flipped independently with probability `noise`, so a reward model fitted to them is
    imperfect and can be over-optimised.
    """
    n = check_count("n", n)
    noise = float(noise)
    if not 0.0 <= noise <= 0.5:
      raise ValueError(f"noise={noise!r}: must be a probability in [0, 0.5]")
    examples = self.make_split(split, n, seed)
    rng = self._rng(seed, split, "pairs")
    pairs = []
    for example in examples:
      a, b, ga, gb = self._distinct_pair(example, rng)
      if ga < gb:
        a, b, ga, gb = b, a, gb, ga
      flipped = bool(rng.random() < noise)
      if flipped:
        a, b, ga, gb = b, a, gb, ga
      pairs.append(PreferencePair(example=example, chosen=a, rejected=b, chosen_gold=ga,
                                  rejected_gold=gb, flipped=flipped))
    return pairs

  def _distinct_pair(self, example: Example, rng: np.random.Generator):
    for _ in range(64):
      a = self.sample_response(example, rng)
      b = self.sample_response(example, rng)
      ga, gb = self.gold_score(example, a), self.gold_score(example, b)
      if ga != gb:
        break
    else:  # every draw tied: pair the reference with a demonstration that differs from it
      a, ga = example.response, self.gold_score(example, example.response)
      for _ in range(64):
        b = self.sample_response(example, rng)
        gb = self.gold_score(example, b)
        if gb != ga:
          break
      else:
        raise RuntimeError(f"{self.name}: cannot draw two responses with different gold "
                           f"scores for prompt {example.prompt!r}")
    for response in (a, b):
      self._check_fits(example.prompt, response, "preference response")
    return a, b, ga, gb

  def response_budget(self, prompt: str) -> int:
    """Bytes left for a response to `prompt` under `config.max_bytes` (e.g. max_new_tokens of a
    byte-level model, plus one for EOS)."""
    return max(0, self.config.max_bytes - len(prompt.encode("utf-8")))

  def _rng(self, seed: int, *stream: str) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed={seed!r}: must be an integer >= 0")
    words = [zlib.crc32("\x00".join((self.name,) + stream).encode("utf-8")), int(seed)]
    return np.random.default_rng(words)

  def _check_fits(self, prompt: str, response: str, what: str) -> None:
    size = len(prompt.encode("utf-8")) + len(response.encode("utf-8"))
    if size > self.config.max_bytes:
      raise ValueError(
          f"{self.name}: a {what} makes {size} bytes with its prompt, over "
          f"{type(self.config).__name__}.max_bytes={self.config.max_bytes}; raise max_bytes or "
          f"make the texts shorter (prompt {prompt!r}, response {response!r})")
