"""The built-in summarization task: keep the key facts of a document, drop the distractors.

    prompt:   "Bo: Bo is old. Al is shy. Bo is tall. Cy is red.\\nTL;DR:"
    response: " Bo is old. Bo is tall."

Grammar (all of it, so that the judge is exact):
    FACT     = NAME " is " ATTR "."            NAME in NAMES, ATTR in ATTRS
    prompt   = TOPIC ": " FACT (" " FACT)* "\\nTL;DR:"
    response = (" " FACT)*
The document holds `num_key_facts` facts about the topic (distinct attributes: the key facts)
and `num_distractors` facts about other names (the distractors), in a random order. The reference
summary states the key facts in document order.

Gold judge. The response is cut into statements at '.' (`base.sentences`); a statement is
supported when it reads exactly NAME " is " ATTR and that fact is in the document, else it is
unsupported (facts not in the document and malformed text alike). Then
    gold = coverage − unsupported_penalty · #unsupported − length_penalty · bytes(response)
with coverage = distinct key facts stated / key facts. Stated distractors are supported but
cost length only (brevity). Task metrics: coverage (headline), hallucination_rate
(#unsupported / #statements, 0 without statements), unsupported, distractors, num_statements,
length_bytes.

Demonstrations: each key fact kept with probability p_key (at least one statement), up to
`demo_max_distractors` distractors with probability p_distractor each, up to
`demo_max_unsupported` unsupported facts (about the topic with probability 0.7, else about a
distractor's name) with probability p_unsupported each, inserted at random places.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from dera_jax.data.tasks.base import Example, Task, sentences

NAMES = ("Al", "Bo", "Cy", "Di", "Ed", "Jo", "Ki", "Lu", "Ma", "Mo", "Ni", "Ro", "Su", "Ty",
         "Vi", "Zo")
ATTRS = ("old", "shy", "red", "tall", "kind", "rich", "calm", "bold", "wise", "glad", "sad",
         "loud", "fast", "slow", "neat", "busy")
_FACT = re.compile(r"([A-Za-z]+) is ([A-Za-z]+)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SummarizationConfig:
  num_key_facts: int = 2
  num_distractors: int = 2
  unsupported_penalty: float = 0.5
  length_penalty: float = 0.005   # per byte of the response
  p_key: float = 0.6
  p_distractor: float = 0.3
  p_unsupported: float = 0.3
  demo_max_distractors: int = 1
  demo_max_unsupported: int = 1
  max_bytes: int = 120

  def __post_init__(self):
    if not 1 <= self.num_key_facts <= len(ATTRS) - self.demo_max_unsupported:
      raise ValueError(f"SummarizationConfig.num_key_facts={self.num_key_facts!r}: must be in "
                       f"1..{len(ATTRS) - self.demo_max_unsupported}")
    if not 0 <= self.num_distractors <= 4 * len(ATTRS):
      raise ValueError(f"SummarizationConfig.num_distractors={self.num_distractors!r}: must be "
                       f"in 0..{4 * len(ATTRS)}")
    for field in ("p_key", "p_distractor", "p_unsupported"):
      value = getattr(self, field)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"SummarizationConfig.{field}={value!r}: must be in [0, 1]")
    for field in ("demo_max_distractors", "demo_max_unsupported"):
      if getattr(self, field) < 0:
        raise ValueError(f"SummarizationConfig.{field}={getattr(self, field)!r}: must be >= 0")


def render(facts) -> str:
  """' Bo is old. Bo is tall.' for [("Bo", "old"), ("Bo", "tall")] ('' for none)."""
  return "".join(f" {name} is {attr}." for name, attr in facts)


def parse(statement: str) -> tuple[str, str] | None:
  """(name, attr) of a well-formed statement (no final '.'), else None."""
  m = _FACT.fullmatch(statement)
  return (m.group(1), m.group(2)) if m else None


class SummarizationTask(Task):
  name = "summarization"
  metric_names = ("coverage", "hallucination_rate", "unsupported", "distractors",
                  "num_statements", "length_bytes")

  def __init__(self, config: SummarizationConfig | None = None):
    super().__init__(config or SummarizationConfig())

  def _draw(self, rng: np.random.Generator) -> Example:
    c = self.config
    topic = NAMES[rng.integers(len(NAMES))]
    key = [(topic, ATTRS[i]) for i in rng.choice(len(ATTRS), c.num_key_facts, replace=False)]
    others = [n for n in NAMES if n != topic]
    distractors: list[tuple[str, str]] = []
    while len(distractors) < c.num_distractors:
      fact = (others[rng.integers(len(others))], ATTRS[rng.integers(len(ATTRS))])
      if fact not in distractors:
        distractors.append(fact)
    document = key + distractors
    document = [document[i] for i in rng.permutation(len(document))]
    prompt = f"{topic}:" + render(document) + "\nTL;DR:"
    key_in_order = tuple(f for f in document if f[0] == topic)
    info = {"topic": topic, "document": tuple(document), "key_facts": key_in_order,
            "distractors": tuple(f for f in document if f[0] != topic)}
    return Example(prompt=prompt, response=render(key_in_order), info=info)

  def sample_response(self, example: Example, rng: np.random.Generator) -> str:
    c = self.config
    info = example.info
    chosen = set()
    for fact in info["key_facts"]:
      if rng.random() < c.p_key:
        chosen.add(fact)
    distractors = list(info["distractors"])
    for _ in range(min(c.demo_max_distractors, len(distractors))):
      if rng.random() < c.p_distractor:
        chosen.add(distractors.pop(rng.integers(len(distractors))))
    statements = [f for f in info["document"] if f in chosen]
    document = set(info["document"])
    for _ in range(c.demo_max_unsupported):
      if rng.random() < c.p_unsupported:
        if rng.random() < 0.7 or not info["distractors"]:
          name = info["topic"]
        else:
          name = info["distractors"][rng.integers(len(info["distractors"]))][0]
        attrs = [a for a in ATTRS if (name, a) not in document and (name, a) not in statements]
        if attrs:
          statements.insert(int(rng.integers(len(statements) + 1)),
                            (name, attrs[rng.integers(len(attrs))]))
    if not statements:
      statements = [info["key_facts"][rng.integers(len(info["key_facts"]))]]
    return render(statements)

  def judge(self, example: Example, response: str) -> dict[str, float]:
    """Counts of the gold judge: statements, supported key facts, distractors, unsupported."""
    document = set(example.info["document"])
    key = set(example.info["key_facts"])
    stated_key, distractors, unsupported, total = set(), 0, 0, 0
    for statement in sentences(response):
      total += 1
      fact = parse(statement)
      if fact is None or fact not in document:
        unsupported += 1
      elif fact in key:
        stated_key.add(fact)
      else:
        distractors += 1
    return {"coverage": len(stated_key) / len(key),
            "hallucination_rate": unsupported / total if total else 0.0,
            "unsupported": float(unsupported), "distractors": float(distractors),
            "num_statements": float(total),
            "length_bytes": float(len(response.encode("utf-8")))}

  def gold_score(self, example: Example, response: str) -> float:
    c = self.config
    m = self.judge(example, response)
    return float(m["coverage"] - c.unsupported_penalty * m["unsupported"]
                 - c.length_penalty * m["length_bytes"])

  def task_metric(self, example: Example, response: str) -> dict[str, float]:
    return self.judge(example, response)
