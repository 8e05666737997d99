"""experiments/realign.py (the DeRa command line) and dera_jax.models.loading.load_any.

Tiny random Llama models saved as HF directories / orbax checkpoints with a tiny byte-level BPE
tokenizer; the app runs in-process (`run`) and, for the flag and config handling, as a
subprocess.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from flax import nnx  # noqa: E402

from dera_jax.data.tokenizer import Tokenizer  # noqa: E402
from dera_jax.models import Transformer, tiny_config  # noqa: E402
from dera_jax.models.checkpoint import save_checkpoint  # noqa: E402
from dera_jax.models.hf import load_hf, save_hf  # noqa: E402
from dera_jax.models.loading import checkpoint_format, load_any  # noqa: E402
from dera_jax.sampling import Sampler  # noqa: E402
from experiments import realign  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
PROMPTS = ["the quick brown fox", "hello world", "a data model", "chat user", "jumps over"]
LAMBDAS = [0.0, 0.5, 1.0, 2.0]
NEW = 6


def _tokenizer(words: str, template: str | None = CHATML) -> Tokenizer:
  from tokenizers import decoders, models, pre_tokenizers, trainers
  backend = tokenizers.Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  words = words.split()
  backend.train_from_iterator(
      [" ".join(words[(i * 7 + j) % len(words)] for j in range(5)) for i in range(200)], trainer)
  # eos ids: <|im_end|> (end of turn) and <|eos|>
  return Tokenizer(backend, bos_id=1, eos_ids=[4, 2], pad_id=0, add_bos=True,
                   chat_template=template)


def _model(vocab: int, seed: int) -> Transformer:
  cfg = tiny_config(vocab_size=vocab, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1,
                    head_dim=16, mlp_dim=48, max_seq_len=128, init_std=0.3)
  return Transformer(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("realign")
  tok = _tokenizer("the quick brown fox jumps over the lazy dog hello world data model token "
                   "chat user assistant system")
  v = tok.vocab_size
  sft, aligned = _model(v, 0), _model(v, 1)
  save_hf(sft, tok, str(d / "sft"))
  save_hf(aligned, tok, str(d / "aligned"))
  # A checkpoint of the HF-loaded model: the same config, so the same compiled functions.
  save_checkpoint(load_hf(str(d / "aligned"))[0], str(d / "aligned_ckpt"))
  save_hf(_model(v + 8, 1), tok, str(d / "aligned_padded"))  # 8 padding rows
  save_hf(aligned, _tokenizer("completely other words make another vocabulary here"),
          str(d / "aligned_other_vocab"))
  plain = d / "plain_tokenizer"
  plain.mkdir()
  _tokenizer("the quick brown fox jumps over the lazy dog hello world data model token "
             "chat user assistant system", template=None).save_pretrained(str(plain))
  (d / "prompts.txt").write_text("\n".join(PROMPTS[:3]) + "\n\n  \n" + "\n".join(PROMPTS[3:])
                                 + "\n")
  (d / "chat.jsonl").write_text(
      json.dumps({"prompt": "hello world"}) + "\n\n" +
      json.dumps({"messages": [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "the lazy dog"}]}) + "\n")
  (d / "empty.txt").write_text("\n  \n")
  return d


def _settings(files, out, **overrides):
  s = dict(realign.DEFAULTS)
  s.update(sft=str(files / "sft"), aligned=str(files / "aligned"),
           prompts=str(files / "prompts.txt"), out=str(out), lambdas="0,0.5,1,2",
           max_new_tokens=NEW, batch_size=2, seed=3, temperature=1.0)
  s.update(overrides)
  return s


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_load_any_dispatches_on_the_format(files):
  assert checkpoint_format(files / "sft") == "hf"
  assert checkpoint_format(files / "aligned_ckpt") == "checkpoint"
  model, tok = load_any(files / "aligned_ckpt", dtype="bfloat16")
  assert tok is None and model.config.dtype == "bfloat16"
  reference, _ = load_any(files / "aligned_ckpt")
  hf_model, hf_tok = load_any(files / "aligned")
  assert hf_tok is not None and hf_tok.eos_ids == (4, 2)
  np.testing.assert_allclose(np.asarray(reference.embed[...]), np.asarray(hf_model.embed[...]))
  np.testing.assert_allclose(np.asarray(model.embed[...], np.float32),
                             np.asarray(reference.embed[...]), rtol=1e-2, atol=1e-2)
  with pytest.raises(ValueError, match="not a .gguf"):
    checkpoint_format(files / "prompts.txt")
  with pytest.raises(ValueError, match="no such file"):
    checkpoint_format(files / "missing")
  with pytest.raises(ValueError, match="not a checkpoint directory"):
    checkpoint_format(files / "plain_tokenizer")


@pytest.fixture(scope="module")
def sweep(files, tmp_path_factory):
  """The reference run: HF pair, prompts.txt, λ = 0, 0.5, 1, 2, batches of 2."""
  out = tmp_path_factory.mktemp("sweep") / "samples.jsonl"
  summary = realign.run(_settings(files, out))
  return out, summary, _read(out)


def test_sweep_lines_summary_and_lambda0_is_the_sft_model_alone(files, sweep):
  out, summary, records = sweep
  assert len(records) == len(PROMPTS) * len(LAMBDAS)
  keys = {"prompt_index", "prompt", "lambda", "text", "token_ids", "length", "stopped",
          "logp_policy", "logp_sft", "logp_aligned", "kl_sample"}
  assert all(keys <= set(r) for r in records)
  assert [(r["prompt_index"], r["lambda"]) for r in records] == \
      [(i, lam) for i in range(len(PROMPTS)) for lam in LAMBDAS]
  assert [r["prompt"] for r in records[::len(LAMBDAS)]] == PROMPTS
  for r in records:
    assert r["length"] == len(r["token_ids"]) <= NEW
    assert r["stopped"] == (r["length"] > 0 and r["token_ids"][-1] in (2, 4))
    assert r["kl_sample"] == pytest.approx(r["logp_policy"] - r["logp_sft"])

  # λ = 0: what the SFT model samples alone (same seed, row ids, prompt ids, stop ids).
  model, tok = load_hf(str(files / "sft"))
  ids = realign.encode_prompts(tok, [realign.Prompt(p) for p in PROMPTS], "auto")
  assert ids[0][:1] == [3]  # <|im_start|>: the chat template was applied
  alone = Sampler(model, max_prompt_len=max(map(len, ids)), max_new_tokens=NEW, stop_ids=[2, 4],
                  pad_id=0)(ids, seed=3, temperature=1.0, row_ids=np.arange(len(PROMPTS)))
  lam0 = [r for r in records if r["lambda"] == 0]
  assert [r["token_ids"] for r in lam0] == alone.token_lists()
  assert [r["text"] for r in lam0] == [
      tok.decode(t[:-1] if r["stopped"] else t) for r, t in zip(lam0, alone.token_lists())]
  np.testing.assert_allclose([r["logp_sft"] for r in lam0], alone.sequence_logprobs(),
                             rtol=1e-5, atol=1e-4)

  rows = {r["lambda"]: r for r in summary["rows"]}
  assert abs(rows[0.0]["kl_to_sft"]) < 1e-4
  assert rows[2.0]["kl_to_sft"] > 0.1  # the aligned model is a different random model
  assert rows[1.0]["mean_length"] == pytest.approx(
      np.mean([r["length"] for r in records if r["lambda"] == 1]))
  with open(str(out) + ".summary.json") as f:
    assert json.load(f)["rows"] == json.loads(json.dumps(summary["rows"]))
  assert sorted(os.listdir(out.parent)) == ["samples.jsonl", "samples.jsonl.summary.json"]


def _exact(records):
  return [{k: v for k, v in r.items() if not k.startswith(("logp", "kl"))} for r in records]


def test_checkpoints_use_the_other_models_or_the_given_tokenizer(files, sweep, tmp_path):
  _, _, records = sweep
  out = tmp_path / "a.jsonl"
  realign.run(_settings(files, out, aligned=str(files / "aligned_ckpt")))
  assert _exact(_read(out)) == _exact(records)  # the same weights, the same samples
  # Two checkpoints: the tokenizer comes from --tokenizer (loading only: no second compile).
  sft, aligned, tok, stop_ids = realign.load_models(_settings(
      files, out, sft=str(files / "aligned_ckpt"), aligned=str(files / "aligned_ckpt"),
      tokenizer=str(files / "sft")))
  assert tok.chat_template == CHATML and stop_ids == [2, 4]
  assert sft is aligned  # one path: loaded once


def test_shared_vocab_prefix(files, tmp_path):
  padded = _settings(files, tmp_path / "p.jsonl", aligned=str(files / "aligned_padded"))
  with pytest.raises(ValueError, match="--shared_vocab_prefix"):
    realign.run(padded)
  assert not os.path.exists(tmp_path / "p.jsonl")
  realign.run({**padded, "shared_vocab_prefix": True})
  assert len(_read(tmp_path / "p.jsonl")) == len(LAMBDAS) * len(PROMPTS)


@pytest.mark.parametrize("overrides, message", [
    ({"sft": "MISSING"}, r"--sft=.*MISSING: .*no such file"),
    ({"aligned": ""}, "--aligned is required"),
    ({"aligned": "PROMPTS_TXT"}, r"--aligned=.*prompts.txt: a file, but not a .gguf"),
    ({"tokenizer": "MISSING"}, r"--tokenizer=.*MISSING: no such file"),
    ({"lambdas": "0,nan"}, r"--lambdas='0,nan': 'nan' is not finite"),
    ({"lambdas": "0,inf"}, "not finite"),
    ({"lambdas": "0,1,1.0"}, "λ=1 appears twice"),
    ({"lambdas": "0,x"}, "'x' is not a number"),
    ({"lambdas": ""}, "at least one λ"),
    ({"prompts": "EMPTY"}, r"--prompts=.*empty.txt: the file has no prompts"),
    ({"prompts": "MISSING"}, r"--prompts=.*MISSING: no such file"),
    ({"prompts": "SFT_CONFIG"}, "unknown extension '.json'"),
    ({"out": ""}, "--out is required"),
    ({"out": "DIR"}, "is a directory"),
    ({"temperature": -1.0}, r"--temperature=-1.0: must be"),
    ({"top_p": 0.0}, "--top_p=0.0"),
    ({"top_k": -2}, "--top_k=-2"),
    ({"batch_size": 0}, "--batch_size=0"),
    ({"max_new_tokens": 0}, "--max_new_tokens=0"),
    ({"dtype": "float8"}, "--dtype='float8': must be one of"),
    ({"chat_template": "yes"}, "--chat_template='yes'"),
    ({"sft": "ALIGNED_CKPT", "aligned": "ALIGNED_CKPT"}, "pass --tokenizer=PATH"),
])
def test_bad_input_is_named_before_loading(files, tmp_path, monkeypatch, overrides, message):
  names = {"MISSING": str(tmp_path / "MISSING"), "EMPTY": str(files / "empty.txt"),
           "PROMPTS_TXT": str(files / "prompts.txt"), "DIR": str(tmp_path),
           "SFT_CONFIG": str(files / "sft" / "config.json"),
           "ALIGNED_CKPT": str(files / "aligned_ckpt")}
  overrides = {k: names.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}

  def no_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the input was checked")

  monkeypatch.setattr(realign, "load_models", no_loading)
  with pytest.raises(ValueError, match=message):
    realign.run({**_settings(files, tmp_path / "o.jsonl"), **overrides})
  assert not os.path.exists(tmp_path / "o.jsonl")


def test_bad_pairs_and_templates(files, tmp_path):
  out = tmp_path / "o.jsonl"
  with pytest.raises(ValueError, match=r"tokenizers of --sft=.* and --aligned=.* disagree"):
    realign.run(_settings(files, out, aligned=str(files / "aligned_other_vocab")))
  plain = str(files / "plain_tokenizer")
  with pytest.raises(ValueError, match="--chat_template=on, but the tokenizer has no chat"):
    realign.run(_settings(files, out, tokenizer=plain, chat_template="on"))
  with pytest.raises(ValueError, match="prompt 1 is a \"messages\" list"):
    realign.run(_settings(files, out, chat_template="off", prompts=str(files / "chat.jsonl")))
  with pytest.raises(ValueError, match=r"longest prompt .*--max_new_tokens=200: .*max_seq_len"):
    realign.run(_settings(files, out, max_new_tokens=200))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
  with pytest.raises(ValueError, match=r"--prompts=.*bad.jsonl: line 2 must be an object"):
    realign.run(_settings(files, out, prompts=str(bad)))
  assert not os.path.exists(out)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_run_leaves_nothing(files, tmp_path, monkeypatch, error):
  out = tmp_path / "o.jsonl"
  calls = []
  from dera_jax.sampling import sampler as sampler_module
  original = sampler_module.DeRaSampler.sweep

  def flaky(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise error("boom")
    return original(self, *args, **kwargs)

  monkeypatch.setattr(sampler_module.DeRaSampler, "sweep", flaky)
  with pytest.raises(error):
    realign.run(_settings(files, out))
  assert len(calls) == 2
  assert os.listdir(tmp_path) == []


def test_config_fields_and_flags_agree_and_precedence():
  import importlib
  config = importlib.import_module("configs.realign").get_config()
  assert sorted(config.keys()) == sorted(realign.DEFAULTS)
  values = dict(realign.DEFAULTS, seed=7, lambdas="0,9")
  present = {name: name == "seed" for name in realign.DEFAULTS}
  config.seed, config.lambdas, config.top_k = 5, "0,1", 3
  s = realign.resolve_settings(config, values, present)
  assert (s["seed"], s["lambdas"], s["top_k"]) == (7, "0,1", 3)  # plain flag > config field
  assert realign.resolve_settings(None, values, present)["lambdas"] == "0,9"
  with pytest.raises(ValueError, match=r"--config: unknown field\(s\) \['lamdas'\]"):
    realign.resolve_settings({"lamdas": "0"}, values, present)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.realign", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_command_line_with_config_file(files, sweep, tmp_path):
  _, _, records = sweep
  out = tmp_path / "cli.jsonl"
  # Config fields, --config.* overrides and a plain flag that wins over a field; batches of 5.
  result = _cli("--config=configs/realign.py", f"--config.sft={files / 'sft'}",
                f"--config.aligned={files / 'aligned'}", f"--config.prompts={files / 'prompts.txt'}",
                f"--config.out={out}", "--config.lambdas=0,1", f"--config.max_new_tokens={NEW}",
                "--lambdas=0,0.5,1,2", "--seed=3", "--config.seed=1", "--config.batch_size=5")
  assert result.returncode == 0, result.stderr
  assert "| λ |" in result.stdout and "batch 1/1" in result.stderr
  summary = json.loads((tmp_path / "cli.jsonl.summary.json").read_text())
  assert summary["lambdas"] == LAMBDAS and summary["settings"]["seed"] == 3
  assert summary["settings"]["batch_size"] == 5
  # A prompt's samples depend on its row id only, not on the batch it ran in.
  cli = _read(out)
  assert _exact(cli) == _exact(records)
  np.testing.assert_allclose([r["logp_policy"] for r in cli],
                             [r["logp_policy"] for r in records], rtol=1e-5, atol=1e-4)

  result = _cli("--config=configs/realign.py", "--config.lamdas=0,1")
  assert result.returncode != 0 and "lamdas" in result.stderr



def test_flags_in_process(files, tmp_path, capsys):
  from absl import flags
  assert "shared_vocab_prefix" not in flags.FLAGS  # importing the app defines no flags
  fv = flags.FlagValues()
  holder = realign.define_flags(fv)
  fv(["realign", f"--sft={tmp_path / 'nope'}", f"--aligned={files / 'aligned'}",
      f"--prompts={files / 'prompts.txt'}", f"--out={tmp_path / 'x.jsonl'}"])
  with pytest.raises(SystemExit) as exit_info:
    realign.main(["realign"], config_holder=holder, flag_values=fv)
  assert exit_info.value.code == 2
  assert f"realign: error: --sft={tmp_path / 'nope'}: " in capsys.readouterr().err
  assert os.listdir(tmp_path) == []


def test_chat_jsonl_prompts(files, tmp_path):
  out = tmp_path / "chat.jsonl"
  summary = realign.run(_settings(files, out, prompts=str(files / "chat.jsonl"), lambdas="1,0",
                                  max_new_tokens=2))
  records = _read(out)
  assert [(r["prompt_index"], r["lambda"]) for r in records] == [(0, 1), (0, 0), (1, 1), (1, 0)]
  assert records[2]["prompt"] == "the lazy dog" and records[2]["messages"][0]["role"] == "system"
  assert [r["lambda"] for r in summary["rows"]] == [1.0, 0.0]
