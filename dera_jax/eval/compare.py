"""DeRa versus retrained models: the side-by-side table, agreement statistics, λ selection.

Inputs are rows keyed by λ: `{λ: {column: Spread | float | per-seed values}}`, one mapping for
DeRa sampling at λ from (π_sft, π_β) and one for the model retrained at β/λ (λ = 1 is π_β
itself, λ = 0 the SFT model). A λ missing from the retrained rows is left blank.

    cmp = compare(dera_test, retrained_test, beta=0.1, validation_gold=dera_validation)
    write_results("results/", cmp)   # comparison.md, comparison.csv, agreement.csv, comparison.json

Agreement, per column, over the λ both methods have, separately for λ ≤ 1 ("interpolation"),
λ > 1 ("extrapolation") and all λ: the Spearman (average ranks for ties) and Pearson correlation
of the DeRa means with the retrained means (NaN with fewer than two λ or a constant column),
the mean absolute difference MAD = mean |DeRa − retrained|, and MAD as a % of |mean of the
retrained values| (NaN when that mean is 0).

Selection: λ* = the λ with the highest validation gold score (ties: the smallest such λ, the
most regularised); its test row, and the retrained model's at β/λ* when there is one.
All files are written atomically (a temporary file in the same directory, then os.replace).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from dera_jax.eval.metrics import STANDARD_COLUMNS, Spread, as_spread, format_spread

REGIMES = ("interpolation", "extrapolation", "all")
METHODS = ("dera", "retrained")

Rows = Mapping[float, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Agreement:
  n: int
  spearman: float
  pearson: float
  mad: float
  mad_pct: float


@dataclasses.dataclass(frozen=True)
class Selection:
  lam: float
  beta_over_lambda: float
  validation_gold: float
  dera_test: dict[str, Spread]
  retrained_test: dict[str, Spread] | None


@dataclasses.dataclass(frozen=True)
class Comparison:
  beta: float
  columns: tuple[str, ...]
  lambdas: tuple[float, ...]
  dera: dict[float, dict[str, Spread]]
  retrained: dict[float, dict[str, Spread]]
  agreement: dict[str, dict[str, Agreement]]   # regime -> column -> Agreement
  selection: Selection | None


# ---------------------------------------------------------------- statistics
def rankdata(x) -> np.ndarray:
  """Ranks 1..n, ties given their average rank (scipy.stats.rankdata's 'average')."""
  x = np.asarray(x, dtype=np.float64)
  order = np.argsort(x, kind="mergesort")
  sorted_x = x[order]
  ranks = np.empty(x.size, np.float64)
  i = 0
  while i < x.size:
    j = i
    while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
    i = j + 1
  return ranks


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or x.shape != y.shape:
    return math.nan
  dx, dy = x - x.mean(), y - y.mean()
  denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
  if denom == 0.0:
    return math.nan
  return float(np.clip(float(dx @ dy) / denom, -1.0, 1.0))


def spearman(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or x.shape != y.shape:
    return math.nan
  return pearson(rankdata(x), rankdata(y))


def agreement_stats(dera_means, retrained_means) -> Agreement:
  a, b = np.asarray(dera_means, np.float64), np.asarray(retrained_means, np.float64)
  if a.size == 0:
    return Agreement(n=0, spearman=math.nan, pearson=math.nan, mad=math.nan, mad_pct=math.nan)
  mad = float(np.mean(np.abs(a - b)))
  ref = abs(float(np.mean(b)))
  return Agreement(n=int(a.size), spearman=spearman(a, b), pearson=pearson(a, b), mad=mad,
                   mad_pct=100.0 * mad / ref if ref > 0 else math.nan)


def regime_of(lam: float) -> str:
  return "interpolation" if lam <= 1.0 else "extrapolation"


def agreement(dera: Rows, retrained: Rows,
              columns: Sequence[str]) -> dict[str, dict[str, Agreement]]:
  """{regime: {column: Agreement}} over the λ where both methods have the column."""
  dera, retrained = normalize_rows(dera, "dera"), normalize_rows(retrained, "retrained")
  out: dict[str, dict[str, Agreement]] = {}
  for regime in REGIMES:
    out[regime] = {}
    for column in columns:
      lams = [l for l in sorted(dera) if l in retrained and column in dera[l]
              and column in retrained[l] and (regime == "all" or regime_of(l) == regime)]
      out[regime][column] = agreement_stats([dera[l][column].mean for l in lams],
                                            [retrained[l][column].mean for l in lams])
  return out


# ---------------------------------------------------------------- selection
def select_lambda(validation_gold: Mapping[float, Any]) -> float:
  """The λ with the highest validation gold score (ties: the smallest λ).

  Values may be numbers, Spreads (their mean is used) or rows with a "gold" column.
  """
  scores = {}
  for lam, value in _check_lambdas(validation_gold, "validation_gold").items():
    if isinstance(value, Mapping):
      if "gold" not in value:
        raise ValueError(f"validation_gold[{lam}]: a row without a 'gold' column")
      value = value["gold"]
    score = as_spread(value).mean
    if not math.isfinite(score):
      raise ValueError(f"validation_gold[{lam}]={score}: the gold score must be finite")
    scores[lam] = score
  if not scores:
    raise ValueError("select_lambda: no validation scores")
  best = max(scores.values())
  return min(l for l, s in scores.items() if s == best)


def beta_over_lambda(beta: float, lam: float) -> float:
  return math.inf if lam == 0 else beta / lam


# ---------------------------------------------------------------- the comparison
def normalize_rows(rows: Rows, name: str) -> dict[float, dict[str, Spread]]:
  rows = _check_lambdas(rows, name)
  out = {}
  for lam, row in rows.items():
    if not isinstance(row, Mapping):
      raise ValueError(f"{name}[{lam}]: expected a mapping of columns, got {type(row).__name__}")
    out[lam] = {str(c): as_spread(v) for c, v in row.items()}
  return out


def compare(dera: Rows, retrained: Rows, *, beta: float, columns: Sequence[str] | None = None,
            validation_gold: Mapping[float, Any] | None = None) -> Comparison:
  """The comparison of DeRa's and the retrained models' rows (both on the test split).

  Args:
    dera, retrained: {λ: {column: Spread | float | per-seed values}}.
    beta: the β of the aligned model (the retrained model at λ was trained at β/λ).
    columns: the columns to compare; by default the standard ones present, then the others of
      the first DeRa row in its order.
    validation_gold: {λ: DeRa's validation gold score (number, Spread or row)} for selecting λ*.
  """
  beta = float(beta)
  if not (math.isfinite(beta) and beta > 0):
    raise ValueError(f"beta={beta!r}: must be finite and > 0")
  d, r = normalize_rows(dera, "dera"), normalize_rows(retrained, "retrained")
  if not d:
    raise ValueError("compare: no DeRa rows")
  if columns is None:
    first = d[min(d)]
    columns = [c for c in STANDARD_COLUMNS if c in first]
    columns += [c for c in first if c not in columns]
  columns = tuple(columns)
  missing = [c for c in columns if not any(c in row for row in d.values())]
  if missing:
    raise ValueError(f"compare: column(s) {', '.join(missing)} in no DeRa row; the rows have "
                     f"{', '.join(sorted({c for row in d.values() for c in row}))}")
  lambdas = tuple(sorted(set(d) | set(r)))
  selection = None
  if validation_gold is not None:
    lam = select_lambda(validation_gold)
    if lam not in d:
      raise ValueError(f"selected λ={lam} (best validation gold) has no DeRa test row; test rows "
                       f"have λ in {sorted(d)}")
    value = validation_gold[lam] if lam in validation_gold else _lookup(validation_gold, lam)
    gold = as_spread(value["gold"] if isinstance(value, Mapping) else value).mean
    selection = Selection(lam=lam, beta_over_lambda=beta_over_lambda(beta, lam),
                          validation_gold=gold, dera_test=d[lam], retrained_test=r.get(lam))
  return Comparison(beta=beta, columns=columns, lambdas=lambdas, dera=d, retrained=r,
                    agreement=agreement(d, r, columns), selection=selection)


# ---------------------------------------------------------------- rendering
def _fmt(x: float, digits: int = 3) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  if isinstance(x, float) and math.isinf(x):
    return "∞"
  return f"{x:.{digits}f}"


def _cell(row: Mapping[str, Spread] | None, column: str) -> str:
  if row is None or column not in row:
    return "–"
  return format_spread(row[column])


def markdown_table(cmp: Comparison, digits: int = 3) -> str:
  """The per-λ table (DeRa | retrained per column, mean ± std over seeds), the agreement table
  and the λ selection, as markdown."""
  lines = []
  header = ["λ", "β/λ"] + [f"{c} ({m})" for c in cmp.columns for m in ("DeRa", "retrained")]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "|".join(["---"] * len(header)) + "|")
  for lam in cmp.lambdas:
    cells = [_fmt(lam, 3).rstrip("0").rstrip("."), _fmt(beta_over_lambda(cmp.beta, lam), 4)]
    for c in cmp.columns:
      cells += [_cell(cmp.dera.get(lam), c), _cell(cmp.retrained.get(lam), c)]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Agreement of DeRa with the retrained models across λ (means over seeds):", "",
            "| column | λ range | n | Spearman | Pearson | MAD | MAD % of mean |",
            "|---|---|---|---|---|---|---|"]
  names = {"interpolation": "λ ≤ 1", "extrapolation": "λ > 1", "all": "all"}
  for c in cmp.columns:
    for regime in REGIMES:
      a = cmp.agreement[regime][c]
      lines.append(f"| {c} | {names[regime]} | {a.n} | {_fmt(a.spearman, digits)} | "
                   f"{_fmt(a.pearson, digits)} | {_fmt(a.mad, digits)} | {_fmt(a.mad_pct, 1)} |")
  s = cmp.selection
  if s is not None:
    lines += ["", f"λ chosen on validation by the gold score: λ* = {s.lam:g} "
              f"(β/λ* = {_fmt(s.beta_over_lambda, 4)}, "
              f"validation gold {_fmt(s.validation_gold)}).",
              "", "| test | " + " | ".join(cmp.columns) + " |",
              "|" + "|".join(["---"] * (len(cmp.columns) + 1)) + "|",
              "| DeRa at λ* | " + " | ".join(_cell(s.dera_test, c) for c in cmp.columns) + " |",
              "| retrained at β/λ* | " + " | ".join(_cell(s.retrained_test, c)
                                                    for c in cmp.columns) + " |"]
  return "\n".join(lines) + "\n"


