"""configs/tldr.py and configs/chat.py run every stage of the protocol with tiny models.

TL;DR: tiny summarize-from-feedback files and a tiny HF Llama (BPE tokenizer) as the base model
SFT fine-tunes. Chat: an SFT/DPO pair of tiny HF checkpoints, prompt/chosen/rejected files, the
chat template, DPO (LoRA) retrained baselines and two training seeds. Both judge with a gold
reward model trained on the half of the pairs the proxy never sees.
"""

import json
import os
import re
import subprocess
import sys

import pytest

tokenizers = pytest.importorskip("tokenizers")

from flax import nnx  # noqa: E402

from dera_jax.data.tokenizer import Tokenizer  # noqa: E402
from dera_jax.models import Transformer, tiny_config  # noqa: E402
from dera_jax.models.hf import save_hf  # noqa: E402
from experiments import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("cat dog bird fish tree house car road rain sun moon star red blue green big small "
         "went saw had ate my our a the to of and I we it is was").split()
STAGE_SIZES = {"model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2,
               "model.num_kv_heads": 1, "model.head_dim": 16, "model.mlp_dim": 64,
               "batch_size": 4, "num_steps": 2, "warmup_steps": 0, "log_every": 1,
               "checkpoint_every": 2, "eval_every": 2, "num_eval_examples": 8,
               "seq_len": 64, "max_prompt_len": 40}


def _sentence(i: int, n: int) -> str:
  return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


def _tokenizer() -> Tokenizer:
  from tokenizers import decoders, models, pre_tokenizers, trainers
  backend = tokenizers.Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>",
                                      "<|im_end|>"],
      show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  corpus = [_sentence(i, 8) for i in range(300)] + ["SUBREDDIT: r/tifu TITLE: POST: TL;DR:"]
  backend.train_from_iterator(corpus, trainer)
  return Tokenizer(backend, bos_id=1, eos_ids=[4, 2], pad_id=0, add_bos=False,
                   chat_template=CHATML)


def _hf_model(path, tokenizer, seed: int) -> str:
  config = tiny_config(vocab_size=tokenizer.vocab_size, d_model=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, head_dim=16, mlp_dim=64, max_seq_len=256)
  save_hf(Transformer(config, rngs=nnx.Rngs(seed)), tokenizer, str(path))
  return str(path)


def _write(path, objects) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(o) + "\n" for o in objects)


def _reproduce(config: str, workdir, settings: dict):
  flags = [f"--config.{k}={v}" for k, v in settings.items()]
  cmd = [sys.executable, "-m", "experiments.reproduce", f"--config={config}",
         f"--workdir={workdir}", *flags]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return result.returncode, result.stdout + result.stderr


def _tiny(stages=("sft", "reward", "policy"), **top) -> dict:
  settings = {f"{s}.{k}": v for s in stages for k, v in STAGE_SIZES.items()}
  settings.update({"reward.num_normalize_samples": 4, "reward.max_new_tokens": 6,
                   "policy.max_new_tokens": 6, "eval.num_prompts": 3,
                   "eval.samples_per_prompt": 2, "eval.sampling_seeds": 2,
                   "eval.max_new_tokens": 6, "eval.score_batch_size": 4, "dtype": "float32",
                   "seq_len": 64, "max_prompt_len": 40, "lambdas": "0,0.5,1,2"})
  settings.update(top)
  return settings


def _check_results(workdir, metric: str, n_runs: int) -> dict:
  cmp = json.loads((workdir / "results" / "comparison.json").read_text())
  dera = {float(k): v for k, v in cmp["dera"].items()}
  retrained = {float(k): v for k, v in cmp["retrained"].items()}
  assert set(dera) == set(retrained) == {0.0, 0.5, 1.0, 2.0}
  for column in ("reward", "gold", "win_rate", "kl", "length", metric):
    assert dera[2.0][column]["n"] == retrained[2.0][column]["n"] == n_runs, column
  # λ = 0 samples the SFT model: the same rows as the SFT model alone, whatever the judge.
  for column in ("gold", "win_rate", "length", metric):
    assert dera[0.0][column]["mean"] == pytest.approx(retrained[0.0][column]["mean"], abs=1e-9)
  table = (workdir / "results" / "comparison.md").read_text()
  assert f"{metric} (DeRa)" in table and "λ chosen on validation" in table
  return cmp


@pytest.fixture(scope="module")
def tokenizer():
  return _tokenizer()


