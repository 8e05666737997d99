"""The main job: DeRa versus models retrained at β/λ, end to end.

    python -m experiments.reproduce --config=configs/quickstart.py --workdir=runs/quickstart

Stages (each in its own folder of the workdir, reused when its config is unchanged):
  sft/                SFT on the task's demonstrations
  reward/             reward model (Bradley–Terry on noisy gold-labelled pairs)
  aligned/            RLOO (or PPO) at β against that reward model: π_β
  retrained_lam{λ}/   the same at β/λ for every λ of the grid other than 0 and 1
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
import numpy as np
from flax import nnx

from experiments import common, train_policy, train_reward, train_sft
from dera_jax.data.tasks import get_task, known_tasks
from dera_jax.eval import compare as compare_lib
from dera_jax.eval import metrics as metrics_lib
from dera_jax.eval import plots
from dera_jax.models.checkpoint import load_checkpoint
from dera_jax.models.heads import load_scalar_head_model
from dera_jax.sampling import DeRaSampler, Sampler
from dera_jax.training.checkpointing import config_differences, flatten_config

SHARED = ("task", "seed", "seq_len", "max_prompt_len", "data_dir")


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


def stage_configs(c) -> dict[str, tuple]:
  """{stage dir: (kind, config)} in the order they run."""
  stages = {}
  grid = parse_lambdas(c)
  sft = _with_shared(c.sft, c)
  stages["sft"] = ("sft", sft)
  reward = _with_shared(c.reward, c)
  stages["reward"] = ("reward", reward)
  for lam in grid:
    if lam == 0:
      continue
    policy = _with_shared(c.policy, c)
    policy.beta = c.beta / lam
    stages["aligned" if lam == 1 else f"retrained_lam{lam:g}"] = ("policy", policy)
  if 1.0 not in grid:
    policy = _with_shared(c.policy, c)
    policy.beta = c.beta
    stages["aligned"] = ("policy", policy)
  return stages


def _with_shared(stage, c):
  stage = stage.copy_and_resolve_references()
  with stage.unlocked():
    for name in SHARED:
      stage[name] = c[name]
  return stage


def validate(c, workdir: str) -> dict[str, tuple]:
  """Start-up checks, before any training: config values and the workdir's stages."""
  tasks = known_tasks()
  common.check(c.task in tasks, "task", c.task, f"must be one of {tasks}")
  parse_lambdas(c)
  common.check(math.isfinite(c.beta) and c.beta > 0, "beta", c.beta, "must be finite and > 0")
  for field in ("num_prompts", "samples_per_prompt", "sampling_seeds", "max_new_tokens"):
    common.check(int(c.eval[field]) >= 1, f"eval.{field}", c.eval[field], "must be >= 1")
  stages = stage_configs(c)
  for name, (kind, cfg) in stages.items():
    section = "policy" if kind == "policy" else kind
    try:
      if kind == "sft":
        train_sft.validate(cfg)
      else:
        common.validate_common(cfg)
    except ValueError as e:  # name the field as the user sets it: config.sft.num_steps, …
      raise ValueError(str(e).replace("config.", f"config.{section}.", 1)) from None
    marker = os.path.join(workdir, name, "stage_config.json")
    if os.path.exists(marker):
      with open(marker) as f:
        stored = json.load(f)
      differences = config_differences(stored, _flat(cfg))
      if differences:
        raise ValueError(f"{os.path.join(workdir, name)} was made under a different config: "
                         + "; ".join(differences) + ". Use another --workdir.")
  return stages


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
  print(f"== {name}: training ({kind})", flush=True)
  with cfg.unlocked():
    if kind in ("reward", "policy"):
      cfg.init_from = inputs["sft"]
    if kind == "policy":
      cfg.reward_model = inputs["reward"]
  run = {"sft": train_sft.run, "reward": train_reward.run, "policy": train_policy.run}[kind]
  return run(cfg, folder)


# ----------------------------------------------------------------------------- evaluation


