"""The training apps end to end at toy scale: SFT -> reward model -> DPO and RL (RLOO, PPO),
each writing the model the next stage loads; and their start-up errors."""

import os
import subprocess
import sys

import pytest

from dera_jax.models.checkpoint import load_checkpoint
from dera_jax.models.heads import load_scalar_head_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.d_model=32", "--config.model.num_layers=1", "--config.model.num_heads=2",
        "--config.model.num_kv_heads=1", "--config.model.head_dim=16", "--config.model.mlp_dim=64",
        "--config.num_examples=64", "--config.num_eval_examples=16", "--config.batch_size=8",
        "--config.log_every=2", "--config.checkpoint_every=4", "--config.eval_every=4",
        "--config.num_steps=4", "--config.warmup_steps=1"]


def _run(app, workdir, *extra):
  cmd = [sys.executable, "-m", f"experiments.{app}", f"--workdir={workdir}", *TINY, *extra]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def sft_and_reward(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  code, out = _run("train_sft", root / "sft")
  assert code == 0, out[-3000:]
  code, out = _run("train_reward", root / "rm", f"--config.init_from={root / 'sft' / 'model'}",
                   "--config.num_normalize_samples=16", "--config.max_new_tokens=8")
  assert code == 0, out[-3000:]
  return root


def test_sft_and_reward_write_the_models_the_next_stages_load(sft_and_reward):
  sft = load_checkpoint(sft_and_reward / "sft" / "model")
  rm = load_scalar_head_model(sft_and_reward / "rm" / "reward_model")
  assert rm.config == sft.config
  assert float(rm.scale[...]) > 0  # normalised on SFT samples


@pytest.mark.parametrize("app,extra", [
    ("train_dpo", []),
    ("train_policy", ["--config.k=2", "--config.max_new_tokens=8"]),
    ("train_policy", ["--config.algorithm=ppo", "--config.max_new_tokens=8"]),
    ("train_policy", ["--config.k=2", "--config.max_new_tokens=8", "--config.lora_rank=2"]),
])
def test_alignment_apps_train_and_export_a_policy(sft_and_reward, tmp_path, app, extra):
  sft_model = sft_and_reward / "sft" / "model"
  args = [f"--config.init_from={sft_model}", *extra]
  if app == "train_policy":
    args.append(f"--config.reward_model={sft_and_reward / 'rm' / 'reward_model'}")
  code, out = _run(app, tmp_path, *args)
  assert code == 0, out[-3000:]
  policy = load_checkpoint(tmp_path / "model")
  assert policy.config == load_checkpoint(sft_model).config
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= 2


def test_sft_on_a_built_in_task_read_back_through_tfds(tmp_path):
  code, out = _run("train_sft", tmp_path / "run", "--config.task=hallucination",
                   "--config.seq_len=128", "--config.max_prompt_len=96",
                   f"--config.data_dir={tmp_path / 'tfds'}")
  assert code == 0, out[-3000:]
  written = sorted(os.listdir(tmp_path / "tfds"))
  assert {"dera_hallucination_sft_seed0_n64", "dera_hallucination_sft_seed10000_n16"} <= set(written)
  assert load_checkpoint(tmp_path / "run" / "model").config.vocab_size == 259


@pytest.mark.parametrize("app,extra,message", [
    ("train_sft", ["--config.task=chess"], r"config.task='chess': must be one of"),
    ("train_sft", ["--config.batch_size=100"], r"config.batch_size=100: is larger than the "
                                               r"dataset \(64 records\)"),
    ("train_dpo", ["--config.beta=0.0", "--config.init_from=x"], r"config.beta=0.0: must be a "
                                                                 r"finite number > 0"),
    ("train_policy", ["--config.k=1", "--config.init_from=x", "--config.reward_model=y"],
     r"config.k=1: RLOO needs k >= 2"),
    ("train_sft", ["--config.no_such_field=1"], r"no_such_field"),
])
def test_bad_configs_fail_at_start_up_naming_the_field(tmp_path, app, extra, message):
  import re
  code, out = _run(app, tmp_path, *extra)
  assert code != 0 and re.search(message, out), out[-2000:]
  assert not (tmp_path / "checkpoints").exists()
