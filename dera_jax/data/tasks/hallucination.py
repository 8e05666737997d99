"""The hallucination task: answer a question from a context, stating nothing it does not support.

    prompt:   "Bo has a cat. Al has a dog. Bo has a fox. What does Bo have?"
    response: " Bo has a cat. Bo has a fox."

Grammar (all of it, so that statements are counted exactly):
    FACT     = NAME " has a " ANIMAL "."       NAME in NAMES, ANIMAL in ANIMALS
    prompt   = FACT (" " FACT)* " What does " NAME " have?"
    response = (" " FACT)*
The context holds `num_context_facts` distinct facts: 1..max_relevant of them about the asked
name (the question's supported facts), the others about other names. The reference answer
states the asked name's facts in context order.

Gold judge. The answer is cut into statements at '.' (`base.sentences`). A statement is
supported when it reads exactly NAME " has a " ANIMAL and that fact is in the context; any
other statement (a fact not in the context, or malformed text) is unsupported. A supported
statement is relevant when it is about the asked name. Metrics:
    hallucination_rate = #unsupported / #statements   (0 for an answer without statements)
    coverage           = distinct relevant facts stated / relevant facts in the context
    redundant          = supported statements that add nothing (about another name, or repeats)
    gold = coverage − hallucination_penalty · hallucination_rate
                    − redundant_penalty · redundant
Padding an answer with one more supported statement lowers the rate by at most 1/2 (from 1/1 to
1/2), so `redundant_penalty >= hallucination_penalty / 2` (the default) means diluting the rate
never pays. Task metrics: hallucination_rate (headline), coverage, unsupported, redundant,
num_statements, length_bytes.

Demonstrations: each relevant fact stated with probability p_state (at least one statement),
and up to `demo_max_hallucinated` facts about the asked name that the context does not support
(animals it does not have, often ones another name has), each with probability p_hallucinate,
inserted at random places.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from dera_jax.data.tasks.base import Example, Task, sentences

NAMES = ("Al", "Bo", "Cy", "Di", "Ed", "Jo", "Ki", "Lu", "Ma", "Mo", "Ni", "Ro", "Su", "Ty",
         "Vi", "Zo")
ANIMALS = ("cat", "dog", "fox", "cow", "pig", "hen", "bee", "yak", "ram", "bat", "rat", "cod",
           "hog", "jay", "gnu")
_FACT = re.compile(r"([A-Za-z]+) has a ([A-Za-z]+)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HallucinationConfig:
  num_context_facts: int = 3
  max_relevant: int = 2
  hallucination_penalty: float = 1.0
  redundant_penalty: float = 0.5
  p_state: float = 0.7
  p_hallucinate: float = 0.5
  demo_max_hallucinated: int = 1
  max_bytes: int = 120

  def __post_init__(self):
    if not 1 <= self.max_relevant <= len(ANIMALS) - self.demo_max_hallucinated:
      raise ValueError(f"HallucinationConfig.max_relevant={self.max_relevant!r}: must be in "
                       f"1..{len(ANIMALS) - self.demo_max_hallucinated}")
    if not self.max_relevant <= self.num_context_facts <= 4 * len(ANIMALS):
      raise ValueError(f"HallucinationConfig.num_context_facts={self.num_context_facts!r}: must "
                       f"be in max_relevant={self.max_relevant}..{4 * len(ANIMALS)}")
    for field in ("p_state", "p_hallucinate"):
      value = getattr(self, field)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"HallucinationConfig.{field}={value!r}: must be in [0, 1]")
    if self.demo_max_hallucinated < 0:
      raise ValueError(f"HallucinationConfig.demo_max_hallucinated="
                       f"{self.demo_max_hallucinated!r}: must be >= 0")


def render(facts) -> str:
  """' Bo has a cat. Al has a dog.' for [("Bo", "cat"), ("Al", "dog")] ('' for none)."""
  return "".join(f" {name} has a {animal}." for name, animal in facts)


def parse(statement: str) -> tuple[str, str] | None:
  """(name, animal) of a well-formed statement (no final '.'), else None."""
  m = _FACT.fullmatch(statement)
  return (m.group(1), m.group(2)) if m else None


class HallucinationTask(Task):
  name = "hallucination"
  metric_names = ("hallucination_rate", "coverage", "unsupported", "redundant",
                  "num_statements", "length_bytes")

  def __init__(self, config: HallucinationConfig | None = None):
    super().__init__(config or HallucinationConfig())

  def _draw(self, rng: np.random.Generator) -> Example:
    c = self.config
    asked = NAMES[rng.integers(len(NAMES))]
    k = int(rng.integers(1, c.max_relevant + 1))
    context = [(asked, ANIMALS[i]) for i in rng.choice(len(ANIMALS), k, replace=False)]
    others = [n for n in NAMES if n != asked]
    while len(context) < c.num_context_facts:
      fact = (others[rng.integers(len(others))], ANIMALS[rng.integers(len(ANIMALS))])
      if fact not in context:
        context.append(fact)
    context = [context[i] for i in rng.permutation(len(context))]
    prompt = render(context)[1:] + f" What does {asked} have?"
    relevant = tuple(f for f in context if f[0] == asked)
    info = {"asked": asked, "context": tuple(context), "relevant": relevant}
    return Example(prompt=prompt, response=render(relevant), info=info)

  def sample_response(self, example: Example, rng: np.random.Generator) -> str:
    c = self.config
    info = example.info
    statements = [f for f in info["relevant"] if rng.random() < c.p_state]
    owned = {a for _, a in info["relevant"]}
    for _ in range(c.demo_max_hallucinated):
      if rng.random() < c.p_hallucinate:
        said = {a for _, a in statements}
        elsewhere = [a for n, a in info["context"] if a not in owned and a not in said]
        pool = elsewhere if elsewhere and rng.random() < 0.5 else [
            a for a in ANIMALS if a not in owned and a not in said]
        statements.insert(int(rng.integers(len(statements) + 1)),
                          (info["asked"], pool[rng.integers(len(pool))]))
    if not statements:
      statements = [info["relevant"][rng.integers(len(info["relevant"]))]]
    return render(statements)

  def task_metric(self, example: Example, response: str) -> dict[str, float]:
    context = set(example.info["context"])
    relevant = set(example.info["relevant"])
    seen, stated_relevant = set(), set()
    unsupported = redundant = total = 0
    for statement in sentences(response):
      total += 1
      fact = parse(statement)
      if fact is None or fact not in context:
        unsupported += 1
        continue
      if fact in relevant and fact not in seen:
        stated_relevant.add(fact)
      else:
        redundant += 1
      seen.add(fact)
    return {"hallucination_rate": unsupported / total if total else 0.0,
            "coverage": len(stated_relevant) / len(relevant),
            "unsupported": float(unsupported), "redundant": float(redundant),
            "num_statements": float(total),
            "length_bytes": float(len(response.encode("utf-8")))}

  def gold_score(self, example: Example, response: str) -> float:
    c = self.config
    m = self.task_metric(example, response)
    return float(m["coverage"] - c.hallucination_penalty * m["hallucination_rate"]
                 - c.redundant_penalty * m["redundant"])
