"""The main job: DeRa versus models retrained at β/λ, end to end.

    python -m experiments.reproduce --config=configs/quickstart.py --workdir=runs/quickstart

Stages (each in its own folder of the workdir, reused when its config is unchanged):
  sft/                SFT on the task's demonstrations (or `config.sft_model` imported)
  reward/             reward model (Bradley–Terry on the task's preference pairs)
  gold_reward/        with `config.gold="reward_model"`: a second reward model, trained on the
                      half of the pairs the first never sees, that judges (the "gold" column)
  aligned/            RLOO, PPO or DPO at β (or `config.aligned_model` imported): π_β
  retrained_lam{λ}/   the same at β/λ for every λ of the grid other than 0 and 1
  *_seed{k}/          aligned and retrained again with seed + k, k < `config.train_seeds`
  results/            DeRa at every λ from (π_sft, π_β) beside the retrained models, on the
                      validation and test prompts: comparison.md / .csv, agreement.csv,
                      comparison.json, PNG plots, samples.jsonl, summary.json
A workdir whose stages were made under a different config is refused at start-up.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from experiments import common, train_dpo, train_policy, train_reward, train_sft
from dera_jax.data.tasks import known_tasks
from dera_jax.data.tasks.files import FILE_TASKS
from dera_jax.eval import compare as compare_lib
from dera_jax.eval import metrics as metrics_lib
from dera_jax.eval import plots
from dera_jax.models.checkpoint import load_checkpoint, save_checkpoint
from dera_jax.models.config import DTYPES
from dera_jax.models.loading import checkpoint_format, has_tokenizer, load_any
from dera_jax.models.heads import load_scalar_head_model
from dera_jax.sampling import DeRaSampler, Sampler
from dera_jax.training.checkpointing import config_differences, flatten_config

SHARED = ("task", "task_data", "seed", "seq_len", "max_prompt_len", "data_dir", "tokenizer",
          "chat_template", "dtype", "overlong")
GOLD_JUDGES = ("task", "reward_model")
ALIGNERS = ("rloo", "ppo", "dpo")


# ----------------------------------------------------------------------------- stages


def parse_lambdas(c) -> list[float]:
  """config.lambdas ("0,0.5,1,2") as floats: finite, >= 0, distinct, below and above 1."""
  try:
    grid = [float(x) for x in str(c.lambdas).split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"config.lambdas={c.lambdas!r}: must be comma-separated numbers, e.g. "
                     "'0,0.5,1,2,4'") from None
  common.check(len(grid) >= 2, "lambdas", c.lambdas, "needs at least two λ values")
  common.check(all(math.isfinite(x) and x >= 0 for x in grid), "lambdas", c.lambdas,
               "every λ must be finite and >= 0")
  common.check(len(set(grid)) == len(grid), "lambdas", c.lambdas, "λ values must be distinct")
  common.check(any(x < 1 for x in grid) and any(x > 1 for x in grid), "lambdas", c.lambdas,
               "the grid needs values below and above 1 (interpolation and extrapolation)")
  return grid


def tokenizer_spec(c) -> str:
  """config.tokenizer, "auto" resolved: the tokenizer of the imported SFT model (sft_model or
  sft.init_from) when it has one (HF directories and .gguf files do), else bytes."""
  if c.tokenizer != "auto":
    return c.tokenizer
  path = c.sft_model or c.sft.init_from
  if not path or (checkpoint_format(path) == "checkpoint" and not has_tokenizer(path)):
    return "bytes"
  return path


def seed_suffix(k: int) -> str:
  """Stage-folder suffix of training seed k (c.seed + k): "" for the first."""
  return "" if k == 0 else f"_seed{k}"


def stage_configs(c) -> dict[str, tuple]:
  """{stage dir: (kind, config)} in the order they run.

  Kinds: "sft", "import" (an existing checkpoint converted once), "reward", "policy" (RLOO or
  PPO), "dpo". With `config.gold="reward_model"` a second reward model ("gold_reward") is
  trained on the other half of the pairs and judges. Aligned and retrained stages are trained
  once per training seed (`config.train_seeds`).
  """
  stages = {}
  grid = parse_lambdas(c)
  stages["sft"] = (("import", _import_config(c.sft_model, c)) if c.sft_model else
                   ("sft", _with_shared(c.sft, c)))
  judged_by_model = c.gold == "reward_model"
  reward = _with_shared(c.reward, c)
  reward.preference_subset = "proxy" if judged_by_model else "all"
  stages["reward"] = ("reward", reward)
  if judged_by_model:
    gold = _with_shared(c.reward, c)
    gold.preference_subset = "gold"
    stages["gold_reward"] = ("reward", gold)
  kind = "dpo" if c.policy.algorithm == "dpo" else "policy"
  for k in range(c.train_seeds):
    for lam in sorted(set(grid) | {1.0}):
      if lam == 0:
        continue
      name = ("aligned" if lam == 1 else f"retrained_lam{lam:g}") + seed_suffix(k)
      if lam == 1 and c.aligned_model:
        if k == 0:
          stages[name] = ("import", _import_config(c.aligned_model, c))
        continue
      policy = _with_shared(c.policy, c)
      policy.beta = c.beta / lam
      policy.seed = c.seed + k  # the model's seed; its data stay those of config.seed
      policy.data_seed = c.seed
      if kind == "dpo":  # DPO learns from the pairs the reward model learns from
        with policy.unlocked():
          policy.label_noise = c.reward.label_noise
          policy.preference_subset = reward.preference_subset
      stages[name] = (kind, policy)
  return stages


def _import_config(path: str, c):
  return ml_collections.ConfigDict({"source": os.path.abspath(path), "dtype": c.dtype})


def _with_shared(stage, c):
  stage = stage.copy_and_resolve_references()
  with stage.unlocked():
    for name in SHARED:
      stage[name] = c[name]
    stage.tokenizer = tokenizer_spec(c)
  return stage


def validate(c, workdir: str) -> dict[str, tuple]:
  """Start-up checks, before any training: config values and the workdir's stages."""
  tasks = known_tasks() + FILE_TASKS
  common.check(c.task in tasks, "task", c.task, f"must be one of {tasks}")
  parse_lambdas(c)
  common.check(math.isfinite(c.beta) and c.beta > 0, "beta", c.beta, "must be finite and > 0")
  common.check(c.gold in GOLD_JUDGES, "gold", c.gold, f"must be one of {GOLD_JUDGES}")
  common.check(c.gold == "reward_model" or c.task not in FILE_TASKS, "gold", c.gold,
               f"task {c.task!r} has no exact judge: use gold='reward_model'")
  common.check(c.policy.algorithm in ALIGNERS, "policy.algorithm", c.policy.algorithm,
               f"must be one of {ALIGNERS}")
  common.check(isinstance(c.train_seeds, int) and c.train_seeds >= 1, "train_seeds",
               c.train_seeds, "must be an integer >= 1")
  common.check(c.train_seeds == 1 or not c.aligned_model, "train_seeds", c.train_seeds,
               f"must be 1 with an imported aligned_model={c.aligned_model!r} (there is one "
               "aligned model, so seeds would repeat the same DeRa runs)")
  common.check(c.dtype in DTYPES, "dtype", c.dtype, f"must be one of {list(DTYPES)}")
  for field, path in (("sft_model", c.sft_model), ("aligned_model", c.aligned_model),
                      ("sft.init_from", c.sft.init_from)):
    if path:
      try:
        checkpoint_format(path)
      except ValueError as e:
        raise ValueError(f"config.{field}={path!r}: {e}") from None
  common.check(not (c.sft_model and c.sft.init_from), "sft.init_from", c.sft.init_from,
               "give either config.sft_model (use it as the SFT model) or config.sft.init_from "
               "(fine-tune it), not both")
  spec = tokenizer_spec(c)
  try:
    tokenizer = common.tokenizer_for(ml_collections.ConfigDict({"tokenizer": spec}))
  except ValueError as e:
    raise ValueError(f"config.tokenizer={c.tokenizer!r} ({spec}): {e}") from None
  common.check(not c.chat_template or bool(getattr(tokenizer, "chat_template", None)),
               "chat_template", c.chat_template,
               f"the tokenizer ({spec}) has no chat template; set chat_template=False")
  common.check(c.overlong in ("error", "truncate"), "overlong", c.overlong,
               "must be 'error' or 'truncate'")
  for field in ("num_prompts", "samples_per_prompt", "sampling_seeds", "max_new_tokens",
                "score_batch_size"):
    common.check(int(c.eval[field]) >= 1, f"eval.{field}", c.eval[field], "must be >= 1")
  stages = stage_configs(c)
  if c.task in FILE_TASKS:  # read and check the files once, before any training
    task = common.task_for(stages["reward"][1])
    for split in ("train", "validation", "test"):
      task.sft_records(split)
      task.preference_records(split)
  for name, (kind, cfg) in stages.items():
    section = "policy" if kind == "dpo" else kind
    try:
      if kind == "sft":
        train_sft.validate(cfg)
      elif kind != "import":
        common.validate_common(cfg)
    except ValueError as e:  # name the field as the user sets it: config.sft.num_steps, …
      raise ValueError(str(e).replace("config.", f"config.{section}.", 1)) from None
    marker = os.path.join(workdir, name, "stage_config.json")
    if os.path.exists(marker) and _has_work(os.path.join(workdir, name)):
      with open(marker) as f:
        stored = json.load(f)
      differences = config_differences(stored, _flat(cfg))
      if differences:
        raise ValueError(f"{os.path.join(workdir, name)} was made under a different config: "
                         + "; ".join(differences) + ". Use another --workdir.")
  return stages


