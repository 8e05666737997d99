"""Smoke test of benchmarks/vs_hf.py: a tiny run end to end (greedy agreement, JSON, table)."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from absl import flags  # noqa: E402

from benchmarks import vs_hf  # noqa: E402


@pytest.mark.slow
def test_tiny_run_agrees_and_writes_json(tmp_path):
  out = tmp_path / "vs_hf.json"
  flags.FLAGS(["vs_hf", "--models=tiny", "--batch_sizes=1,2", "--new_tokens=5", "--repeats=1",
               "--check_batch=3", "--check_rows=2", "--bandwidth_gib=0.05", f"--out={out}"])
  try:
    vs_hf.main([])
  finally:
    flags.FLAGS.unparse_flags()
  report = json.loads(out.read_text())
  (row,) = report["results"]
  assert row["check"]["agree"], row["check"]
  assert set(row["check"]["lambdas"]) == {"0.5", "2.0"}
  assert row["check"]["row_lengths"] == [32, 25, 18]
  for batch, methods in (("1", ("a_stacked", "a_pair", "b_hf_generate", "c_hf_loop")),
                         ("2", ("a_stacked", "a_pair", "c_hf_loop"))):
    for name in methods:
      assert row["batches"][batch][name]["new_tokens_per_s"] > 0
  assert "b_hf_generate" not in row["batches"]["2"]
  assert set(row["targets"]) == {"a_vs_b_batch1", "a_step_vs_floor_batch1"}
  assert len(report["loadavg_start"]) == 3 and len(report["loadavg_end"]) == 3
  assert "| tiny" in report["table"]
