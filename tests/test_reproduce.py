"""The DeRa-vs-retrained pipeline at toy scale: every stage runs, the results folder is
complete, DeRa at λ = 0 and λ = 1 reproduces the SFT and aligned models' rows exactly, a second
run reuses every stage, and bad configs fail before any training."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = {"d_model": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
              "head_dim": 16, "mlp_dim": 64}
TINY = [f"--config.{stage}.model.{k}={v}" for stage in ("sft", "reward", "policy")
        for k, v in TINY_MODEL.items()]
TINY += ["--config.sft.num_steps=6", "--config.sft.warmup_steps=1", "--config.reward.num_steps=4",
         "--config.policy.num_steps=2", "--config.policy.batch_size=4", "--config.policy.k=2",
         "--config.policy.max_new_tokens=8", "--config.reward.num_normalize_samples=8",
         "--config.reward.max_new_tokens=8", "--config.eval.num_prompts=3",
         "--config.eval.samples_per_prompt=2", "--config.eval.sampling_seeds=2",
         "--config.eval.max_new_tokens=12", "--config.lambdas=0,0.5,1,2,3", "--config.beta=0.1",
         "--config.train_seeds=1"]


def _reproduce(workdir, *extra, config="configs/quickstart.py"):
  cmd = [sys.executable, "-m", "experiments.reproduce", f"--config={config}",
         f"--workdir={workdir}", *TINY, *extra]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("quick")
  code, out = _reproduce(workdir)
  assert code == 0, out[-4000:]
  return workdir, out


def test_every_stage_and_result_file_is_written(run):
  workdir, out = run
  for stage in ("sft/model", "reward/reward_model", "aligned/model", "retrained_lam0.5/model",
                "retrained_lam2/model", "retrained_lam3/model"):
    assert (workdir / stage).is_dir(), stage
  results = workdir / "results"
  for name in ("comparison.md", "comparison.csv", "agreement.csv", "comparison.json",
               "samples.jsonl", "summary.json", "reward_vs_lambda.png", "gold_vs_lambda.png",
               "reward_vs_kl.png", "num_items_vs_lambda.png"):
    assert (results / name).stat().st_size > 0, name
  assert (results / "reward_vs_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (results / "comparison.md").read_text()
  assert "λ chosen on validation" in table and "Spearman" in table


def test_dera_at_zero_and_one_reproduces_the_sft_and_aligned_rows(run):
  workdir, _ = run
  cmp = json.loads((workdir / "results" / "comparison.json").read_text())
  dera = {float(k): v for k, v in cmp["dera"].items()}
  retrained = {float(k): v for k, v in cmp["retrained"].items()}
  for lam in (0.0, 1.0):
    for column in ("gold", "length", "win_rate", "num_items"):
      assert dera[lam][column]["mean"] == pytest.approx(retrained[lam][column]["mean"],
                                                        abs=1e-9), (lam, column)
  assert dera[0.0]["kl"]["mean"] == pytest.approx(0.0, abs=1e-6)
  assert set(dera) == set(retrained) == {0.0, 0.5, 1.0, 2.0, 3.0}


def test_a_second_run_reuses_every_stage(run):
  workdir, first = run
  code, out = _reproduce(workdir)
  assert code == 0, out[-3000:]
  assert len(re.findall(r"== \S+: reusing", out)) == 6 and "training" not in out


@pytest.mark.parametrize("extra,message", [
    (["--config.task=chess"], r"config.task='chess': must be one of"),
    (["--config.lambdas=0,1,1,2"], r"config.lambdas=.*distinct"),
    (["--config.lambdas=0,0.5,1"], r"needs values below and above 1"),
    (["--config.lambdas=0,nan,2"], r"finite"),
    (["--config.sft.num_steps=0"], r"config.sft.num_steps=0: must be >= 1"),
    (["--config.no_such_field=1"], r"no_such_field"),
])
def test_bad_configs_fail_before_any_training(tmp_path, extra, message):
  code, out = _reproduce(tmp_path, *extra)
  assert code != 0 and re.search(message, out), out[-2000:]
  assert not any((tmp_path / d).exists() for d in ("sft", "reward", "aligned"))


def test_a_workdir_of_another_config_is_refused_at_start_up(run, tmp_path):
  workdir, _ = run
  code, out = _reproduce(workdir, "--config.sft.learning_rate=0.01")
  assert code != 0
  assert re.search(r"sft was made under a different config: learning_rate: checkpoint has "
                   r"0.003, now 0.01", out), out[-2000:]


@pytest.mark.slow  # ~40 s; the default suite runs the same pipeline on the length task
def test_the_hallucination_config_runs_every_stage_with_a_tiny_model(tmp_path):
  code, out = _reproduce(tmp_path, config="configs/hallucination.py")
  assert code == 0, out[-4000:]
  table = (tmp_path / "results" / "comparison.md").read_text()
  assert "hallucination_rate (DeRa)" in table and "hallucination_rate (retrained)" in table
  assert (tmp_path / "results" / "hallucination_rate_vs_lambda.png").stat().st_size > 0