def _has_work(folder: str) -> bool:
  """Whether a stage folder holds its artifact or training checkpoints (a marker alone, left by
  a stage that failed before its first checkpoint, does not bind the workdir)."""
  return any(os.path.exists(os.path.join(folder, name))
             for name in ("model", "reward_model", "checkpoints"))


def _flat(cfg) -> dict:
  return json.loads(json.dumps(flatten_config(cfg), default=str))


def run_stage(workdir: str, name: str, kind: str, cfg, inputs: dict) -> str:
  """Train one stage (or reuse it); returns its artifact path."""
  folder = os.path.join(workdir, name)
  artifact = os.path.join(folder, "reward_model" if kind == "reward" else "model")
  marker = os.path.join(folder, "stage_config.json")
  if os.path.isdir(artifact) and os.path.exists(marker):
    print(f"== {name}: reusing {artifact}", flush=True)
    return artifact
  os.makedirs(folder, exist_ok=True)
  compare_lib.atomic_write_text(marker, json.dumps(_flat(cfg), indent=1))
  if kind == "import":
    print(f"== {name}: importing {cfg.source}", flush=True)
    model, _ = load_any(cfg.source, dtype=cfg.dtype)
    save_checkpoint(model, artifact, overwrite=True)
    return artifact
  print(f"== {name}: training ({kind})", flush=True)
  with cfg.unlocked():
    if kind in ("reward", "policy", "dpo"):
      cfg.init_from = inputs["sft"]
    if kind == "policy":
      cfg.reward_model = inputs["reward"]
  run = {"sft": train_sft.run, "reward": train_reward.run, "policy": train_policy.run,
         "dpo": train_dpo.run}[kind]
  return run(cfg, folder)


