"""The built-in "lists" task: name some items of a category, in a comma-separated list.

    prompt:   "Name some fruits:"
    response: " fig, pear, plum."

The number of items k is uniform on 1..MAX_ITEMS in the demonstrations. A preference for
brevity (the reward -k) makes the task the simplest check of DeRa: sampling at λ should move
the distribution of k the way an aligned model retrained at β/λ would.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CATEGORIES = {
    "fruits": ["apple", "pear", "plum", "fig", "lime", "kiwi", "mango", "grape"],
    "colors": ["red", "blue", "green", "pink", "gray", "black", "white", "gold"],
    "animals": ["cat", "dog", "fox", "owl", "bear", "wolf", "deer", "frog"],
    "tools": ["saw", "axe", "drill", "file", "vise", "rake", "hoe", "plane"],
}
MAX_ITEMS = 6


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str
  response: str
  category: str
  num_items: int


def prompt_for(category: str) -> str:
  return f"Name some {category}:"


def make_examples(n: int, *, seed: int, max_items: int = MAX_ITEMS,
                  allowed_counts: tuple[int, ...] | None = None) -> list[Example]:
  """`n` seeded demonstrations; `allowed_counts` restricts k (e.g. (1, 2) for brevity)."""
  if n < 1:
    raise ValueError(f"n={n}: must be >= 1")
  rng = np.random.default_rng(seed)
  counts = np.arange(1, max_items + 1) if allowed_counts is None else np.asarray(allowed_counts)
  names = sorted(CATEGORIES)
  out = []
  for _ in range(n):
    category = names[rng.integers(len(names))]
    k = int(rng.choice(counts))
    items = rng.choice(CATEGORIES[category], size=k, replace=False)
    out.append(Example(prompt=prompt_for(category), response=" " + ", ".join(items) + ".",
                       category=category, num_items=k))
  return out


def count_items(response: str) -> int:
  """k as a judge reads it from a generated response: the comma-separated items before '.'."""
  body = response.split(".")[0].strip()
  return 0 if not body else len([part for part in body.split(",") if part.strip()])


def gold_score(response: str) -> float:
  """The gold judge of brevity: −(items), and −(MAX_ITEMS + 1) for an answer with none."""
  k = count_items(response)
  return -float(k) if k else -float(MAX_ITEMS + 1)


def preference_pairs(n: int, *, seed: int, noise: float = 0.0) -> list[dict]:
  """Records {"prompt", "chosen", "rejected"}: two answers with different item counts, the
  briefer chosen, labels flipped with probability `noise`."""
  if not 0 <= noise < 0.5:
    raise ValueError(f"noise={noise}: must be in [0, 0.5)")
  rng = np.random.default_rng(seed)
  names = sorted(CATEGORIES)
  out = []
  for _ in range(n):
    category = names[rng.integers(len(names))]
    k1, k2 = rng.choice(np.arange(1, MAX_ITEMS + 1), size=2, replace=False)
    answers = [" " + ", ".join(rng.choice(CATEGORIES[category], size=k, replace=False)) + "."
               for k in (min(k1, k2), max(k1, k2))]
    if rng.random() < noise:
      answers.reverse()
    out.append({"prompt": prompt_for(category), "chosen": answers[0], "rejected": answers[1]})
  return out