def test_tldr_config_runs_every_stage_from_a_hf_model(tmp_path, tokenizer):
  data = tmp_path / "tldr"

  def post(i, split):
    return {"id": f"{split}{i}", "subreddit": "tifu", "title": _sentence(i, 2),
            "post": _sentence(i + 1, 6), "summary": _sentence(i + 2, 3)}

  def comparison(i, split):
    p = post(i, split)
    return {"info": {k: p[k] for k in ("id", "subreddit", "title", "post")},
            "summaries": [{"text": _sentence(i + 2, 3)}, {"text": _sentence(i + 5, 7)}],
            "choice": i % 2, "split": split}

  for ours, n in (("train", 24), ("valid", 8), ("test", 8)):
    _write(str(data / f"{ours}.jsonl"), [post(i, ours) for i in range(n)])
  _write(str(data / "comparisons" / "batch1.json"),
         [comparison(i, s) for s, n in (("train", 40), ("valid1", 8), ("valid2", 8))
          for i in range(n)])
  base = _hf_model(tmp_path / "base", tokenizer, seed=0)
  workdir = tmp_path / "run"
  code, out = _reproduce("configs/tldr.py", workdir, _tiny(
      **{"task_data": str(data), "sft.init_from": base, "policy.k": 2, "train_seeds": 2}))
  assert code == 0, out[-4000:]
  for stage in ("sft", "reward", "gold_reward", "aligned", "retrained_lam0.5",
                "retrained_lam2", "aligned_seed1", "retrained_lam0.5_seed1",
                "retrained_lam2_seed1"):
    assert (workdir / stage / "stage_config.json").exists(), stage
  assert json.loads((workdir / "sft" / "stage_config.json").read_text())["tokenizer"] == base
  seed1 = json.loads((workdir / "retrained_lam2_seed1" / "stage_config.json").read_text())
  assert (seed1["seed"], seed1["data_seed"], seed1["beta"]) == (1, 0, 0.025)
  _check_results(workdir, "words", n_runs=4)  # 2 training seeds x 2 sampling seeds


def test_chat_config_realigns_an_sft_dpo_pair_with_dpo_baselines(tmp_path, tokenizer):
  data = tmp_path / "prefs"
  for split, n in (("train", 40), ("validation", 8), ("test", 8)):
    _write(str(data / f"{split}.jsonl"),
           [{"prompt": f"{split} {_sentence(i, 4)}", "chosen": _sentence(i + 1, 3),
             "rejected": _sentence(i + 2, 6)} for i in range(n)])
  sft = _hf_model(tmp_path / "sft", tokenizer, seed=0)
  aligned = _hf_model(tmp_path / "dpo", tokenizer, seed=1)
  workdir = tmp_path / "run"
  code, out = _reproduce("configs/chat.py", workdir, _tiny(
      stages=("reward", "policy"), **{"task_data": str(data), "sft_model": sft,
                                      "aligned_model": aligned, "policy.lora_rank": 2,
                                      "reward.lora_rank": 2}))
  assert code == 0, out[-4000:]
  assert re.search(r"== sft: importing .*sft", out) and re.search(r"== aligned: importing", out)
  assert "training (sft)" not in out
  for stage in ("reward", "gold_reward", "retrained_lam0.5", "retrained_lam2"):
    assert (workdir / stage / "model" if "reward" not in stage else
            workdir / stage / "reward_model").is_dir(), stage
  assert "== retrained_lam2: training (dpo)" in out
  assert "reward_margin" in (workdir / "retrained_lam2" / "metrics.jsonl").read_text()
  stage = json.loads((workdir / "retrained_lam2" / "stage_config.json").read_text())
  assert (stage["beta"], stage["lora_rank"], stage["preference_subset"]) == (0.05, 2, "proxy")
  _check_results(workdir, "words", n_runs=2)
  samples = [json.loads(line) for line in
             (workdir / "results" / "samples.jsonl").read_text().splitlines()]
  assert samples and all(s["prompt"].startswith("test ") for s in samples)


def test_proxy_and_gold_reward_models_never_share_a_pair(tmp_path):
  data = tmp_path / "prefs"
  for split in ("train", "validation", "test"):
    _write(str(data / f"{split}.jsonl"),
           [{"prompt": f"prompt {i}", "chosen": "yes", "rejected": "no"} for i in range(50)])
  import ml_collections
  base = dict(task="preference_files", task_data=str(data), seed=0, num_examples=1000,
              label_noise=0.0, data_dir="")
  halves = {subset: {r["prompt"] for r in common.records(ml_collections.ConfigDict(
      dict(base, preference_subset=subset)), "preference", "train")}
      for subset in ("all", "proxy", "gold")}
  assert halves["proxy"] and halves["gold"]
  assert not halves["proxy"] & halves["gold"]
  assert halves["proxy"] | halves["gold"] == halves["all"]