# ----------------------------------------------------------------------------- evaluation


class Evaluator:
  """Samples and scores DeRa and the retrained models on one split's prompts."""

  def __init__(self, c, task, split: str, sft, reward_model, gold_model, tokenizer):
    e = c.eval
    self.c, self.task, self.tokenizer = c, task, tokenizer
    prompts = task.make_split(split, e.num_prompts, c.seed + 101)
    self.examples = [ex for ex in prompts for _ in range(e.samples_per_prompt)]
    self.prompt_ids = [self._fit(tokenizer.encode(common.format_prompt(c, ex.prompt)))
                       for ex in self.examples]
    self.max_prompt_len = max(map(len, self.prompt_ids))
    self.settings = dict(max_prompt_len=self.max_prompt_len, max_new_tokens=e.max_new_tokens,
                         stop_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id)
    self.sft = sft
    self._reward = self._scorer(reward_model)
    self._gold = None if gold_model is None else self._scorer(gold_model)

  def _fit(self, ids: list[int]) -> list[int]:
    """A prompt of at most `max_prompt_len` tokens, as the training pipelines make it."""
    limit = self.c.max_prompt_len
    if len(ids) <= limit:
      return ids
    if self.c.overlong == "error":
      raise ValueError(f"an evaluation prompt is {len(ids)} tokens, more than config."
                       f"max_prompt_len={limit} (set config.overlong='truncate' or raise it)")
    bos = getattr(self.tokenizer, "bos_id", None)
    head = ids[:1] if bos is not None and ids[0] == bos else []
    return head + ids[len(ids) - (limit - len(head)):]

  def _scorer(self, model):
    """A reward model's scores of prompt + response rows, `eval.score_batch_size` at a time."""
    graphdef, state = nnx.split(model)
    score = jax.jit(lambda s, t, m: nnx.merge(graphdef, s).score(t, m))

    def scores(token_lists) -> np.ndarray:
      rows = [p + list(y) for p, y in zip(self.prompt_ids, token_lists)]
      t = self.max_prompt_len + self.c.eval.max_new_tokens
      b = self.c.eval.score_batch_size
      out = []
      for start in range(0, len(rows), b):
        chunk = rows[start:start + b]
        tokens = np.full((b, t), self.tokenizer.pad_id, np.int32)  # fixed shape: one compile
        mask = np.zeros((b, t), bool)
        mask[len(chunk):, 0] = True  # padding rows score one token, then are dropped
        for i, row in enumerate(chunk):
          tokens[i, :len(row)], mask[i, :len(row)] = row, True
        out.append(np.asarray(score(state, tokens, mask))[:len(chunk)])
      return np.concatenate(out)

    return scores

  def baseline(self, seed: int) -> dict:
    """SFT samples with another seed: what the win rate is measured against."""
    out = Sampler(self.sft, **self.settings)(self.prompt_ids, seed=seed + 7919,
                                             temperature=self.c.eval.temperature)
    lists = out.token_lists()
    return {"responses": [self.tokenizer.decode(y) for y in lists],
            "gold": None if self._gold is None else self._gold(lists)}

  def metrics(self, token_lists, logp, logp_sft, lengths, baseline) -> dict[str, float]:
    responses = [self.tokenizer.decode(y) for y in token_lists]
    judged = {} if self._gold is None else {"gold": self._gold(token_lists),
                                            "baseline_gold": baseline["gold"]}
    per_sample = metrics_lib.sample_metrics(
        self.task, self.examples, responses, rewards=self._reward(token_lists),
        logp_policy=logp, logp_sft=logp_sft, baseline_responses=baseline["responses"],
        lengths=lengths, **judged)
    return metrics_lib.aggregate(per_sample), responses

  def dera(self, aligned, lambdas, seed: int, baseline) -> dict:
    sampler = DeRaSampler(self.sft, aligned, **self.settings)
    out = sampler.sweep(self.prompt_ids, lambdas=lambdas, seed=seed,
                        temperature=self.c.eval.temperature)
    lists = out.token_lists()
    rows = {}
    for k, lam in enumerate(lambdas):
      rows[lam] = self.metrics(lists[k], out.sequence_logprobs()[k],
                               out.sft_sequence_logprobs()[k], out.lengths[k], baseline)
    return rows

  def model(self, model, seed: int, baseline):
    """Samples of `model` alone, with log-probs under it and under the SFT model."""
    out = DeRaSampler(self.sft, model, **self.settings)(self.prompt_ids, lambdas=1.0, seed=seed,
                                                         temperature=self.c.eval.temperature)
    return self.metrics(out.token_lists(), out.sequence_logprobs(),
                        out.sft_sequence_logprobs(), out.lengths, baseline)