def csv_text(cmp: Comparison) -> str:
  """One row per λ: lambda, beta_over_lambda, then {method}_{column}_{mean,std,sem,n} for DeRa
  and retrained side by side per column (blank where a method has no value)."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  header = ["lambda", "beta_over_lambda"]
  for c in cmp.columns:
    for m in METHODS:
      header += [f"{m}_{c}_{s}" for s in ("mean", "std", "sem", "n")]
  w.writerow(header)
  for lam in cmp.lambdas:
    row = [repr(float(lam)), repr(beta_over_lambda(cmp.beta, lam))]
    for c in cmp.columns:
      for rows in (cmp.dera, cmp.retrained):
        v = rows.get(lam, {}).get(c)
        row += ["", "", "", ""] if v is None else [repr(v.mean), repr(v.std), repr(v.sem), v.n]
    w.writerow(row)
  return buf.getvalue()


def agreement_csv_text(cmp: Comparison) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["column", "regime", "n", "spearman", "pearson", "mad", "mad_pct"])
  for c in cmp.columns:
    for regime in REGIMES:
      a = cmp.agreement[regime][c]
      w.writerow([c, regime, a.n, repr(a.spearman), repr(a.pearson), repr(a.mad),
                  repr(a.mad_pct)])
  return buf.getvalue()


def to_json(cmp: Comparison) -> dict:
  """Everything in the comparison as JSON-ready values (non-finite numbers as strings)."""
  def num(x):
    return x if math.isfinite(x) else str(x)

  def row(r):
    return None if r is None else {c: {k: num(float(v)) if k != "n" else v
                                       for k, v in dataclasses.asdict(s).items()}
                                   for c, s in r.items()}
  out = {"beta": cmp.beta, "columns": list(cmp.columns), "lambdas": list(cmp.lambdas),
         "dera": {repr(l): row(r) for l, r in cmp.dera.items()},
         "retrained": {repr(l): row(r) for l, r in cmp.retrained.items()},
         "agreement": {g: {c: {k: num(float(v)) if k != "n" else v
                               for k, v in dataclasses.asdict(a).items()}
                           for c, a in cols.items()} for g, cols in cmp.agreement.items()},
         "selection": None}
  s = cmp.selection
  if s is not None:
    out["selection"] = {"lambda": s.lam, "beta_over_lambda": num(s.beta_over_lambda),
                        "validation_gold": s.validation_gold, "dera_test": row(s.dera_test),
                        "retrained_test": row(s.retrained_test)}
  return out


def atomic_write(path: str, write, *, binary: bool = False) -> str:
  """Call `write(f)` on a temporary file next to `path`, then rename it onto `path`: readers
  see the old file or the whole new one, never a part. The file gets mode 0644. Returns `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                             suffix=".tmp")
  try:
    with (os.fdopen(fd, "wb") if binary else
          os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def atomic_write_text(path: str, text: str) -> str:
  """Write `text` (UTF-8) to `path` atomically (see `atomic_write`)."""
  return atomic_write(path, lambda f: f.write(text))


def write_results(out_dir: str, cmp: Comparison, prefix: str = "comparison") -> dict[str, str]:
  """Write {prefix}.md, {prefix}.csv, agreement.csv and {prefix}.json into `out_dir`;
  returns {"markdown", "csv", "agreement_csv", "json"} -> path."""
  paths = {"markdown": os.path.join(out_dir, f"{prefix}.md"),
           "csv": os.path.join(out_dir, f"{prefix}.csv"),
           "agreement_csv": os.path.join(out_dir, "agreement.csv"),
           "json": os.path.join(out_dir, f"{prefix}.json")}
  atomic_write_text(paths["markdown"], markdown_table(cmp))
  atomic_write_text(paths["csv"], csv_text(cmp))
  atomic_write_text(paths["agreement_csv"], agreement_csv_text(cmp))
  atomic_write_text(paths["json"], json.dumps(to_json(cmp), indent=2, ensure_ascii=False) + "\n")
  return paths


# ---------------------------------------------------------------- validation
def _check_lambdas(rows: Mapping[float, Any], name: str) -> dict[float, Any]:
  if not isinstance(rows, Mapping):
    raise ValueError(f"{name}: expected a mapping λ -> row, got {type(rows).__name__}")
  out: dict[float, Any] = {}
  for lam, value in rows.items():
    try:
      key = float(lam)
    except (TypeError, ValueError):
      raise ValueError(f"{name}: λ={lam!r} is not a number") from None
    if not math.isfinite(key) or key < 0:
      raise ValueError(f"{name}: λ={lam!r} must be finite and >= 0")
    if key in out:
      raise ValueError(f"{name}: λ={lam!r} appears twice")
    out[key] = value
  return out


def _lookup(mapping: Mapping[float, Any], lam: float):
  for key, value in mapping.items():
    if float(key) == lam:
      return value
  raise KeyError(lam)
