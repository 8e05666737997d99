"""Per-sample and aggregated metrics of sampled responses, and their spread over seeds.

For N responses to N examples of a task (one response per example; repeat an example to judge
several samples of it):

    per = sample_metrics(task, examples, responses, rewards=r, logp_policy=lp, logp_sft=ls,
                         baseline_responses=sft_texts)   # {column: [N] float64}
    run = aggregate(per)                                  # {column: float}, one seed
    table_row = aggregate_seeds([run_seed0, run_seed1])   # {column: Spread}

Columns: "reward" (the learned reward, given as an array), "gold" (the task's gold judge),
"win_rate" (against `baseline_responses`, the SFT samples for the same examples, judged by the
gold judge: 1 win, 0.5 tie, 0 loss), "kl" (log p_policy(y|x) − log p_sft(y|x) per sample; its
mean is the Monte-Carlo estimate of KL(policy ‖ SFT) over samples from the policy), "length"
(token counts if given, else UTF-8 bytes of the response), then the task's metrics
(`task.metric_names`). Columns whose inputs are not given are left out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

STANDARD_COLUMNS = ("reward", "gold", "win_rate", "kl", "length")


@dataclasses.dataclass(frozen=True)
class Spread:
  """A mean over seeds with its spread: sample std (ddof=1; 0 for one seed), standard error
  std/√n, and n, the number of seeds."""
  mean: float
  std: float = 0.0
  sem: float = 0.0
  n: int = 1

  def __str__(self) -> str:
    return format_spread(self)


def spread(values: Sequence[float]) -> Spread:
  """Mean, std (ddof=1) and standard error of per-seed values (non-finite values raise)."""
  x = np.asarray(values, dtype=np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError("spread of no values")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"spread: non-finite values {x.tolist()}")
  std = float(x.std(ddof=1)) if x.size > 1 else 0.0
  return Spread(mean=float(x.mean()), std=std, sem=std / math.sqrt(x.size), n=int(x.size))


def as_spread(value) -> Spread:
  """A Spread from a Spread, a number (one seed) or a sequence of per-seed values."""
  if isinstance(value, Spread):
    return value
  if np.ndim(value) == 0:
    return Spread(mean=float(value))
  return spread(value)


def format_spread(s: Spread, digits: int = 3) -> str:
  """'0.512 ± 0.031' (± the std over seeds; the mean alone for one seed)."""
  if s.n > 1:
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"
  return f"{s.mean:.{digits}f}"


def sequence_logprob(logp, mask=None) -> np.ndarray:
  """[N] sequence log-probs from [N] (returned as is) or per-token [N, T] (summed over T where
  `mask` [N, T] is True; all tokens without a mask)."""
  x = np.asarray(logp, dtype=np.float64)
  if x.ndim == 1:
    if mask is not None:
      raise ValueError("sequence_logprob: a mask needs per-token log-probs [N, T]")
    return x
  if x.ndim != 2:
    raise ValueError(f"sequence_logprob: log-probs must be [N] or [N, T], got shape {x.shape}")
  if mask is not None:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != x.shape:
      raise ValueError(f"sequence_logprob: mask shape {mask.shape} != log-probs {x.shape}")
    x = np.where(mask, x, 0.0)
  return x.sum(axis=1)


def kl_samples(logp_policy, logp_sft, mask=None) -> np.ndarray:
  """[N] per-sample log p_policy(y|x) − log p_sft(y|x) for y sampled from the policy."""
  a, b = sequence_logprob(logp_policy, mask), sequence_logprob(logp_sft, mask)
  if a.shape != b.shape:
    raise ValueError(f"kl: logp_policy {a.shape} and logp_sft {b.shape} differ in shape")
  return a - b


def kl_estimate(logp_policy, logp_sft, mask=None) -> float:
  """Monte-Carlo KL(policy ‖ SFT): the mean of log p_policy − log p_sft over policy samples."""
  d = kl_samples(logp_policy, logp_sft, mask)
  if d.size == 0:
    raise ValueError("kl_estimate of no samples")
  return float(d.mean())


def win_rates(task, examples, responses: Sequence[str],
              baseline_responses: Sequence[str]) -> np.ndarray:
  """[N] 1.0 where the gold judge scores a response above the baseline's (for the same example),
  0.5 on a tie, 0.0 below; the mean is the win rate against the baseline."""
  _check_lengths(examples, responses=responses, baseline_responses=baseline_responses)
  out = np.empty(len(examples), np.float64)
  for i, (ex, a, b) in enumerate(zip(examples, responses, baseline_responses)):
    ga, gb = task.gold_score(ex, a), task.gold_score(ex, b)
    out[i] = 1.0 if ga > gb else (0.5 if ga == gb else 0.0)
  return out


def win_rate(task, examples, responses, baseline_responses) -> float:
  return float(win_rates(task, examples, responses, baseline_responses).mean())


def sample_metrics(task, examples, responses: Sequence[str], *, rewards=None,
                   logp_policy=None, logp_sft=None, logp_mask=None,
                   baseline_responses: Sequence[str] | None = None,
                   lengths=None, gold=None, baseline_gold=None) -> dict[str, np.ndarray]:
  """Per-sample columns ([N] float64 each) for N responses to N examples; see the module doc.

  `gold` / `baseline_gold` ([N] each): scores of a judge other than the task's exact one (e.g.
  a gold reward model) for the responses and the baseline responses; then `task.gold_score`
  is not called, and the win rate compares these.
  """
  _check_lengths(examples, responses=responses)
  n = len(examples)
  if n == 0:
    raise ValueError("sample_metrics of no responses")
  out: dict[str, np.ndarray] = {}
  if rewards is not None:
    out["reward"] = _vector("rewards", rewards, n)
  if gold is None:
    if baseline_gold is not None:
      raise ValueError("sample_metrics: baseline_gold needs gold")
    out["gold"] = np.array([task.gold_score(e, r) for e, r in zip(examples, responses)],
                           np.float64)
    if baseline_responses is not None:
      out["win_rate"] = win_rates(task, examples, responses, baseline_responses)
  else:
    out["gold"] = _vector("gold", gold, n)
    if baseline_responses is not None and baseline_gold is None:
      raise ValueError("sample_metrics: with `gold` given, the win rate needs baseline_gold "
                       "(the same judge's scores of baseline_responses)")
    if baseline_gold is not None:
      other = _vector("baseline_gold", baseline_gold, n)
      out["win_rate"] = np.where(out["gold"] > other, 1.0,
                                 np.where(out["gold"] == other, 0.5, 0.0))
  if (logp_policy is None) != (logp_sft is None):
    raise ValueError("sample_metrics: give both logp_policy and logp_sft, or neither")
  if logp_policy is not None:
    out["kl"] = _vector("logp_policy - logp_sft", kl_samples(logp_policy, logp_sft, logp_mask), n)
  if lengths is not None:
    out["length"] = _vector("lengths", lengths, n)
  else:
    out["length"] = np.array([len(r.encode("utf-8")) for r in responses], np.float64)
  per_metric = [task.task_metric(e, r) for e, r in zip(examples, responses)]
  for name in task.metric_names:
    out[name] = np.array([m[name] for m in per_metric], np.float64)
  return out


def aggregate(per_sample: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Means of per-sample columns (the KL column's mean is the KL estimate)."""
  return {name: float(np.mean(values)) for name, values in per_sample.items()}


def evaluate(task, examples, responses, **kwargs) -> dict[str, float]:
  """`aggregate(sample_metrics(...))`: one seed's row."""
  return aggregate(sample_metrics(task, examples, responses, **kwargs))


def aggregate_seeds(runs: Sequence[Mapping[str, float]]) -> dict[str, Spread]:
  """{column: Spread over seeds} from one aggregated row per seed (columns every row has, in the
  first row's order)."""
  if not runs:
    raise ValueError("aggregate_seeds of no runs")
  columns = [c for c in runs[0] if all(c in r for r in runs)]
  return {c: spread([r[c] for r in runs]) for c in columns}


def _vector(name: str, values, n: int) -> np.ndarray:
  x = np.asarray(values, dtype=np.float64).reshape(-1)
  if x.shape != (n,):
    raise ValueError(f"{name}: expected {n} values (one per response), got shape "
                     f"{np.shape(values)}")
  return x


def _check_lengths(examples, **named) -> None:
  for name, seq in named.items():
    if len(seq) != len(examples):
      raise ValueError(f"{name}: {len(seq)} items for {len(examples)} examples")