def evaluate(c, paths: dict, results_dir: str) -> compare_lib.Comparison:
  """DeRa from (π_sft, π_β of each training seed) beside the retrained models; the spread of
  every cell is over (training seed, sampling seed) runs."""
  c = _with_resolved_tokenizer(c)  # so that format_prompt(c, …) renders prompts as in training
  task = common.task_for(c)
  tokenizer = common.tokenizer_for(c)
  sft = load_checkpoint(paths["sft"])
  reward_model = load_scalar_head_model(paths["reward"])
  gold_model = load_scalar_head_model(paths["gold_reward"]) if c.gold == "reward_model" else None
  lambdas = parse_lambdas(c)
  rows = {}
  samples = []
  for split in ("validation", "test"):
    ev = Evaluator(c, task, split, sft, reward_model, gold_model, tokenizer)
    per_seed = {"dera": {lam: [] for lam in lambdas}, "retrained": {lam: [] for lam in lambdas}}
    for k in range(c.train_seeds):
      aligned_path = paths.get("aligned" + seed_suffix(k), paths["aligned"])
      aligned = load_checkpoint(aligned_path)
      retrained = {lam: (sft if lam == 0 else aligned if lam == 1 else
                         load_checkpoint(paths[f"retrained_lam{lam:g}" + seed_suffix(k)]))
                   for lam in lambdas}
      for s in range(c.eval.sampling_seeds):
        seed = c.seed + 1000 * s
        start = time.perf_counter()
        baseline = ev.baseline(seed)
        keep = k == 0 and s == 0 and split == "test"
        for lam, (m, responses) in ev.dera(aligned, lambdas, seed, baseline).items():
          per_seed["dera"][lam].append(m)
          if keep:
            samples += _samples("dera", lam, ev, responses)
        for lam in lambdas:
          m, responses = ev.model(retrained[lam], seed, baseline)
          per_seed["retrained"][lam].append(m)
          if keep:
            samples += _samples("retrained", lam, ev, responses)
        print(f"== evaluation {split}: models of seed {k + 1}/{c.train_seeds}, sampling seed "
              f"{s + 1}/{c.eval.sampling_seeds} ({len(ev.examples)} samples per λ and method, "
              f"{time.perf_counter() - start:.0f}s)", flush=True)
    rows[split] = {method: {lam: metrics_lib.aggregate_seeds(runs) for lam, runs in by_lam.items()}
                   for method, by_lam in per_seed.items()}
  columns = list(metrics_lib.STANDARD_COLUMNS) + [task.primary_metric]
  cmp = compare_lib.compare(
      rows["test"]["dera"], rows["test"]["retrained"], beta=c.beta, columns=columns,
      validation_gold={lam: row["gold"] for lam, row in rows["validation"]["dera"].items()})
  os.makedirs(results_dir, exist_ok=True)
  compare_lib.write_results(results_dir, cmp)
  plots.write_plots(results_dir, cmp, task_metric=task.primary_metric)
  compare_lib.atomic_write_text(os.path.join(results_dir, "samples.jsonl"),
                                "".join(json.dumps(s) + "\n" for s in samples))
  return cmp


