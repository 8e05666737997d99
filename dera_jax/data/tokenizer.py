"""Tokenizers: text <-> token ids, special ids and chat templates.

`Tokenizer` wraps a HF `tokenizers.Tokenizer` (fast, Rust; no PyTorch) and renders chat
templates with jinja2 the way transformers does. `ByteTokenizer` is a dependency-free
byte-level tokenizer for models trained from scratch on the built-in tasks.
"""

from __future__ import annotations

from typing import Sequence


class Tokenizer:
  """A `tokenizers.Tokenizer` plus the special ids and chat template of a checkpoint.

  Args:
    backend: a `tokenizers.Tokenizer`.
    bos_id: id prepended when `add_bos` (None if the model has none).
    eos_ids: ids that end generation (EOS, end-of-turn, …).
    pad_id: padding id (defaults to the first EOS id, else 0).
    add_bos: prepend `bos_id` in `encode(..., add_special_tokens=True)`.
    chat_template: a jinja2 chat template (HF format) or None.
  """

  def __init__(self, backend, *, bos_id: int | None = None, eos_ids: Sequence[int] = (),
               pad_id: int | None = None, add_bos: bool = False,
               chat_template: str | None = None):
    self.backend = backend
    self.bos_id = bos_id
    self.eos_ids = tuple(int(i) for i in eos_ids)
    self.pad_id = pad_id if pad_id is not None else (self.eos_ids[0] if self.eos_ids else 0)
    self.add_bos = add_bos
    self.chat_template = chat_template

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
    ids = self.backend.encode(text, add_special_tokens=False).ids
    if add_special_tokens and self.add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self.backend.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.backend.id_to_token(int(token_id))

  def apply_chat_template(self, messages: Sequence[dict], *,
                          add_generation_prompt: bool = True) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with the chat template."""
    if not self.chat_template:
      raise ValueError("this tokenizer has no chat template")
    import jinja2
    from jinja2 import sandbox

    def raise_exception(message):
      raise jinja2.TemplateError(message)

    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tok = lambda i: None if i is None else self.id_to_token(i)
    return env.from_string(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        bos_token=tok(self.bos_id) or "",
        eos_token=tok(self.eos_ids[0]) if self.eos_ids else "")


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, plus PAD = 256, BOS = 257, EOS = 258 (vocab_size 259)."""

  PAD, BOS, EOS = 256, 257, 258
  vocab_size = 259

  def __init__(self, add_bos: bool = True):
    self.add_bos = add_bos
    self.bos_id, self.pad_id, self.eos_ids = self.BOS, self.PAD, (self.EOS,)
    self.chat_template = None

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
    ids = list(text.encode("utf-8"))
    return [self.BOS] + ids if add_special_tokens and self.add_bos else ids

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    data = bytes(int(i) for i in ids if int(i) < 256)
    return data.decode("utf-8", errors="replace")
