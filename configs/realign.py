"""DeRa sweep from the command line: `python -m experiments.realign --config=configs/realign.py`.

Every field is also a plain flag of the app (`--sft=...`); a plain flag given on the command
line wins over the field, and `--config.field=value` overrides the field.

    python -m experiments.realign --config=configs/realign.py \
        --config.sft=runs/sft_hf --config.aligned=runs/dpo_hf \
        --config.prompts=prompts.jsonl --config.out=runs/realign/samples.jsonl
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Models: a HF directory, a .gguf file or a save_checkpoint directory each.
  c.sft = ""
  c.aligned = ""
  c.tokenizer = ""  # a tokenizer directory or .gguf file; "" = the models' own tokenizer(s)
  c.shared_vocab_prefix = False  # allow vocab sizes that differ only by padding rows
  c.dtype = "float32"  # float32 | bfloat16 | float16
  # Prompts and output.
  c.prompts = ""  # .txt (one prompt per line) or .jsonl ({"prompt": ...} / {"messages": [...]})
  c.chat_template = "auto"  # auto | on | off
  c.out = ""  # JSONL, one line per (prompt, λ); the summary goes to OUT.summary.json
  # The λ grid: "0,0.5,1,2" (a list or tuple of numbers is accepted too).
  c.lambdas = "0,0.5,1,2"
  # Sampling.
  c.temperature = 1.0  # 0 = greedy
  c.top_k = 0  # 0 = off
  c.top_p = 1.0  # 1 = off
  c.seed = 0
  c.max_new_tokens = 64
  c.batch_size = 8  # prompts per sampler call (each is sampled at every λ)
  return c
