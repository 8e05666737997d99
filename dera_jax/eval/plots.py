"""PNG plots of a DeRa-vs-retrained comparison (matplotlib, Agg canvas, no pyplot state).

    write_plots("results/", cmp, task_metric="hallucination_rate")
      -> reward_vs_lambda.png, gold_vs_lambda.png, reward_vs_kl.png, {task_metric}_vs_lambda.png

DeRa is drawn as a line over λ (error bars: std over seeds), the retrained models as points
(they exist only at the λ of the grid); λ = 1 (the aligned model) is marked, and so is the λ
chosen on validation when the comparison has one. Files are written atomically.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

from dera_jax.eval.compare import Comparison, atomic_write
from dera_jax.eval.metrics import Spread

_DERA = dict(color="tab:blue", marker="o", markersize=4, linewidth=1.6, capsize=3,
             label="DeRa (λ)")
_RETRAINED = dict(color="tab:red", marker="s", markersize=6, linestyle="none", capsize=3,
                  label="retrained (β/λ)")


def _figure():
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(5.5, 4.0), dpi=100)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: str) -> str:
  fig.tight_layout()
  return atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)


def _series(rows: Mapping[float, Mapping[str, Spread]], column: str):
  lams = [l for l in sorted(rows) if column in rows[l]]
  return (lams, [rows[l][column].mean for l in lams], [rows[l][column].std for l in lams])


def plot_vs_lambda(path: str, cmp: Comparison, column: str, *, ylabel: str | None = None,
                   title: str | None = None) -> str:
  """`column` against λ: DeRa as a line, retrained models as points. Returns `path`."""
  fig, ax = _figure()
  x, y, e = _series(cmp.dera, column)
  if x:
    ax.errorbar(x, y, yerr=e, **_DERA)
  x, y, e = _series(cmp.retrained, column)
  if x:
    ax.errorbar(x, y, yerr=e, **_RETRAINED)
  ax.axvline(1.0, color="gray", linestyle=":", linewidth=1, label="λ = 1 (aligned at β)")
  if cmp.selection is not None:
    ax.axvline(cmp.selection.lam, color="tab:green", linestyle="--", linewidth=1,
               label=f"λ* = {cmp.selection.lam:g} (validation)")
  ax.set_xlabel("λ  (KL strength β/λ)")
  ax.set_ylabel(ylabel or column)
  ax.set_title(title or f"{column} vs λ (β = {cmp.beta:g})")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_reward_vs_kl(path: str, cmp: Comparison, *, reward: str = "reward",
                      kl: str = "kl", title: str | None = None) -> str:
  """`reward` against KL to SFT: DeRa as a curve through its λ grid, retrained models as points,
  each point annotated with its λ. Returns `path`."""
  fig, ax = _figure()
  for rows, style in ((cmp.dera, _DERA), (cmp.retrained, _RETRAINED)):
    lams = [l for l in sorted(rows) if reward in rows[l] and kl in rows[l]]
    if not lams:
      continue
    xs = [rows[l][kl].mean for l in lams]
    ys = [rows[l][reward].mean for l in lams]
    ax.errorbar(xs, ys, xerr=[rows[l][kl].std for l in lams],
                yerr=[rows[l][reward].std for l in lams], **style)
    for l, x, y in zip(lams, xs, ys):
      if math.isfinite(x) and math.isfinite(y):
        ax.annotate(f"{l:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                    color=style["color"])
  ax.set_xlabel("KL to SFT (nats)")
  ax.set_ylabel(reward)
  ax.set_title(title or f"{reward} vs KL to SFT (β = {cmp.beta:g})")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def write_plots(out_dir: str, cmp: Comparison, task_metric: str | None = None) -> dict[str, str]:
  """The four plots of a comparison into `out_dir`; returns {name: path} for those whose columns
  the comparison has (reward_vs_lambda, gold_vs_lambda, reward_vs_kl, task_metric_vs_lambda)."""
  has = lambda c: any(c in row for row in list(cmp.dera.values()) + list(cmp.retrained.values()))
  out = {}
  if has("reward"):
    out["reward_vs_lambda"] = plot_vs_lambda(os.path.join(out_dir, "reward_vs_lambda.png"), cmp,
                                             "reward", ylabel="learned reward")
  if has("gold"):
    out["gold_vs_lambda"] = plot_vs_lambda(os.path.join(out_dir, "gold_vs_lambda.png"), cmp,
                                           "gold", ylabel="gold-judge score")
  if has("reward") and has("kl"):
    out["reward_vs_kl"] = plot_reward_vs_kl(os.path.join(out_dir, "reward_vs_kl.png"), cmp)
  if task_metric is not None:
    if not has(task_metric):
      raise ValueError(f"write_plots: task_metric={task_metric!r} is in no row; columns are "
                       f"{', '.join(cmp.columns)}")
    out["task_metric_vs_lambda"] = plot_vs_lambda(
        os.path.join(out_dir, f"{task_metric}_vs_lambda.png"), cmp, task_metric)
  return out
