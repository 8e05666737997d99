"""The length task: a list of items, rewarded for brevity or for a target length.

    prompt:   "Ann wants fruits:"
    response: " fig, pear, plum."

Grammar: prompt `NAME " wants " CATEGORY ":"`; response `" " ITEM (", " ITEM)* "."` with
distinct items of the category (`list_task.CATEGORIES`). The name only varies the prompt (it
makes the prompt space big enough for disjoint splits); the category says which items fit.

Judge. k = the number of comma-separated items before the first '.' (`list_task.count_items`).
  brevity (default): reward(k) = (max_items − k) / (max_items − 1), 1 at k = 1, 0 at max_items;
  target:            reward(k) = 1 − |k − target_items| / (max_items − 1);
both clipped to [0, 1], and 0 for an empty list (k = 0). The gold score is this reward.
Demonstrations draw k uniformly from 1..max_items; the reference response has the best k.
Task metrics: num_items (k, the headline), valid_fraction (items that are distinct members of
the category / k; 0 when k = 0), length_bytes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dera_jax.data import list_task
from dera_jax.data.tasks.base import Example, Task

NAMES = ("Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon", "Kay", "Lee",
         "Max", "Ned", "Oli", "Pat", "Quin", "Ray", "Sam", "Ted", "Uma", "Val", "Wes", "Xia",
         "Yul", "Zed", "Abe", "Ben", "Cyd", "Dot", "Eli", "Flo")
MODES = ("brevity", "target")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LengthConfig:
  mode: str = "brevity"
  target_items: int = 3
  max_items: int = 6
  max_bytes: int = 120

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"LengthConfig.mode={self.mode!r}: must be one of {', '.join(MODES)}")
    smallest = min(len(v) for v in list_task.CATEGORIES.values())
    if not 2 <= self.max_items <= smallest:
      raise ValueError(f"LengthConfig.max_items={self.max_items!r}: must be in 2..{smallest}")
    if not 1 <= self.target_items <= self.max_items:
      raise ValueError(f"LengthConfig.target_items={self.target_items!r}: must be in "
                       f"1..max_items={self.max_items}")


class LengthTask(Task):
  name = "length"
  metric_names = ("num_items", "valid_fraction", "length_bytes")

  def __init__(self, config: LengthConfig | None = None):
    super().__init__(config or LengthConfig())

  def reward(self, k: int) -> float:
    """The length reward of a list of k items."""
    c = self.config
    if k <= 0:
      return 0.0
    gap = (k - 1) if c.mode == "brevity" else abs(k - c.target_items)
    return float(min(1.0, max(0.0, 1.0 - gap / (c.max_items - 1))))

  def best_count(self) -> int:
    return 1 if self.config.mode == "brevity" else self.config.target_items

  def _draw(self, rng: np.random.Generator) -> Example:
    name = NAMES[rng.integers(len(NAMES))]
    category = sorted(list_task.CATEGORIES)[rng.integers(len(list_task.CATEGORIES))]
    info = {"category": category}
    example = Example(prompt=f"{name} wants {category}:", response="", info=info)
    return dataclasses.replace(example,
                               response=self._items(example, self.best_count(), rng))

  def _items(self, example: Example, k: int, rng: np.random.Generator) -> str:
    words = list_task.CATEGORIES[example.info["category"]]
    picked = rng.choice(len(words), size=k, replace=False)
    return " " + ", ".join(words[i] for i in picked) + "."

  def sample_response(self, example: Example, rng: np.random.Generator) -> str:
    k = int(rng.integers(1, self.config.max_items + 1))
    return self._items(example, k, rng)

  def gold_score(self, example: Example, response: str) -> float:
    return self.reward(list_task.count_items(response))

  def task_metric(self, example: Example, response: str) -> dict[str, float]:
    k = list_task.count_items(response)
    items = [p.strip() for p in response.split(".")[0].split(",") if p.strip()]
    allowed = set(list_task.CATEGORIES[example.info["category"]])
    valid = len({item for item in items if item in allowed})
    return {"num_items": float(k), "valid_fraction": valid / k if k else 0.0,
            "length_bytes": float(len(response.encode("utf-8")))}
