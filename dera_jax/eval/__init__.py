"""Evaluation: per-sample metrics, DeRa-vs-retrained comparison tables, plots.

    from dera_jax.eval import metrics, compare, plots
    row = metrics.evaluate(task, examples, responses, rewards=..., logp_policy=..., ...)
    cmp = compare.compare(dera_rows, retrained_rows, beta=0.1, validation_gold=...)
    compare.write_results(out_dir, cmp); plots.write_plots(out_dir, cmp, task.primary_metric)

`metrics` and `compare` need only NumPy; `plots` needs matplotlib (imported on first use).
The submodule names are not shadowed by functions: `dera_jax.eval.compare` is the module.
"""

from dera_jax.eval import compare, metrics
from dera_jax.eval.compare import Agreement, Comparison, Selection
from dera_jax.eval.metrics import Spread

__all__ = ["Agreement", "Comparison", "Selection", "Spread", "compare", "metrics"]
