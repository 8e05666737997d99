"""Evaluation: metrics, DeRa-vs-retrained comparison (statistics vs scipy, CSV/markdown), plots."""

import csv
import json
import math
import os

import numpy as np
import pytest

from dera_jax.data.tasks import Example, get_task
from dera_jax.eval import compare as cmp_lib
from dera_jax.eval import metrics

scipy_stats = pytest.importorskip("scipy.stats")

LAMBDAS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)


# ---------------------------------------------------------------- metrics
def test_spread_matches_numpy():
  x = [0.2, 0.5, 0.9, 0.4]
  s = metrics.spread(x)
  assert s.mean == pytest.approx(np.mean(x))
  assert s.std == pytest.approx(np.std(x, ddof=1))
  assert s.sem == pytest.approx(np.std(x, ddof=1) / 2)
  assert s.n == 4
  assert metrics.spread([3.0]) == metrics.Spread(3.0, 0.0, 0.0, 1)
  assert str(s) == f"{np.mean(x):.3f} ± {np.std(x, ddof=1):.3f}"
  with pytest.raises(ValueError, match="non-finite"):
    metrics.spread([1.0, float("nan")])


def test_kl_estimate_sequence_and_per_token():
  lp, ls = np.array([-3.0, -5.0, -2.0]), np.array([-4.0, -4.5, -2.0])
  assert metrics.kl_estimate(lp, ls) == pytest.approx(np.mean(lp - ls))
  tok_p = np.array([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
  tok_s = np.array([[-1.5, -2.5, -7.0], [-1.0, -0.25, -0.5]])
  mask = np.array([[True, True, False], [True, True, True]])
  assert metrics.kl_estimate(tok_p, tok_s, mask) == pytest.approx(((1.0) + (0.25)) / 2)
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.kl_estimate(lp, ls[:2])


def _length_examples():
  ex = Example(prompt="Ann wants fruits:", response=" fig.", info={"category": "fruits"})
  return [ex, ex, ex]


def test_win_rate_ties_count_half():
  task = get_task("length")
  exs = _length_examples()
  w = metrics.win_rates(task, exs, [" fig.", " fig, pear.", " kiwi, lime."],
                        [" fig, plum.", " fig.", " pear, plum."])
  assert w.tolist() == [1.0, 0.0, 0.5]
  assert metrics.win_rate(task, exs, [" fig."] * 3, [" fig."] * 3) == 0.5


def test_sample_metrics_and_aggregation():
  task = get_task("length")
  exs = _length_examples()
  responses = [" fig.", " fig, pear, plum.", " fig, rock."]
  per = metrics.sample_metrics(task, exs, responses, rewards=[0.1, 0.2, 0.6],
                               logp_policy=[-1.0, -2.0, -3.0], logp_sft=[-2.0, -2.0, -2.0],
                               baseline_responses=[" fig, pear."] * 3)
  assert list(per)[:5] == ["reward", "gold", "win_rate", "kl", "length"]
  assert per["gold"].tolist() == pytest.approx([1.0, 0.6, 0.8])
  assert per["win_rate"].tolist() == [1.0, 0.0, 0.5]
  assert per["length"].tolist() == [5.0, 17.0, 11.0]
  assert per["valid_fraction"].tolist() == [1.0, 1.0, 0.5]
  row = metrics.aggregate(per)
  assert row["kl"] == pytest.approx(0.0) and row["reward"] == pytest.approx(0.3)
  tokens = metrics.sample_metrics(task, exs, responses, lengths=[2, 4, 3])
  assert tokens["length"].tolist() == [2, 4, 3] and "reward" not in tokens
  with pytest.raises(ValueError, match="rewards: expected 3"):
    metrics.sample_metrics(task, exs, responses, rewards=[1.0])
  with pytest.raises(ValueError, match="both logp_policy and logp_sft"):
    metrics.sample_metrics(task, exs, responses, logp_policy=[0.0, 0.0, 0.0])
  seeds = metrics.aggregate_seeds([row, {**row, "gold": row["gold"] + 0.2}])
  assert seeds["gold"].mean == pytest.approx(row["gold"] + 0.1)
  assert seeds["gold"].std == pytest.approx(np.std([0.0, 0.2], ddof=1))


# ---------------------------------------------------------------- comparison
def _rows():
  """Fixed per-λ rows: DeRa and retrained with 3 seeds each; retrained misses λ = 3."""
  rng = np.random.default_rng(0)
  dera, retrained = {}, {}
  for lam in LAMBDAS:
    base = {"reward": 0.3 * lam, "gold": 0.5 + 0.2 * lam - 0.12 * lam ** 2,
            "win_rate": 0.5 + 0.1 * lam,
            "kl": 0.4 * lam ** 2, "length": 20 - 3 * lam, "hallucination_rate": 0.3 / (1 + lam)}
    dera[lam] = {c: v + 0.01 * rng.standard_normal(3) for c, v in base.items()}
    if lam != 3.0:
      noise = 0.05 * rng.standard_normal(len(base))
      retrained[lam] = {c: v + n + 0.01 * rng.standard_normal(3)
                        for (c, v), n in zip(base.items(), noise)}
  return dera, retrained


def test_correlation_and_mad_against_scipy():
  dera, retrained = _rows()
  c = cmp_lib.compare(dera, retrained, beta=0.1)
  assert c.columns == ("reward", "gold", "win_rate", "kl", "length", "hallucination_rate")
  for regime, keep in (("interpolation", lambda l: l <= 1), ("extrapolation", lambda l: l > 1),
                       ("all", lambda l: True)):
    lams = [l for l in LAMBDAS if keep(l) and l in retrained]
    for col in c.columns:
      a = np.array([np.mean(dera[l][col]) for l in lams])
      b = np.array([np.mean(retrained[l][col]) for l in lams])
      got = c.agreement[regime][col]
      assert got.n == len(lams)
      if len(lams) >= 3:
        assert got.spearman == pytest.approx(scipy_stats.spearmanr(a, b).statistic)
        assert got.pearson == pytest.approx(scipy_stats.pearsonr(a, b).statistic)
      assert got.mad == pytest.approx(np.mean(np.abs(a - b)))
      assert got.mad_pct == pytest.approx(100 * np.mean(np.abs(a - b)) / abs(np.mean(b)))
  # two extrapolation λ in both: correlations of two points are ±1
  assert c.agreement["extrapolation"]["reward"].n == 2


def test_spearman_with_ties_and_degenerate_cases():
  x, y = [1.0, 2.0, 2.0, 3.0, 5.0], [2.0, 1.0, 4.0, 4.0, 9.0]
  assert cmp_lib.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
  assert np.array_equal(cmp_lib.rankdata(x), scipy_stats.rankdata(x))
  assert math.isnan(cmp_lib.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
  assert math.isnan(cmp_lib.spearman([1.0], [2.0]))
  a = cmp_lib.agreement_stats([], [])
  assert a.n == 0 and math.isnan(a.mad)


def test_select_lambda_picks_best_validation_gold():
  assert cmp_lib.select_lambda({0.5: 0.2, 1.0: 0.7, 2.0: 0.4}) == 1.0
  assert cmp_lib.select_lambda({0.5: 0.7, 1.0: 0.7, 2.0: 0.4}) == 0.5     # ties: smallest λ
  assert cmp_lib.select_lambda({0.5: {"gold": [0.1, 0.3]}, 2.0: {"gold": [0.5, 0.6]}}) == 2.0
  dera, retrained = _rows()
  validation = {l: {"gold": np.mean(dera[l]["gold"]) + (0.5 if l == 1.5 else 0.0)}
                for l in LAMBDAS}
  c = cmp_lib.compare(dera, retrained, beta=0.1, validation_gold=validation)
  s = c.selection
  assert s.lam == 1.5 and s.beta_over_lambda == pytest.approx(0.1 / 1.5)
  assert s.dera_test["gold"].mean == pytest.approx(np.mean(dera[1.5]["gold"]))
  assert s.retrained_test["gold"].mean == pytest.approx(np.mean(retrained[1.5]["gold"]))
  c3 = cmp_lib.compare(dera, retrained, beta=0.1, validation_gold={3.0: 1.0, 1.0: 0.0})
  assert c3.selection.lam == 3.0 and c3.selection.retrained_test is None


def test_bad_lambdas_and_beta():
  dera, retrained = _rows()
  with pytest.raises(ValueError, match="λ=nan"):
    cmp_lib.compare({**dera, float("nan"): dera[1.0]}, retrained, beta=0.1)
  with pytest.raises(ValueError, match="appears twice"):
    cmp_lib.compare({1: dera[1.0], 1.0: dera[1.0], "1.0": dera[1.0]}, retrained, beta=0.1)
  with pytest.raises(ValueError, match="beta=0.0"):
    cmp_lib.compare(dera, retrained, beta=0.0)
  with pytest.raises(ValueError, match="selected λ=9.0"):
    cmp_lib.compare(dera, retrained, beta=0.1, validation_gold={9.0: 1.0})
  with pytest.raises(ValueError, match="column\\(s\\) nope"):
    cmp_lib.compare(dera, retrained, beta=0.1, columns=("gold", "nope"))


def test_csv_markdown_and_json_files(tmp_path):
  dera, retrained = _rows()
  c = cmp_lib.compare(dera, retrained, beta=0.1,
                      validation_gold={l: dera[l]["gold"] for l in LAMBDAS})
  paths = cmp_lib.write_results(str(tmp_path / "results"), c)
  assert sorted(os.listdir(tmp_path / "results")) == sorted(
      ["comparison.md", "comparison.csv", "agreement.csv", "comparison.json"])  # no temp files
  assert all(os.stat(p).st_mode & 0o777 == 0o644 for p in paths.values())
  with open(paths["csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [float(r["lambda"]) for r in rows] == list(LAMBDAS)
  assert float(rows[0]["beta_over_lambda"]) == math.inf
  assert float(rows[1]["beta_over_lambda"]) == pytest.approx(0.4)
  for r in rows:
    lam = float(r["lambda"])
    for col in c.columns:
      assert float(r[f"dera_{col}_mean"]) == pytest.approx(np.mean(dera[lam][col]))
      assert float(r[f"dera_{col}_std"]) == pytest.approx(np.std(dera[lam][col], ddof=1))
      assert r[f"dera_{col}_n"] == "3"
      if lam in retrained:
        assert float(r[f"retrained_{col}_mean"]) == pytest.approx(np.mean(retrained[lam][col]))
      else:
        assert r[f"retrained_{col}_mean"] == ""
  with open(paths["agreement_csv"]) as f:
    agree = list(csv.DictReader(f))
  assert len(agree) == 3 * len(c.columns)
  first = agree[0]
  assert (first["column"], first["regime"]) == ("reward", "interpolation")
  assert float(first["mad"]) == pytest.approx(c.agreement["interpolation"]["reward"].mad)
  md = open(paths["markdown"]).read()
  assert md.startswith("| λ | β/λ | reward (DeRa) | reward (retrained) | gold (DeRa) |")
  line = next(l for l in md.splitlines() if l.startswith("| 0.5 |"))
  assert f"{np.mean(dera[0.5]['gold']):.3f} ± {np.std(dera[0.5]['gold'], ddof=1):.3f}" in line
  row3 = next(l for l in md.splitlines() if l.startswith("| 3 |"))
  assert row3.count("| – |") == len(c.columns)
  assert "| gold | λ > 1 | 2 |" in md and "λ* =" in md and "| retrained at β/λ* |" in md
  data = json.load(open(paths["json"]))
  assert data["selection"]["lambda"] == c.selection.lam
  assert data["dera"]["0.0"]["gold"]["n"] == 3


# ---------------------------------------------------------------- plots
def test_plots_are_png_files(tmp_path):
  pytest.importorskip("matplotlib")
  from dera_jax.eval import plots
  dera, retrained = _rows()
  c = cmp_lib.compare(dera, retrained, beta=0.1,
                      validation_gold={l: dera[l]["gold"] for l in LAMBDAS})
  out = plots.write_plots(str(tmp_path), c, task_metric="hallucination_rate")
  assert set(out) == {"reward_vs_lambda", "gold_vs_lambda", "reward_vs_kl",
                      "task_metric_vs_lambda"}
  assert os.path.basename(out["task_metric_vs_lambda"]) == "hallucination_rate_vs_lambda.png"
  for path in out.values():
    with open(path, "rb") as f:
      data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path
  assert len(os.listdir(tmp_path)) == 4
  with pytest.raises(ValueError, match="task_metric='coverage'"):
    plots.write_plots(str(tmp_path), c, task_metric="coverage")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
  path = str(tmp_path / "table.md")
  cmp_lib.atomic_write_text(path, "old\n")

  def fail(f):
    f.write("half")
    raise RuntimeError("disk on fire")
  with pytest.raises(RuntimeError, match="disk on fire"):
    cmp_lib.atomic_write(path, fail)
  assert open(path).read() == "old\n" and os.listdir(tmp_path) == ["table.md"]