@pytest.mark.parametrize("settings,message", [
    ({"task": "tldr"}, r"config.gold='task': task 'tldr' has no exact judge"),
    ({"task": "tldr", "gold": "reward_model"}, r"config.task_data='': task 'tldr' reads user "
                                               r"files"),
    ({"sft_model": "/no/such/model"}, r"config.sft_model='/no/such/model': .*no such file"),
    ({"policy.algorithm": "sac"}, r"config.policy.algorithm='sac': must be one of"),
    ({"train_seeds": 0}, r"config.train_seeds=0: must be an integer >= 1"),
    ({"gold": "oracle"}, r"config.gold='oracle': must be one of"),
    ({"dtype": "float8"}, r"config.dtype='float8': must be one of"),
    ({"chat_template": True}, r"config.chat_template=True: the tokenizer \(bytes\) has no chat "
                              r"template"),
    ({"overlong": "cut"}, r"config.overlong='cut': must be 'error' or 'truncate'"),
])
def test_bad_protocol_settings_fail_at_start_up(tmp_path, settings, message):
  code, out = _reproduce("configs/quickstart.py", tmp_path / "run", settings)
  assert code != 0 and re.search(message, out), out[-2000:]
  assert not (tmp_path / "run" / "sft").exists()


def test_a_preference_file_with_a_bad_line_is_named(tmp_path):
  data = tmp_path / "prefs"
  for split in ("train", "validation", "test"):
    _write(str(data / f"{split}.jsonl"), [{"prompt": "p", "chosen": "a", "rejected": "b"}])
  with open(data / "validation.jsonl", "a") as f:
    f.write(json.dumps({"prompt": "p", "chosen": 3, "rejected": "b"}) + "\n")
  code, out = _reproduce("configs/chat.py", tmp_path / "run", {"task_data": str(data),
                                                               "chat_template": False})
  assert code != 0
  assert re.search(r"validation.jsonl line 2: field 'chosen' must be a non-empty string", out), \
      out[-2000:]


def test_an_imported_aligned_model_takes_one_training_seed(tmp_path, tokenizer):
  model = _hf_model(tmp_path / "m", tokenizer, seed=0)
  code, out = _reproduce("configs/quickstart.py", tmp_path / "run",
                         {"sft_model": model, "aligned_model": model, "train_seeds": 2})
  assert code != 0 and re.search(r"config.train_seeds=2: must be 1 with an imported "
                                 r"aligned_model", out), out[-2000:]


def test_a_stage_that_failed_before_any_checkpoint_does_not_lock_the_workdir(tmp_path):
  from configs import quickstart
  from experiments import reproduce
  c = quickstart.get_config()
  stale = tmp_path / "sft"
  stale.mkdir()
  (stale / "stage_config.json").write_text(json.dumps({"learning_rate": 123.0}))
  reproduce.validate(c, str(tmp_path))  # a marker alone: the stage will be redone
  (stale / "checkpoints").mkdir()
  with pytest.raises(ValueError, match=r"sft was made under a different config"):
    reproduce.validate(c, str(tmp_path))


def test_a_template_that_writes_bos_does_not_give_two(tokenizer):
  import ml_collections
  from dera_jax.data.tokenizer import Tokenizer as Tok
  tok = Tok(tokenizer.backend, bos_id=1, eos_ids=[4], pad_id=0, add_bos=True,
            chat_template="{{ bos_token }}" + CHATML)
  common._tokenizer.cache_clear()
  c = ml_collections.ConfigDict({"tokenizer": "x", "chat_template": True})
  original = common._tokenizer
  common._tokenizer = lambda spec: tok
  try:
    ids = tok.encode(common.format_prompt(c, "cat dog"))
  finally:
    common._tokenizer = original
  assert ids[0] == 1 and ids[1] != 1 and ids[1] == tok.token_to_id("<|im_start|>")


def test_proxy_and_gold_halves_stay_apart_through_a_tfds_data_dir(tmp_path):
  import ml_collections
  base = dict(task="length", task_data="", seed=0, num_examples=64, label_noise=0.1,
              data_dir=str(tmp_path / "tfds"))
  prompts = {subset: {r["prompt"] for r in common.records(ml_collections.ConfigDict(
      dict(base, preference_subset=subset)), "preference", "train")}
      for subset in ("proxy", "gold")}
  assert prompts["proxy"] and prompts["gold"] and not prompts["proxy"] & prompts["gold"]


def test_a_gold_judge_without_baseline_scores_is_refused():
  from dera_jax.data.tasks.files import FileTask
  from dera_jax.data.tasks.base import Example
  from dera_jax.eval import metrics
  task = FileTask.__new__(FileTask)
  examples = [Example(prompt="p", response="r")] * 2
  with pytest.raises(ValueError, match="baseline_gold"):
    metrics.sample_metrics(task, examples, ["a b", "c"], gold=[1.0, 0.0],
                           baseline_responses=["x", "y"])
  out = metrics.sample_metrics(task, examples, ["a b", "c"], gold=[1.0, 0.0],
                               baseline_responses=["x", "y"], baseline_gold=[0.5, 0.0])
  assert out["win_rate"].tolist() == [1.0, 0.5] and out["words"].tolist() == [2.0, 1.0]
