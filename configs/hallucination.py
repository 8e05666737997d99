"""DeRa vs retrained on the hallucination-mitigation task: answers grounded in a context, every
unsupported statement counted exactly. The same protocol as configs/quickstart.py; scale it
through config values (model, steps, data) alone.

    python -m experiments.reproduce --config=configs/hallucination.py --workdir=runs/hallucination
"""

from configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.task = "hallucination"
  c.beta = 0.2
  c.seq_len = 128  # contexts, questions and answers are up to ~100 bytes
  c.max_prompt_len = 96
  for stage in (c.sft, c.reward, c.policy):
    stage.task, stage.seq_len, stage.max_prompt_len = c.task, c.seq_len, c.max_prompt_len
  c.sft.num_steps = 600
  c.reward.max_new_tokens = 48
  c.policy.max_new_tokens = 48
  c.policy.num_steps = 100
  c.eval.max_new_tokens = 48
  return c
