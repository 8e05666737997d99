"""Tokenizers: text <-> token ids, special ids and chat templates.

`Tokenizer` wraps a HF `tokenizers.Tokenizer` (fast, Rust; no PyTorch) or a
`sentencepiece.SentencePieceProcessor`, and renders chat templates with jinja2 the way
transformers does. `Tokenizer.from_pretrained(dir)` reads a HF tokenizer directory
(tokenizer.json or tokenizer.model, tokenizer_config.json, special_tokens_map.json,
chat_template.jinja, generation_config.json); `save_pretrained(dir)` writes one that
transformers' `AutoTokenizer` reads back. `ByteTokenizer` is a dependency-free byte-level
tokenizer for models trained from scratch on the built-in tasks.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

_TOKENIZER_JSON = "tokenizer.json"
_SENTENCEPIECE_MODEL = "tokenizer.model"
_TOKENIZER_CONFIG = "tokenizer_config.json"
_SPECIAL_TOKENS_MAP = "special_tokens_map.json"
_CHAT_TEMPLATE_FILE = "chat_template.jinja"
_GENERATION_CONFIG = "generation_config.json"
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                  "mask_token")


class _SentencePieceBackend:
  """The few `tokenizers.Tokenizer` methods `Tokenizer` uses, over a SentencePieceProcessor.

  Control pieces and <unk> written literally in the text (e.g. "</s>") are encoded as their ids, and decoded back to their text unless `skip_special_tokens`, as transformers'
  sentencepiece tokenizers do.
  """

  def __init__(self, processor):
    self.processor = processor
    n = processor.get_piece_size()
    # Control pieces (<s>, </s>, …) and <unk>: sentencepiece never produces them from text;
    # user-defined pieces it matches by itself.
    self._control = {i for i in range(n) if processor.is_control(i) or processor.is_unknown(i)}
    self._special = {processor.id_to_piece(i): i for i in self._control}
    pieces = sorted(self._special, key=len, reverse=True)
    self._split = re.compile("(" + "|".join(map(re.escape, pieces)) + ")") if pieces else None

  class _Encoding:
    def __init__(self, ids):
      self.ids = ids

  def encode(self, text: str, add_special_tokens: bool = False):
    del add_special_tokens  # BOS/EOS are the wrapper's business
    parts = self._split.split(text) if self._split else [text]
    ids: list[int] = []
    for i, part in enumerate(parts):
      if i % 2:
        ids.append(self._special[part])
      elif part:
        ids.extend(self.processor.encode(part, out_type=int))
    return self._Encoding(ids)

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    out, run = [], []
    for i in ids:
      if i in self._control:
        out.append(self.processor.decode(run))
        run = []
        if not skip_special_tokens:
          out.append(self.processor.id_to_piece(i))
      else:
        run.append(i)
    out.append(self.processor.decode(run))
    return "".join(out)

  def get_vocab_size(self, with_added_tokens: bool = True) -> int:
    del with_added_tokens
    return self.processor.get_piece_size()

  def token_to_id(self, token: str) -> int | None:
    i = self.processor.piece_to_id(token)
    return None if i == self.processor.unk_id() and token != self.processor.id_to_piece(i) else i

  def id_to_token(self, token_id: int) -> str | None:
    if not 0 <= token_id < self.processor.get_piece_size():
      return None
    return self.processor.id_to_piece(token_id)

  def save(self, path: str) -> None:
    with open(path, "wb") as f:
      f.write(self.processor.serialized_model_proto())


def _is_sentencepiece(backend) -> bool:
  return type(backend).__name__ == "SentencePieceProcessor"


class Tokenizer:
  """A tokenizer backend plus the special ids and chat template of a checkpoint.

  Args:
    backend: a `tokenizers.Tokenizer` or a `sentencepiece.SentencePieceProcessor`.
    bos_id: id prepended when `add_bos` (None if the model has none).
    eos_ids: ids that end generation (EOS, end-of-turn, …).
    pad_id: padding id (defaults to the first EOS id, else 0).
    add_bos: prepend `bos_id` in `encode(..., add_special_tokens=True)`.
    chat_template: a jinja2 chat template (HF format) or None.
    special_tokens: name -> text of the special tokens a chat template may use ("bos_token",
      "eos_token", "pad_token", "unk_token", …); by default derived from the ids.
    clean_up_tokenization_spaces: apply transformers' clean-up (" ." -> ".", …) in `decode`.
  """

  def __init__(self, backend, *, bos_id: int | None = None, eos_ids: Sequence[int] = (),
               pad_id: int | None = None, add_bos: bool = False,
               chat_template: str | None = None, special_tokens: dict[str, str] | None = None,
               clean_up_tokenization_spaces: bool = False):
    if _is_sentencepiece(backend):
      backend = _SentencePieceBackend(backend)
    self.backend = backend
    self.bos_id = bos_id
    self.eos_ids = tuple(int(i) for i in eos_ids)
    self.pad_id = pad_id if pad_id is not None else (self.eos_ids[0] if self.eos_ids else 0)
    self.add_bos = add_bos
    self.chat_template = chat_template
    self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
    tokens = {}
    for name, i in (("bos_token", bos_id), ("eos_token", self.eos_ids[0] if self.eos_ids else None),
                    ("pad_token", pad_id)):
      token = None if i is None else self.id_to_token(i)
      if token is not None:
        tokens[name] = token
    tokens.update(special_tokens or {})
    self.special_tokens = tokens

  @property
  def is_sentencepiece(self) -> bool:
    return isinstance(self.backend, _SentencePieceBackend)

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
    ids = list(self.backend.encode(text, add_special_tokens=False).ids)
    if add_special_tokens and self.add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
    text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
    return _clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

  def token_to_id(self, token: str) -> int | None:
    return self.backend.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.backend.id_to_token(int(token_id))

  def apply_chat_template(self, messages: Sequence[dict], *,
                          add_generation_prompt: bool = True, **kwargs) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with the chat template.

    The jinja environment is transformers' (trim_blocks, lstrip_blocks, loop controls, its
    `tojson`, `raise_exception`, `strftime_now`); the special tokens are visible as
    `bos_token`, `eos_token`, …; `kwargs` are passed to the template too.
    """
    if not self.chat_template:
      raise ValueError("this tokenizer has no chat template")
    messages = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
    context = {**self.special_tokens, **kwargs}
    context.setdefault("bos_token", "")
    context.setdefault("eos_token", "")
    context.setdefault("tools", None)
    context.setdefault("documents", None)
    return _compile_template(self.chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **context)

  # ---------------------------------------------------------------- files
  @classmethod
  def from_pretrained(cls, path: str, *, eos_ids: Sequence[int] | None = None) -> "Tokenizer":
    """Read a HF tokenizer directory.

    tokenizer.json (preferred) or tokenizer.model (sentencepiece) gives the backend;
    tokenizer_config.json / special_tokens_map.json the special tokens, `add_bos_token` and the
    chat template (or chat_template.jinja). EOS ids: `eos_ids` if given, else
    generation_config.json's `eos_token_id` (an int or a list); the tokenizer's EOS token is
    appended if not already there.

    Raises:
      ValueError naming the directory or file when nothing usable is there.
    """
    if not os.path.isdir(path):
      raise ValueError(f"tokenizer directory {path!r} does not exist")
    json_path = os.path.join(path, _TOKENIZER_JSON)
    sp_path = os.path.join(path, _SENTENCEPIECE_MODEL)
    if os.path.exists(json_path):
      import tokenizers
      try:
        backend = tokenizers.Tokenizer.from_file(json_path)
      except Exception as e:  # noqa: BLE001 - the Rust error says little on its own
        raise ValueError(f"{json_path}: not a valid tokenizers file ({e})") from e
    elif os.path.exists(sp_path):
      import sentencepiece
      backend = sentencepiece.SentencePieceProcessor()
      try:
        backend.Load(sp_path)
      except Exception as e:  # noqa: BLE001
        raise ValueError(f"{sp_path}: not a valid sentencepiece model ({e})") from e
      backend = _SentencePieceBackend(backend)
    else:
      raise ValueError(f"{path}: no tokenizer found (need {_TOKENIZER_JSON} or "
                       f"{_SENTENCEPIECE_MODEL})")

    config = {}
    for name in (_SPECIAL_TOKENS_MAP, _TOKENIZER_CONFIG):  # tokenizer_config wins
      config.update(_read_json(os.path.join(path, name)))
    special = {}
    for name in _SPECIAL_NAMES:
      token = _token_content(config.get(name))
      if token is not None:
        special[name] = token
    ids = {name: backend.token_to_id(token) for name, token in special.items()}
    for name, token in special.items():
      if ids[name] is None:
        raise ValueError(f"{path}: {name}={token!r} of the tokenizer config is not in the "
                         "vocabulary")
    if isinstance(backend, _SentencePieceBackend):  # the model itself knows its specials
      p = backend.processor
      for name, i in (("bos_token", p.bos_id()), ("eos_token", p.eos_id()),
                      ("unk_token", p.unk_id()), ("pad_token", p.pad_id())):
        if name not in special and i >= 0:
          special[name], ids[name] = p.id_to_piece(i), i
    bos_id, pad_id = ids.get("bos_token"), ids.get("pad_token")

    if not isinstance(backend, _SentencePieceBackend) and backend.post_processor is not None:
      # transformers' fast tokenizers add BOS through the post-processor of tokenizer.json
      # (which their save_pretrained keeps in sync with add_bos_token): do what it does.
      with_special = backend.encode("a", add_special_tokens=True).ids
      without = backend.encode("a", add_special_tokens=False).ids
      add_bos = bos_id is not None and with_special[:1] == [bos_id] and without[:1] != [bos_id]
    elif "add_bos_token" in config:
      add_bos = bool(config["add_bos_token"]) and bos_id is not None
    else:
      add_bos = isinstance(backend, _SentencePieceBackend) and bos_id is not None

    if eos_ids is None:
      generation = _read_json(os.path.join(path, _GENERATION_CONFIG))
      eos = generation.get("eos_token_id")
      eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    eos_ids = [int(i) for i in eos_ids]
    if ids.get("eos_token") is not None and ids["eos_token"] not in eos_ids:
      eos_ids.append(ids["eos_token"])

    template = _chat_template(path, config)
    clean_up = bool(config.get("clean_up_tokenization_spaces", False))
    if clean_up and not isinstance(backend, _SentencePieceBackend):
      # transformers ignores the clean-up for BPE models (it would corrupt their output)
      model_type = json.loads(backend.to_str()).get("model", {}).get("type")
      clean_up = model_type != "BPE"
    return cls(backend, bos_id=bos_id, eos_ids=eos_ids, pad_id=pad_id, add_bos=add_bos,
               chat_template=template, special_tokens=special,
               clean_up_tokenization_spaces=clean_up)

  def save_pretrained(self, path: str) -> None:
    """Write tokenizer.json or tokenizer.model, tokenizer_config.json and, when there is a
    chat template, chat_template.jinja into the existing directory `path`."""
    config: dict[str, Any] = {
        "add_bos_token": bool(self.add_bos),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": bool(self.clean_up_tokenization_spaces),
        "model_max_length": int(1e30),
    }
    config.update(self.special_tokens)
    if self.is_sentencepiece:
      self.backend.save(os.path.join(path, _SENTENCEPIECE_MODEL))
      config["tokenizer_class"] = "LlamaTokenizer"
      config["legacy"] = True
    else:
      self.backend.save(os.path.join(path, _TOKENIZER_JSON))
      config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if self.chat_template:
      config["chat_template"] = self.chat_template
      with open(os.path.join(path, _CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
        f.write(self.chat_template)
    with open(os.path.join(path, _TOKENIZER_CONFIG), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(value, dict):
    raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}")
  return value


def _token_content(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _chat_template(path: str, config: dict) -> str | None:
  file = os.path.join(path, _CHAT_TEMPLATE_FILE)
  if os.path.exists(file):
    with open(file, encoding="utf-8") as f:
      return f.read()
  template = config.get("chat_template")
  if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  return template if isinstance(template, str) else None


def _clean_up_tokenization(text: str) -> str:
  for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                   (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                   (" 're", "'re")):
    text = text.replace(old, new)
  return text


_TEMPLATES: dict[str, Any] = {}


def _compile_template(template: str):
  """A chat template compiled in an environment like transformers'."""
  if template in _TEMPLATES:
    return _TEMPLATES[template]
  import datetime

  import jinja2
  import jinja2.ext
  from jinja2 import sandbox

  def raise_exception(message):
    raise jinja2.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  class _Generation(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` blocks render their body (no tracking)."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
      return caller()

  env = sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  compiled = env.from_string(template)
  _TEMPLATES[template] = compiled
  return compiled


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
