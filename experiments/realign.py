"""DeRa from the command line: sample prompts at a grid of λ from an (SFT, aligned) pair.

    python -m experiments.realign --sft=PATH --aligned=PATH --prompts=FILE \
        --lambdas=0,0.5,1,2 --out=samples.jsonl
    python -m experiments.realign --config=configs/realign.py --config.sft=PATH ...

PATH: a HF directory, a .gguf file or a `save_checkpoint` directory (which has no tokenizer:
the other model's or --tokenizer=PATH is used). FILE: .txt (one prompt per line, blank lines
skipped) or .jsonl (objects with "prompt": str or "messages": [{"role", "content"}, ...]).
With --chat_template=auto (the default) prompts go through the tokenizer's chat template when
it has one.

Every prompt is prefilled once and decoded at every λ (`DeRaSampler.sweep`); row i of the
prompt file always uses row id i, so its samples do not depend on --batch_size, and at λ = 0
they are exactly what the SFT model alone samples with the same seed.

Output: OUT has one JSON line per (prompt, λ): prompt_index, prompt, lambda, text, token_ids,
length, stopped, logp_policy, logp_sft, logp_aligned (summed over the new tokens, at the
sampling temperature, before top-k / top-p) and kl_sample = logp_policy − logp_sft, whose mean
over prompts estimates KL(p_λ ‖ π_sft). OUT.summary.json holds the per-λ means, also printed as
a table. Both files are written to temporary files and renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Sequence

from absl import app, flags
from ml_collections import config_flags

from configs import realign as default_config

DEFAULTS: dict[str, Any] = default_config.get_config().to_dict()
CHAT_TEMPLATE_MODES = ("auto", "on", "off")
DTYPES = ("float32", "bfloat16", "float16")

_HELP = {
    "sft": "The SFT model: HF directory, .gguf file or save_checkpoint directory.",
    "aligned": "The aligned model (same kinds of path as --sft).",
    "tokenizer": "Tokenizer directory or .gguf file; default: the models' own tokenizer(s).",
    "shared_vocab_prefix": "Allow model vocab sizes that differ only by padding rows.",
    "dtype": "Compute and parameter dtype: float32, bfloat16 or float16.",
    "prompts": "Prompt file: .txt (one per line) or .jsonl ({'prompt'} or {'messages'}).",
    "chat_template": "auto: use the tokenizer's chat template if it has one; on; off.",
    "out": "Output JSONL (one line per prompt and λ); the summary goes to OUT.summary.json.",
    "lambdas": "Comma-separated λ grid, e.g. 0,0.5,1,2 (0 = SFT, 1 = aligned).",
    "temperature": "Sampling temperature (0 = greedy).",
    "top_k": "Top-k filter (0 = off).",
    "top_p": "Top-p (nucleus) filter (1 = off).",
    "seed": "Sampling seed.",
    "max_new_tokens": "New tokens per sample.",
    "batch_size": "Prompts per sampler call (each sampled at every λ).",
}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Define the plain flags and --config on `flag_values`; returns the --config holder.

  Called when the module runs as a program, not on import, so that importing it (tests,
  other apps) defines no global flags.
  """
  for name, default in DEFAULTS.items():
    definer = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
               float: flags.DEFINE_float}.get(type(default), flags.DEFINE_string)
    definer(name, default, _HELP.get(name, name), flag_values=flag_values)
  return config_flags.DEFINE_config_file(
      "config", None, "An ml_collections get_config() file (configs/realign.py); its fields "
      "are the plain flags' names; --config.field=value overrides a field.",
      flag_values=flag_values)


# ----------------------------------------------------------------------------- settings