def _with_resolved_tokenizer(c):
  c = c.copy_and_resolve_references()
  with c.unlocked():
    c.tokenizer = tokenizer_spec(c)
  return c


def _samples(method: str, lam: float, ev: Evaluator, responses) -> list[dict]:
  """One sample per prompt (the first of its samples), for samples.jsonl."""
  step = ev.c.eval.samples_per_prompt
  return [{"method": method, "lambda": lam, "prompt": ex.prompt, "response": r}
          for ex, r in list(zip(ev.examples, responses))[::step]]


def run(c, workdir: str) -> compare_lib.Comparison:
  start = time.perf_counter()
  stages = validate(c, workdir)
  paths, timings = {}, {}
  for name, (kind, cfg) in stages.items():
    t0 = time.perf_counter()
    paths[name] = run_stage(workdir, name, kind, cfg, paths)
    timings[name] = time.perf_counter() - t0
  t0 = time.perf_counter()
  results_dir = os.path.join(workdir, "results")
  cmp = evaluate(c, paths, results_dir)
  timings["evaluation"] = time.perf_counter() - t0
  timings["total"] = time.perf_counter() - start
  compare_lib.atomic_write_text(os.path.join(results_dir, "summary.json"), json.dumps(
      {"seconds": timings, "config": _flat(c)}, indent=1))
  print("\n" + compare_lib.markdown_table(cmp), flush=True)
  print(f"\nresults in {results_dir} ({timings['total']:.0f}s in all: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items() if k != "total") + ")",
        flush=True)
  return cmp


if __name__ == "__main__":
  common.run_app(run, "configs/quickstart.py")