class Evaluator:
  """Samples and scores DeRa and the retrained models on one split's prompts."""

  def __init__(self, c, task, split: str, sft, reward_model, tokenizer):
    e = c.eval
    self.c, self.task, self.tokenizer = c, task, tokenizer
    prompts = task.make_split(split, e.num_prompts, c.seed + 101)
    self.examples = [ex for ex in prompts for _ in range(e.samples_per_prompt)]
    self.prompt_ids = [tokenizer.encode(ex.prompt) for ex in self.examples]
    self.max_prompt_len = max(map(len, self.prompt_ids))
    self.settings = dict(max_prompt_len=self.max_prompt_len, max_new_tokens=e.max_new_tokens,
                         stop_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id)
    self.sft = sft
    graphdef, state = nnx.split(reward_model)
    self._rm = (graphdef, state)
    self._score = jax.jit(lambda s, t, m: nnx.merge(graphdef, s).score(t, m))

  def rewards(self, token_lists) -> np.ndarray:
    """Learned reward of prompt + response (stop token included), read at the last token."""
    rows = [p + list(y) for p, y in zip(self.prompt_ids, token_lists)]
    t = self.max_prompt_len + self.c.eval.max_new_tokens
    tokens = np.full((len(rows), t), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), t), bool)
    for i, row in enumerate(rows):
      tokens[i, :len(row)], mask[i, :len(row)] = row, True
    return np.asarray(self._score(self._rm[1], tokens, mask))

  def baseline(self, seed: int) -> list[str]:
    """SFT samples with another seed: what the win rate is measured against."""
    out = Sampler(self.sft, **self.settings)(self.prompt_ids, seed=seed + 7919,
                                             temperature=self.c.eval.temperature)
    return [self.tokenizer.decode(y) for y in out.token_lists()]

  def metrics(self, token_lists, logp, logp_sft, lengths, baseline) -> dict[str, float]:
    responses = [self.tokenizer.decode(y) for y in token_lists]
    per_sample = metrics_lib.sample_metrics(
        self.task, self.examples, responses, rewards=self.rewards(token_lists),
        logp_policy=logp, logp_sft=logp_sft, baseline_responses=baseline, lengths=lengths)
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
  task = get_task(c.task)
  tokenizer = common.tokenizer_for(c)
  sft = load_checkpoint(paths["sft"])
  aligned = load_checkpoint(paths["aligned"])
  reward_model = load_scalar_head_model(paths["reward"])
  lambdas = parse_lambdas(c)
  retrained = {lam: (sft if lam == 0 else aligned if lam == 1 else
                     load_checkpoint(paths[f"retrained_lam{lam:g}"])) for lam in lambdas}
  rows = {}
  samples = []
  for split in ("validation", "test"):
    ev = Evaluator(c, task, split, sft, reward_model, tokenizer)
    per_seed = {"dera": {lam: [] for lam in lambdas}, "retrained": {lam: [] for lam in lambdas}}
    for s in range(c.eval.sampling_seeds):
      seed = c.seed + 1000 * s
      start = time.perf_counter()
      baseline = ev.baseline(seed)
      for lam, (m, responses) in ev.dera(aligned, lambdas, seed, baseline).items():
        per_seed["dera"][lam].append(m)
        if s == 0 and split == "test":
          samples += [{"method": "dera", "lambda": lam, "prompt": ex.prompt, "response": r}
                      for ex, r in list(zip(ev.examples, responses))[::c.eval.samples_per_prompt]]
      for lam in lambdas:
        m, responses = ev.model(retrained[lam], seed, baseline)
        per_seed["retrained"][lam].append(m)
        if s == 0 and split == "test":
          samples += [{"method": "retrained", "lambda": lam, "prompt": ex.prompt,
                       "response": r}
                      for ex, r in list(zip(ev.examples, responses))[::c.eval.samples_per_prompt]]
      print(f"== evaluation {split}: seed {s + 1}/{c.eval.sampling_seeds} "
            f"({len(ev.examples)} samples per λ and method, {time.perf_counter() - start:.0f}s)",
            flush=True)
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
