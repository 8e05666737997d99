"""SentencePiece tokenizers trained on a task corpus, for models trained from scratch.

    tokenizer = train_sentencepiece(texts, "/tmp/task_sp", vocab_size=512)
    tokenizer.encode("Name some fruits:")       # [BOS, ...]
    tokenizer = load_sentencepiece("/tmp/task_sp.model")

The model reserves PAD = 0, UNK = 1, BOS = 2, EOS = 3 and is returned as a
`dera_jax.data.tokenizer.Tokenizer` (sentencepiece backend) with those ids and `add_bos=True`,
so the pipelines and samplers use it like any imported tokenizer. Training uses the
"identity" normalisation and keeps extra whitespace, so decode(encode(text)) == text for text
made of characters seen in the corpus; `byte_fallback=True` extends that to any UTF-8 text
(it needs vocab_size > 260, for the 256 byte pieces).
"""

from __future__ import annotations

import io
import os
from typing import Iterable

from dera_jax.data.tokenizer import Tokenizer

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_sentencepiece(texts: Iterable[str], model_prefix: str, *, vocab_size: int,
                        model_type: str = "unigram", character_coverage: float = 1.0,
                        byte_fallback: bool = False, hard_vocab_limit: bool = False,
                        seed_sentencepiece_size: int = 100_000,
                        max_sentence_length: int = 1 << 16,
                        user_defined_symbols: Iterable[str] = ()) -> Tokenizer:
  """Train on `texts` and write `<model_prefix>.model` (and `.vocab`); return the Tokenizer.

  Args:
    texts: the corpus, one string per sentence/document (empty strings are skipped).
    model_prefix: output path without extension; its directory must exist.
    vocab_size: number of pieces including the 4 special ones. With `hard_vocab_limit=False`
      (the default) a corpus too small for it gives a smaller vocabulary instead of an error.
    model_type: "unigram", "bpe", "char" or "word".
    character_coverage: share of characters covered by the vocabulary (1.0 for small
      alphabets; rarer characters become UNK unless `byte_fallback`).
    byte_fallback: encode unknown characters as UTF-8 byte pieces.
    user_defined_symbols: pieces always kept whole (e.g. "TL;DR:").

  Raises:
    ValueError: bad vocab_size / model_type, an empty corpus, or a training failure (with
      sentencepiece's message).
  """
  import sentencepiece as spm

  if model_type not in ("unigram", "bpe", "char", "word"):
    raise ValueError(f"model_type={model_type!r}: accepted 'unigram', 'bpe', 'char', 'word'")
  if vocab_size < 5:
    raise ValueError(f"vocab_size={vocab_size}: must be >= 5 (4 special pieces + 1)")
  if byte_fallback and vocab_size < 261:
    raise ValueError(f"vocab_size={vocab_size}: byte_fallback needs > 260 pieces")
  directory = os.path.dirname(os.path.abspath(model_prefix))
  if not os.path.isdir(directory):
    raise ValueError(f"model_prefix={model_prefix!r}: directory {directory!r} does not exist")
  count = 0

  def sentences():
    nonlocal count
    for text in texts:
      if isinstance(text, bytes):
        text = text.decode("utf-8")
      if not isinstance(text, str):
        raise ValueError(f"corpus item {count}: expected str, found {type(text).__name__}")
      if text:
        count += 1
        yield text

  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        byte_fallback=byte_fallback, hard_vocab_limit=hard_vocab_limit,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, seed_sentencepiece_size=seed_sentencepiece_size,
        max_sentence_length=max_sentence_length, num_threads=1,
        user_defined_symbols=list(user_defined_symbols), minloglevel=2)
  except RuntimeError as e:
    if count == 0:
      raise ValueError("the corpus is empty: nothing to train a tokenizer on") from e
    raise ValueError(f"sentencepiece training failed: {e}") from e
  if count == 0:
    raise ValueError("the corpus is empty: nothing to train a tokenizer on")
  data = model.getvalue()
  with open(model_prefix + ".model", "wb") as f:
    f.write(data)
  processor = spm.SentencePieceProcessor()
  processor.LoadFromSerializedProto(data)
  with open(model_prefix + ".vocab", "w", encoding="utf-8") as f:
    for i in range(processor.get_piece_size()):
      f.write(f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n")
  return _wrap(processor)


def load_sentencepiece(path: str) -> Tokenizer:
  """The Tokenizer of a model file written by `train_sentencepiece` (or any sentencepiece
  model with BOS/EOS pieces; PAD defaults to EOS when the model has none)."""
  import sentencepiece as spm

  if not os.path.exists(path):
    raise ValueError(f"sentencepiece model {path!r} does not exist")
  processor = spm.SentencePieceProcessor()
  try:
    processor.Load(path)
  except (OSError, RuntimeError) as e:
    raise ValueError(f"{path}: not a valid sentencepiece model ({e})") from e
  return _wrap(processor)


def _wrap(processor) -> Tokenizer:
  bos, eos, pad = processor.bos_id(), processor.eos_id(), processor.pad_id()
  if eos < 0:
    raise ValueError("the sentencepiece model has no EOS piece")
  return Tokenizer(processor, bos_id=bos if bos >= 0 else None, eos_ids=(eos,),
                   pad_id=pad if pad >= 0 else None, add_bos=bos >= 0)