def resolve_settings(config, values: dict[str, Any], present: dict[str, bool]) -> dict:
  """The run's settings: flag defaults < config fields < plain flags given on the command line.

  Args:
    config: the --config ConfigDict (or a dict), or None.
    values: every plain flag's value; present: whether it was given on the command line.
  Raises:
    ValueError naming unknown config fields.
  """
  settings = {name: values[name] for name in DEFAULTS}
  if config is None:
    return settings
  fields = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = sorted(set(fields) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"--config: unknown field(s) {unknown}; known fields: {sorted(DEFAULTS)}")
  for name, value in fields.items():
    if not present.get(name, False):
      settings[name] = value
  return settings


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One prompt of the prompt file: plain text, or chat messages."""
  text: str  # the plain prompt, or the content of the last message
  messages: tuple | None = None


def parse_lambdas(value) -> list[float]:
  """"0,0.5,1,2" (or a list of numbers) -> [0.0, 0.5, 1.0, 2.0]; finite, distinct, non-empty."""
  if isinstance(value, str):
    parts = [p.strip() for p in value.split(",")]
  elif isinstance(value, (list, tuple)):
    parts = list(value)
  else:
    raise ValueError(f"--lambdas={value!r}: expected a comma-separated list such as 0,0.5,1,2")
  if not parts or parts == [""]:
    raise ValueError(f"--lambdas={value!r}: give at least one λ, e.g. --lambdas=0,0.5,1,2")
  out = []
  for part in parts:
    try:
      if isinstance(part, bool):
        raise TypeError
      lam = float(part)
    except (TypeError, ValueError):
      raise ValueError(f"--lambdas={value!r}: {part!r} is not a number") from None
    if not math.isfinite(lam):
      raise ValueError(f"--lambdas={value!r}: {part!r} is not finite (any finite λ is allowed)")
    if lam in out:
      raise ValueError(f"--lambdas={value!r}: λ={lam:g} appears twice")
    out.append(lam)
  return out


def read_prompts(path: str) -> list[Prompt]:
  """Prompts of a .txt or .jsonl file (see the module docstring)."""
  where = f"--prompts={path}"
  if not path:
    raise ValueError("--prompts is required: a .txt or .jsonl prompt file")
  if not os.path.isfile(path):
    raise ValueError(f"{where}: no such file")
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".txt", ".jsonl"):
    raise ValueError(f"{where}: unknown extension {ext!r}; expected .txt (one prompt per line) "
                     "or .jsonl")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  prompts = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    if ext == ".txt":
      prompts.append(Prompt(text=line))
      continue
    try:
      item = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: line {n} is not valid JSON ({e.msg})") from None
    if not isinstance(item, dict) or ("prompt" in item) == ("messages" in item):
      raise ValueError(f"{where}: line {n} must be an object with either \"prompt\": str or "
                       "\"messages\": [{\"role\": ..., \"content\": ...}, ...]")
    if "prompt" in item:
      if not isinstance(item["prompt"], str) or not item["prompt"].strip():
        raise ValueError(f"{where}: line {n}: \"prompt\" must be a non-empty string")
      prompts.append(Prompt(text=item["prompt"]))
      continue
    messages = item["messages"]
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and
        isinstance(m.get("content"), str) for m in messages)
    if not ok:
      raise ValueError(f"{where}: line {n}: \"messages\" must be a non-empty list of "
                       "{\"role\": str, \"content\": str} objects")
    messages = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    prompts.append(Prompt(text=messages[-1]["content"], messages=messages))
  if not prompts:
    raise ValueError(f"{where}: the file has no prompts")
  return prompts


def _model_path(flag: str, path: str) -> str:
  from dera_jax.models.loading import checkpoint_format
  if not path:
    raise ValueError(f"--{flag} is required: a HF directory, a .gguf file or a "
                     "save_checkpoint directory")
  try:
    return checkpoint_format(path)
  except ValueError as e:
    message = str(e).removeprefix(f"{path}: ")
    raise ValueError(f"--{flag}={path}: {message}") from None


def validate(s: dict) -> dict:
  """Check everything that can be checked before a model is loaded; returns parsed values."""
  formats = {flag: _model_path(flag, s[flag]) for flag in ("sft", "aligned")}
  if s["tokenizer"] and not os.path.exists(s["tokenizer"]):
    raise ValueError(f"--tokenizer={s['tokenizer']}: no such file or directory")
  if not s["tokenizer"] and formats["sft"] == formats["aligned"] == "checkpoint":
    from dera_jax.models.loading import has_tokenizer
    if not any(has_tokenizer(s[f]) for f in ("sft", "aligned")):
      raise ValueError(f"--sft={s['sft']} and --aligned={s['aligned']} are save_checkpoint "
                       "directories without a tokenizer: pass --tokenizer=PATH (a tokenizer "
                       "directory or .gguf file)")
  lambdas = parse_lambdas(s["lambdas"])
  prompts = read_prompts(s["prompts"])
  if not s["out"]:
    raise ValueError("--out is required: the output JSONL file")
  if os.path.isdir(s["out"]):
    raise ValueError(f"--out={s['out']}: is a directory; give a file name such as "
                     f"{os.path.join(s['out'], 'samples.jsonl')}")
  checks = [
      ("chat_template", s["chat_template"] in CHAT_TEMPLATE_MODES,
       f"one of {list(CHAT_TEMPLATE_MODES)}"),
      ("dtype", s["dtype"] in DTYPES, f"one of {list(DTYPES)}"),
      ("temperature", _is_num(s["temperature"]) and math.isfinite(s["temperature"])
       and s["temperature"] >= 0, "a finite number >= 0 (0 = greedy)"),
      ("top_k", _is_int(s["top_k"]) and s["top_k"] >= 0, "an integer >= 0 (0 = off)"),
      ("top_p", _is_num(s["top_p"]) and 0 < s["top_p"] <= 1, "in (0, 1] (1 = off)"),
      ("seed", _is_int(s["seed"]) and 0 <= s["seed"] < 2**32, "an integer in [0, 2**32)"),
      ("max_new_tokens", _is_int(s["max_new_tokens"]) and s["max_new_tokens"] >= 1,
       "an integer >= 1"),
      ("batch_size", _is_int(s["batch_size"]) and s["batch_size"] >= 1, "an integer >= 1"),
      ("shared_vocab_prefix", isinstance(s["shared_vocab_prefix"], bool), "true or false"),
  ]
  for name, ok, expected in checks:
    if not ok:
      raise ValueError(f"--{name}={s[name]!r}: must be {expected}")
  return {"lambdas": lambdas, "prompts": prompts, "formats": formats}


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


# ----------------------------------------------------------------------------- models


def _first_differences(a, b, n: int, limit: int = 3) -> list[str]:
  out = []
  for i in range(n):
    ta, tb = a.id_to_token(i), b.id_to_token(i)
    if ta != tb:
      out.append(f"id {i}: {ta!r} vs {tb!r}")
      if len(out) == limit:
        break
  return out


def check_tokenizers(named: Sequence[tuple[str, Any]]) -> None:
  """Every pair of tokenizers must map each shared id to the same token."""
  for i in range(len(named)):
    for j in range(i + 1, len(named)):
      (name_a, a), (name_b, b) = named[i], named[j]
      if a is b:
        continue
      shared = min(a.vocab_size, b.vocab_size)
      diffs = _first_differences(a, b, shared)
      if diffs:
        raise ValueError(f"the tokenizers of {name_a} and {name_b} disagree on the shared id "
                         f"range 0..{shared - 1} (" + "; ".join(diffs) + "): DeRa mixes logits "
                         "id by id, so both models need one vocabulary")


def check_model_vocabs(sft, aligned, s: dict) -> None:
  va, vb = int(sft.vocab_size), int(aligned.vocab_size)
  if va != vb and not s["shared_vocab_prefix"]:
    raise ValueError(f"the models' vocab sizes differ: --sft={s['sft']} has {va} rows, "
                     f"--aligned={s['aligned']} has {vb}. If they share one tokenizer and differ "
                     "only by padding rows, pass --shared_vocab_prefix to mix over the first "
                     f"{min(va, vb)} ids")


def load_models(s: dict):
  """(sft, aligned, tokenizer, stop_ids) with the tokenizers checked against each other."""
  from dera_jax.models.loading import load_any, load_tokenizer

  sft, sft_tok = load_any(s["sft"], dtype=s["dtype"])
  if os.path.realpath(s["aligned"]) == os.path.realpath(s["sft"]):  # a pair with itself
    aligned, aligned_tok = sft, sft_tok
  else:
    aligned, aligned_tok = load_any(s["aligned"], dtype=s["dtype"])
  check_model_vocabs(sft, aligned, s)
  named = []
  if s["tokenizer"]:
    try:
      named.append((f"--tokenizer={s['tokenizer']}", load_tokenizer(s["tokenizer"])))
    except ValueError as e:
      raise ValueError(f"--tokenizer={s['tokenizer']}: {e}") from None
  if sft_tok is not None:
    named.append((f"--sft={s['sft']}", sft_tok))
  if aligned_tok is not None:
    named.append((f"--aligned={s['aligned']}", aligned_tok))
  if not named:
    raise ValueError(f"no tokenizer: --sft={s['sft']} and --aligned={s['aligned']} have none; "
                     "pass --tokenizer=PATH (a tokenizer directory or .gguf file)")
  check_tokenizers(named)
  vocab = min(int(sft.vocab_size), int(aligned.vocab_size))
  stop_ids = sorted({int(i) for _, t in named for i in t.eos_ids if 0 <= int(i) < vocab})
  return sft, aligned, named[0][1], stop_ids


def encode_prompts(tokenizer, prompts: Sequence[Prompt], mode: str) -> list[list[int]]:
  template = getattr(tokenizer, "chat_template", None)
  if mode == "on" and not template:
    raise ValueError("--chat_template=on, but the tokenizer has no chat template (use "
                     "--chat_template=auto or off)")
  use_template = mode == "on" or (mode == "auto" and bool(template))
  out = []
  for i, p in enumerate(prompts):
    if use_template:
      messages = list(p.messages or ({"role": "user", "content": p.text},))
      text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
      ids = tokenizer.encode(text, add_special_tokens=False)
    elif p.messages is not None:
      why = ("--chat_template=off" if mode == "off" else "the tokenizer has no chat template")
      raise ValueError(f"prompt {i} is a \"messages\" list, but {why}: give plain "
                       "\"prompt\" strings or use a tokenizer with a chat template")
    else:
      ids = tokenizer.encode(p.text)
    if not ids:
      raise ValueError(f"prompt {i} ({p.text!r}) encodes to no tokens")
    out.append(ids)
  return out


# ----------------------------------------------------------------------------- output


class _AtomicFile:
  """A text file written under a temporary name beside `path`; `commit()` renames it."""

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    folder = os.path.dirname(self.path)
    os.makedirs(folder, exist_ok=True)
    fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                    dir=folder)
    self.file = os.fdopen(fd, "w", encoding="utf-8")

  def commit(self) -> None:
    self.file.flush()
    os.fsync(self.file.fileno())
    self.file.close()
    os.replace(self.tmp, self.path)

  def discard(self) -> None:
    if not self.file.closed:
      self.file.close()
    if os.path.exists(self.tmp):
      os.unlink(self.tmp)


class _Progress:
  """One stderr line per update: batches done, prompts, new tokens/s, ETA."""

  def __init__(self, batches: int, prompts: int):
    self.batches, self.prompts = batches, prompts
    self.start = time.perf_counter()
    self.tty = sys.stderr.isatty()

  def update(self, batch: int, prompts_done: int, tokens: int) -> None:
    elapsed = time.perf_counter() - self.start
    eta = elapsed / batch * (self.batches - batch)
    width = 20
    filled = int(width * batch / self.batches)
    line = (f"[{'#' * filled}{'.' * (width - filled)}] batch {batch}/{self.batches} | "
            f"{prompts_done}/{self.prompts} prompts | {tokens / max(elapsed, 1e-9):.1f} tok/s | "
            f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s")
    end = "\n" if (not self.tty or batch == self.batches) else ""
    sys.stderr.write(("\r" if self.tty else "") + line + end)
    sys.stderr.flush()


def summarize(records: Sequence[dict], lambdas: Sequence[float]) -> list[dict]:
  rows = []
  for lam in lambdas:
    rs = [r for r in records if r["lambda"] == lam]
    n = len(rs)
    mean = lambda key: sum(r[key] for r in rs) / n
    kl = mean("kl_sample")
    var = sum((r["kl_sample"] - kl) ** 2 for r in rs) / (n - 1) if n > 1 else None
    rows.append({"lambda": lam, "n": n, "mean_length": mean("length"),
                 "stopped": sum(r["stopped"] for r in rs) / n,
                 "logp_policy": mean("logp_policy"), "logp_sft": mean("logp_sft"),
                 "logp_aligned": mean("logp_aligned"), "kl_to_sft": kl,
                 "kl_stderr": None if var is None else math.sqrt(var / n)})
  return rows


def format_table(rows: Sequence[dict]) -> str:
  lines = ["| λ | n | mean length | stopped | log p_λ | log π_sft | log π_aligned | "
           "KL(p_λ‖π_sft) ± s.e. |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    stderr = "n/a" if r["kl_stderr"] is None else f"{r['kl_stderr']:.3f}"
    lines.append(f"| {r['lambda']:g} | {r['n']} | {r['mean_length']:.1f} | {r['stopped']:.2f} | "
                 f"{r['logp_policy']:.2f} | {r['logp_sft']:.2f} | {r['logp_aligned']:.2f} | "
                 f"{r['kl_to_sft']:.3f} ± {stderr} |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- the run


def run(settings: dict) -> dict:
  """Validate, load, sample and write; returns the summary written to OUT.summary.json."""
  s = dict(settings)
  parsed = validate(s)
  lambdas, prompts = parsed["lambdas"], parsed["prompts"]
  t0 = time.perf_counter()

  from dera_jax.sampling import DeRaSampler

  sft, aligned, tokenizer, stop_ids = load_models(s)
  ids = encode_prompts(tokenizer, prompts, s["chat_template"])
  t_loaded = time.perf_counter()
  pad_id = int(getattr(tokenizer, "pad_id", 0) or 0)
  vocab = min(int(sft.vocab_size), int(aligned.vocab_size))
  if not 0 <= pad_id < vocab:
    pad_id = stop_ids[0] if stop_ids else 0
  longest = max(map(len, ids))
  try:
    sampler = DeRaSampler(sft, aligned, max_prompt_len=longest,
                          max_new_tokens=s["max_new_tokens"], stop_ids=stop_ids, pad_id=pad_id,
                          shared_vocab_prefix=s["shared_vocab_prefix"])
  except ValueError as e:
    raise ValueError(f"the sampler for the longest prompt ({longest} tokens) and "
                     f"--max_new_tokens={s['max_new_tokens']}: {e}") from None
  n = len(ids)
  batch = min(s["batch_size"], n)
  starts = list(range(0, n, batch))
  stop_set = set(stop_ids)
  progress = _Progress(len(starts), n)
  print(f"realign: {n} prompts x {len(lambdas)} λ {lambdas}, {len(starts)} batches of {batch}, "
        f"stop ids {stop_ids}, sampler mode {sampler.mode!r} "
        f"(models loaded in {t_loaded - t0:.1f}s)", file=sys.stderr, flush=True)

  out = _AtomicFile(s["out"])
  summary_file = None
  try:
    records, new_tokens = [], 0
    for b, start in enumerate(starts, 1):
      chunk = list(range(start, min(start + batch, n)))
      # Fill a short last batch with copies of its last prompt: one shape, one compilation.
      rows = chunk + [chunk[-1]] * (batch - len(chunk))
      row_ids = chunk + list(range(n, n + batch - len(chunk)))
      res = sampler.sweep([ids[i] for i in rows], lambdas=lambdas, seed=s["seed"],
                          temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"],
                          row_ids=row_ids)
      lp, lp_sft = res.sequence_logprobs(), res.sft_sequence_logprobs()
      lp_aligned = res.aligned_sequence_logprobs()
      for j, i in enumerate(chunk):
        for k, lam in enumerate(lambdas):
          length = int(res.lengths[k, j])
          token_ids = [int(t) for t in res.tokens[k, j, :length]]
          stopped = bool(token_ids) and token_ids[-1] in stop_set
          body = token_ids[:-1] if stopped else token_ids
          record = {
              "prompt_index": i, "prompt": prompts[i].text,
              **({"messages": list(prompts[i].messages)} if prompts[i].messages else {}),
              "lambda": lam, "text": tokenizer.decode(body), "token_ids": token_ids,
              "length": length, "stopped": stopped,
              "logp_policy": float(lp[k, j]), "logp_sft": float(lp_sft[k, j]),
              "logp_aligned": float(lp_aligned[k, j]),
              "kl_sample": float(lp[k, j]) - float(lp_sft[k, j]),
          }
          out.file.write(json.dumps(record, ensure_ascii=False) + "\n")
          records.append({key: record[key] for key in
                          ("lambda", "length", "stopped", "logp_policy", "logp_sft",
                           "logp_aligned", "kl_sample")})
          new_tokens += length
      progress.update(b, chunk[-1] + 1, new_tokens)

    seconds = time.perf_counter() - t0
    sample_seconds = time.perf_counter() - t_loaded
    rows = summarize(records, lambdas)
    summary = {
        "rows": rows, "lambdas": lambdas, "num_prompts": n, "new_tokens": new_tokens,
        "seconds": seconds, "sampling_seconds": sample_seconds,
        "tokens_per_s": new_tokens / max(sample_seconds, 1e-9), "stop_ids": stop_ids,
        "sampler_mode": sampler.mode, "settings": s,
        "note": "log-probs are summed over new tokens at the sampling temperature, before "
                "top-k/top-p; kl_to_sft = mean(logp_policy - logp_sft) estimates "
                "KL(p_λ ‖ π_sft)",
    }
    summary_file = _AtomicFile(s["out"] + ".summary.json")
    json.dump(summary, summary_file.file, indent=1, ensure_ascii=False)
    summary_file.file.write("\n")
    out.commit()
    summary_file.commit()
  except BaseException:
    out.discard()
    if summary_file is not None:
      summary_file.discard()
    raise
  print(format_table(rows))
  print(f"\nwrote {out.path} ({len(records)} lines) and {summary_file.path}; "
        f"{new_tokens} new tokens in {sample_seconds:.1f}s ({summary['tokens_per_s']:.1f} tok/s, "
        f"compilation included), {seconds:.1f}s in all")
  return summary


def main(argv, *, config_holder=None, flag_values: flags.FlagValues = flags.FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]} (all settings are --flags)")
  values = {name: flag_values[name].value for name in DEFAULTS}
  present = {name: bool(flag_values[name].present) for name in DEFAULTS}
  config = config_holder.value if config_holder is not None else None
  try:
    settings = resolve_settings(config, values, present)
    run(settings)
  except ValueError as e:
    print(f"realign: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  import functools

  import jax
  _config_holder = define_flags()
  jax.config.parse_flags_with_absl()
  app.run(functools.partial(main, config_holder=_config_holder))
