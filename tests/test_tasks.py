"""Built-in tasks: determinism, disjoint splits, byte budget, exact judges, preference noise."""

import dataclasses

import numpy as np
import pytest

from dera_jax.data.tasks import (SPLITS, Example, get_task, known_tasks, records, split_of)
from dera_jax.data.tokenizer import ByteTokenizer

NAMES = ("length", "summarization", "hallucination")
BUDGET = 120


def _nbytes(prompt, response):
  return len(prompt.encode("utf-8")) + len(response.encode("utf-8"))


# ---------------------------------------------------------------- registry
def test_registry_knows_the_three_tasks_and_rejects_others():
  assert set(NAMES) <= set(known_tasks())
  for name in NAMES:
    assert get_task(name).name == name
  with pytest.raises(ValueError,
                     match="unknown task 'chess'.*hallucination, length, summarization"):
    get_task("chess")
  with pytest.raises(ValueError, match="unknown config field.*colour.*LengthConfig"):
    get_task("length", colour="red")
  with pytest.raises(ValueError, match="LengthConfig.mode='long'"):
    get_task("length", mode="long")
  assert get_task("length", {"mode": "target"}, target_items=2).config.target_items == 2


def test_bad_split_count_seed_and_noise():
  task = get_task("length")
  with pytest.raises(ValueError, match="split='dev'"):
    task.make_split("dev", 3, 0)
  with pytest.raises(ValueError, match="n=0"):
    task.make_split("train", 0, 0)
  with pytest.raises(ValueError, match="seed=-1"):
    task.make_split("train", 3, -1)
  with pytest.raises(ValueError, match="noise=0.7"):
    task.preference_pairs(3, 0, noise=0.7)


# ---------------------------------------------------------------- determinism and splits
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_seeded(name):
  task = get_task(name)
  a = task.make_split("train", 50, seed=3)
  assert a == get_task(name).make_split("train", 50, seed=3)
  assert a[:20] == task.make_split("train", 20, seed=3)        # a prefix for a smaller n
  assert a != task.make_split("train", 50, seed=4)
  assert task.sft_examples(30, seed=1) == task.sft_examples(30, seed=1)
  p1, p2 = task.preference_pairs(30, 2, noise=0.3), task.preference_pairs(30, 2, noise=0.3)
  assert [x.record() for x in p1] == [x.record() for x in p2]
  assert [x.flipped for x in p1] == [x.flipped for x in p2]


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_disjoint(name):
  task = get_task(name)
  prompts = {s: {e.prompt for e in task.make_split(s, 300, seed=int(s == "test"))} for s in SPLITS}
  assert prompts["train"].isdisjoint(prompts["validation"])
  assert prompts["train"].isdisjoint(prompts["test"])
  assert prompts["validation"].isdisjoint(prompts["test"])
  for split, ps in prompts.items():
    assert len(ps) >= 10, (split, len(ps))
    assert all(split_of(name, p) == split for p in ps)
  # preference pairs and SFT demonstrations of a split stay in it
  assert all(split_of(name, p.prompt) == "validation"
             for p in task.preference_pairs(20, 0, split="validation"))


# ---------------------------------------------------------------- byte budget
@pytest.mark.parametrize("name", NAMES)
def test_texts_fit_the_byte_budget(name):
  task = get_task(name)
  assert task.config.max_bytes == BUDGET
  texts = [(e.prompt, e.response) for e in task.make_split("train", 300, 0)]
  texts += [(e.prompt, e.response) for e in task.sft_examples(600, 1)]
  for p in task.preference_pairs(300, 2, noise=0.1):
    texts += [(p.prompt, p.chosen), (p.prompt, p.rejected)]
  longest = max(_nbytes(p, r) for p, r in texts)
  assert longest <= BUDGET - 10, longest          # room for BOS/EOS and a little slack
  assert all(len(r.encode()) <= task.response_budget(p) for p, r in texts)
  tok = ByteTokenizer()
  p, r = texts[0]
  assert tok.decode(tok.encode(p + r)) == p + r     # plain ASCII, one token per byte
  assert all(r.startswith(" ") for _, r in texts)


def test_longer_texts_need_the_budget_knob():
  with pytest.raises(ValueError, match="max_bytes=120"):
    get_task("summarization", num_key_facts=5, num_distractors=5).make_split("train", 5, 0)
  long = get_task("summarization", num_key_facts=5, num_distractors=5, max_bytes=400)
  ex = long.make_split("train", 5, 0)
  assert all(len(e.info["key_facts"]) == 5 and len(e.info["document"]) == 10 for e in ex)
  ex = get_task("hallucination", num_context_facts=8, max_relevant=4,
                max_bytes=300).make_split("test", 5, 0)
  assert all(len(e.info["context"]) == 8 for e in ex)


# ---------------------------------------------------------------- judges
def test_length_judge_exact():
  task = get_task("length")
  ex = Example(prompt="Ann wants fruits:", response=" fig.", info={"category": "fruits"})
  assert task.gold_score(ex, " fig.") == 1.0
  assert task.gold_score(ex, " fig, pear, plum.") == pytest.approx(3 / 5)
  assert task.gold_score(ex, " a, b, c, d, e, f, g.") == 0.0
  assert task.gold_score(ex, "") == 0.0
  assert task.task_metric(ex, " fig, rock.") == {"num_items": 2.0, "valid_fraction": 0.5,
                                                 "length_bytes": 11.0}
  target = get_task("length", mode="target", target_items=3)
  assert target.gold_score(ex, " fig, pear, plum.") == 1.0
  assert target.gold_score(ex, " fig.") == pytest.approx(1 - 2 / 5)
  assert all(len(e.response.split(",")) == 3 for e in target.make_split("train", 10, 0))


def _summary_example():
  doc = (("Bo", "old"), ("Al", "shy"), ("Bo", "tall"), ("Cy", "red"))
  return Example(prompt="Bo: Bo is old. Al is shy. Bo is tall. Cy is red.\nTL;DR:",
                 response=" Bo is old. Bo is tall.",
                 info={"topic": "Bo", "document": doc, "key_facts": (doc[0], doc[2]),
                       "distractors": (doc[1], doc[3])})


def test_summarization_judge_exact():
  task = get_task("summarization")
  ex = _summary_example()
  m = task.task_metric(ex, " Bo is old. Al is shy. Bo is rich.")
  assert m == {"coverage": 0.5, "hallucination_rate": 1 / 3, "unsupported": 1.0,
               "distractors": 1.0, "num_statements": 3.0, "length_bytes": 34.0}
  assert task.gold_score(ex, " Bo is old. Al is shy. Bo is rich.") == pytest.approx(
      0.5 - 0.5 * 1 - 0.005 * 34)
  assert task.gold_score(ex, ex.response) == pytest.approx(1 - 0.005 * 23)
  # a repeated key fact covers once; malformed text is unsupported; nothing scores 0
  m = task.task_metric(ex, " Bo is old. Bo is old. Bo is")
  assert (m["coverage"], m["unsupported"], m["num_statements"]) == (0.5, 1.0, 3.0)
  assert task.gold_score(ex, "") == 0.0
  # brevity: a distractor costs its bytes
  assert task.gold_score(ex, ex.response) > task.gold_score(ex, ex.response + " Al is shy.")


def test_hallucination_judge_exact():
  task = get_task("hallucination")
  ctx = (("Bo", "cat"), ("Al", "dog"), ("Bo", "fox"))
  ex = Example(prompt="Bo has a cat. Al has a dog. Bo has a fox. What does Bo have?",
               response=" Bo has a cat. Bo has a fox.",
               info={"asked": "Bo", "context": ctx, "relevant": (ctx[0], ctx[2])})
  # 2 supported, 1 unsupported statement
  m = task.task_metric(ex, " Bo has a cat. Bo has a fox. Bo has a dog.")
  assert m["hallucination_rate"] == pytest.approx(1 / 3)
  assert (m["coverage"], m["unsupported"], m["redundant"], m["num_statements"]) == (1, 1, 0, 3)
  assert task.gold_score(ex, " Bo has a cat. Bo has a fox. Bo has a dog.") == pytest.approx(2 / 3)
  assert task.gold_score(ex, ex.response) == 1.0
  m = task.task_metric(ex, " Bo has a cat. Al has a dog. Bo has a cat.")
  assert (m["coverage"], m["hallucination_rate"], m["redundant"]) == (0.5, 0.0, 2.0)
  assert task.gold_score(ex, " Bo has an emu.") == -1.0     # malformed for the grammar
  assert task.task_metric(ex, "")["hallucination_rate"] == 0.0
  # diluting the rate with a supported but irrelevant statement never pays
  for base in (" Bo has a dog.", " Bo has a cat. Bo has a dog."):
    assert task.gold_score(ex, base + " Al has a dog.") <= task.gold_score(ex, base)


@pytest.mark.parametrize("name", NAMES)
def test_references_are_best_and_demonstrations_spread(name):
  task = get_task(name)
  refs = task.make_split("train", 400, 1)
  demos = task.sft_examples(400, 1)                  # the same prompts, other responses
  assert [e.prompt for e in demos] == [e.prompt for e in refs]
  ref_gold = np.array([task.gold_score(e, e.response) for e in refs])
  demo_gold = np.array([task.gold_score(e, e.response) for e in demos])
  assert np.all(ref_gold >= demo_gold - 1e-12)
  assert demo_gold.mean() < ref_gold.mean() - 0.2
  assert demo_gold.std() > 0.2
  if name != "length":   # generated prompts agree with their structured fields
    assert all(task.task_metric(e, e.response)["coverage"] == 1.0 for e in refs)
    assert all(task.task_metric(e, e.response)["hallucination_rate"] == 0.0 for e in refs)


# ---------------------------------------------------------------- preference pairs
@pytest.mark.parametrize("name", NAMES)
def test_preference_noise_rate(name):
  task = get_task(name)
  clean = task.preference_pairs(300, 5, noise=0.0)
  assert all(p.chosen_gold > p.rejected_gold and not p.flipped for p in clean)
  noise, n = 0.2, 2000
  pairs = task.preference_pairs(n, 6, noise=noise)
  wrong = np.array([p.chosen_gold < p.rejected_gold for p in pairs])
  assert all(p.chosen_gold != p.rejected_gold for p in pairs)
  assert np.array_equal(wrong, [p.flipped for p in pairs])
  assert abs(wrong.mean() - noise) < 4 * np.sqrt(noise * (1 - noise) / n)
  for p in pairs[:50]:
    assert p.chosen_gold == task.gold_score(p.example, p.chosen)
  assert records(pairs[:2])[0].keys() == {"prompt", "chosen", "rejected"}
  assert records(task.make_split("test", 2, 0))[0].keys() == {"prompt", "response"}


def test_examples_are_frozen():
  ex = get_task("hallucination").make_split("train", 1, 0)[0]
  with pytest.raises(dataclasses.FrozenInstanceError):
    ex.prompt = "x"
