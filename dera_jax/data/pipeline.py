"""Grain input pipelines: records + tokenizer -> batches of NumPy arrays.

Three batch formats (dicts of NumPy arrays; B = batch size, T = max_length, P = max_prompt_length):

  SFT (`sft_pipeline`, records {"prompt", "response"}):
    tokens [B, T] int32     [BOS] prompt response EOS, right-padded with the pad id
    mask [B, T] bool        True on real tokens (prompt, response, EOS)
    loss_mask [B, T] bool   True on the response tokens and EOS
    (as `dera_jax.training.sft.SFTBatch`). With `pack=True` each row holds several examples
    and two more arrays say where they are (grain's first-fit packing):
    segment_ids [B, T] int32  1, 2, … per example in the row, 0 on padding
    positions [B, T] int32    position of each token inside its own example
    — the model must then attend within a segment only and take these positions.
  Preference pairs (`preference_pipeline`, records {"prompt", "chosen", "rejected"}):
    chosen_tokens, chosen_mask, chosen_loss_mask, rejected_tokens, rejected_mask,
    rejected_loss_mask — each [B, T], same conventions as SFT (padding only, no packing).
  RL prompts (`prompt_pipeline`, records {"prompt"}):
    prompt_tokens [B, P] int32  [BOS] prompt, LEFT-padded with the pad id
    prompt_mask [B, P] bool     True on real tokens
    prompt_index [B] int32      index of the record in the source (a stable row id)

Records may carry other fields; `transform` maps a raw record (e.g. a TL;DR one, see
`dera_jax.data.tldr`) to these. Text may be str or UTF-8 bytes.

Order, sharding, epochs. For epoch e the source's n records are permuted by a seeded
random-access permutation (grain's `index_shuffle`, seed derived from (seed, e); identity
when `shuffle=False`). Process `shard_index` of `shard_count` takes positions
shard_index, shard_index + shard_count, … of that permutation: the shards of one epoch are
disjoint and cover the dataset. With `even_shards=True` (the default, so that every process
runs the same number of steps) each shard takes n // shard_count records per epoch, and the
remainder — different records each epoch — is left out. Batches never straddle epochs: an
epoch has m // B batches (`drop_remainder=True`) or ceil(m / B), the last one smaller.
`num_epochs=None` repeats forever.

Determinism and resume. Batch k is a pure function of (source, tokenizer, options, k):
two runs give identical batches, `pipeline[k]` reads any batch directly and
`pipeline.iterator(start_step=k)` resumes at batch k. The iterators are grain
`DatasetIterator`s, so `get_state()` / `set_state()` work too (and are the fast way to
resume a packed pipeline, whose `iterator(start_step)` replays the skipped batches).

Lengths. `overlong="error"` (the default) raises ValueError naming the record when
[BOS] prompt response EOS exceeds max_length (or a prompt exceeds max_prompt_length).
`overlong="truncate"` keeps the response whole and cuts the prompt from the left (keeping
BOS and at least the prompt's last token); if that is still too long, the response is cut
from the right (losing its EOS). Prompts alone are cut from the left, keeping BOS.
`validate="all"` (the default) encodes every record once at start-up so these errors
come before training begins; "first_batch" checks only batch 0 (for very large datasets).

Start-up errors (ValueError): an empty source or shard, batch_size larger than the shard
with drop_remainder, bad shard index/count, a tokenizer without EOS.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import grain
import numpy as np

Record = Mapping[str, Any]
Batch = dict[str, np.ndarray]
_ROUNDS = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineOptions:
  """Options common to every pipeline (see the module docstring).

  batch_size: rows per batch (per process).
  seed: shuffling (and bin) seed; every process must use the same one.
  shuffle: permute the records each epoch.
  num_epochs: epochs to run, None for forever.
  drop_remainder: drop each epoch's last partial batch.
  shard_index, shard_count: this process's shard; None -> jax.process_index()/process_count().
  even_shards: equal-sized shards (drop the n % shard_count remainder each epoch).
  overlong: "error" or "truncate".
  validate: "all", "first_batch" or "none".
  num_threads, prefetch: grain read threads and prefetch buffer of the iterators.
  """
  batch_size: int
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = 1
  drop_remainder: bool = True
  shard_index: int | None = None
  shard_count: int | None = None
  even_shards: bool = True
  overlong: str = "error"
  validate: str = "all"
  num_threads: int = 1
  prefetch: int = 2


class Pipeline:
  """Batches 0, 1, … of one process's shard of a random-access source.

  Attributes:
    steps_per_epoch: batches per epoch (padded pipelines; None when packed).
    num_batches: batches in all (None when infinite or packed).
  """

  def __init__(self, source, encode: Callable[[int, Record], dict[str, np.ndarray]],
               options: PipelineOptions, *, pack_length: int | None = None, pad_id: int = 0):
    self.source = source
    self._pad_id = pad_id
    self.options = options
    self._encode = encode
    self._pack_length = pack_length
    o = options
    if o.batch_size < 1:
      raise ValueError(f"batch_size={o.batch_size}: must be >= 1")
    if o.num_epochs is not None and o.num_epochs < 1:
      raise ValueError(f"num_epochs={o.num_epochs}: must be >= 1 or None (forever)")
    if o.overlong not in ("error", "truncate"):
      raise ValueError(f"overlong={o.overlong!r}: accepted 'error' or 'truncate'")
    if o.validate not in ("all", "first_batch", "none"):
      raise ValueError(f"validate={o.validate!r}: accepted 'all', 'first_batch' or 'none'")
    if o.shard_index is None or o.shard_count is None:
      import jax
      shard_index = jax.process_index() if o.shard_index is None else o.shard_index
      shard_count = jax.process_count() if o.shard_count is None else o.shard_count
    else:
      shard_index, shard_count = o.shard_index, o.shard_count
    if shard_count < 1 or not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index={shard_index}, shard_count={shard_count}: need "
                       "shard_count >= 1 and 0 <= shard_index < shard_count")
    self.shard_index, self.shard_count = shard_index, shard_count
    self.num_records = n = len(source)
    if n == 0:
      raise ValueError("the dataset is empty: no records to make batches of")
    self.shard_size = m = (n // shard_count if o.even_shards
                           else len(range(shard_index, n, shard_count)))
    if m == 0:
      raise ValueError(f"shard {shard_index} of {shard_count} is empty: the dataset has only "
                       f"{n} records")
    if o.drop_remainder and o.batch_size > m:
      raise ValueError(f"batch_size={o.batch_size} is larger than the {m} records of this "
                       f"shard ({n} records in {shard_count} shard(s)); lower batch_size or "
                       "set drop_remainder=False")
    self._epoch_seeds: dict[int, int] = {}
    if pack_length is None:
      self.steps_per_epoch = m // o.batch_size if o.drop_remainder else -(-m // o.batch_size)
      self.num_batches = None if o.num_epochs is None else o.num_epochs * self.steps_per_epoch
    else:
      self.steps_per_epoch = self.num_batches = None
    if o.validate == "all":
      for i in range(n):
        encode(i, source[i])
    elif o.validate == "first_batch":
      if pack_length is None:
        self[0]
      else:
        next(iter(self.iterator()))

  # ------------------------------------------------------------------ indices
  def _epoch_seed(self, epoch: int) -> int:
    if epoch not in self._epoch_seeds:
      state = np.random.SeedSequence([self.options.seed, epoch]).generate_state(1)[0]
      self._epoch_seeds[epoch] = int(state)
    return self._epoch_seeds[epoch]

  def record_index(self, position: int) -> int:
    """The source index of this shard's `position`-th example (counting across epochs)."""
    epoch, r = divmod(int(position), self.shard_size)
    g = self.shard_index + self.shard_count * r
    if not self.options.shuffle or self.num_records == 1:
      return g
    return int(grain.experimental.index_shuffle(g, self.num_records - 1,
                                                self._epoch_seed(epoch), _ROUNDS))

  def batch_indices(self, step: int) -> list[int]:
    """Source indices of the records of batch `step` (padded pipelines)."""
    if self._pack_length is not None:
      raise TypeError("a packed pipeline has no fixed record -> batch mapping")
    if step < 0 or (self.num_batches is not None and step >= self.num_batches):
      raise IndexError(f"batch {step} out of range (the pipeline has {self.num_batches})")
    epoch, b = divmod(int(step), self.steps_per_epoch)
    start = b * self.options.batch_size
    stop = min(start + self.options.batch_size, self.shard_size)
    return [self.record_index(epoch * self.shard_size + r) for r in range(start, stop)]

  # ------------------------------------------------------------------ batches
  def __getitem__(self, step: int) -> Batch:
    """Batch `step` (padded pipelines)."""
    indices = self.batch_indices(step)
    if hasattr(self.source, "__getitems__"):  # one read for the batch (TFDS / grain sources)
      records = self.source.__getitems__(indices)
    else:
      records = [self.source[i] for i in indices]
    rows = [self._encode(i, record) for i, record in zip(indices, records)]
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

  def __len__(self) -> int:
    if self.num_batches is None:
      raise TypeError("an infinite or packed pipeline has no length")
    return self.num_batches

  def dataset(self, start_step: int = 0) -> grain.IterDataset:
    """The grain dataset of batches start_step, start_step + 1, …"""
    read = grain.ReadOptions(num_threads=self.options.num_threads,
                             prefetch_buffer_size=self.options.prefetch)
    if self._pack_length is None:
      stop = self.num_batches if self.num_batches is not None else 2 ** 62
      return grain.MapDataset.range(start_step, stop).map(self.__getitem__).to_iter_dataset(read)
    o = self.options
    stop = 2 ** 62 if o.num_epochs is None else o.num_epochs * self.shard_size
    examples = grain.MapDataset.range(0, stop).map(
        lambda j: self._encode(self.record_index(j), self.source[self.record_index(j)]))
    T = self._pack_length
    packed = grain.experimental.FirstFitPackIterDataset(
        examples.to_iter_dataset(read), length_struct={"tokens": T, "mask": T, "loss_mask": T},
        num_packing_bins=o.batch_size, seed=o.seed, shuffle_bins=False)
    pad_id = self._pad_id
    batches = packed.batch(o.batch_size, drop_remainder=o.drop_remainder).map(
        lambda batch: _packed_names(batch, pad_id))
    if start_step:
      batches = _Skip(batches, start_step)
    return batches

  def iterator(self, start_step: int = 0) -> Iterator[Batch]:
    """A grain iterator over batches from `start_step`. Its `get_state()` can be given to
    `set_state()` of an iterator made with the same `start_step`."""
    return iter(self.dataset(start_step))

  def __iter__(self) -> Iterator[Batch]:
    return self.iterator()


class _Skip(grain.IterDataset):
  """Drops the first `count` elements of its parent (replaying them)."""

  def __init__(self, parent, count: int):
    super().__init__(parent)
    self._count = count

  def __iter__(self):
    it = self._parent.__iter__()
    for _ in range(self._count):
      next(it)
    return it


def _packed_names(batch: Batch, pad_id: int) -> Batch:
  segment_ids = batch["tokens_segment_ids"].astype(np.int32)
  tokens = np.where(segment_ids > 0, batch["tokens"], pad_id).astype(np.int32)
  return {"tokens": tokens, "mask": batch["mask"].astype(bool),
          "loss_mask": batch["loss_mask"].astype(bool),
          "segment_ids": segment_ids,
          "positions": batch["tokens_positions"].astype(np.int32)}


# ---------------------------------------------------------------------- encoding

def _text(record: Record, key: str, index: int) -> str:
  if key not in record:
    raise ValueError(f"record {index}: missing field {key!r} (it has {sorted(record)})")
  value = record[key]
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if not isinstance(value, str):
    raise ValueError(f"record {index}: field {key!r} should be text, found "
                     f"{type(value).__name__}")
  return value


def _special_ids(tokenizer) -> tuple[int | None, int, int]:
  eos_ids = tuple(getattr(tokenizer, "eos_ids", ()) or ())
  if not eos_ids:
    raise ValueError("the tokenizer has no EOS id (eos_ids is empty): responses need one")
  return getattr(tokenizer, "bos_id", None), int(eos_ids[0]), int(tokenizer.pad_id)


def _fit_sequence(prompt: list[int], response: list[int], max_length: int, overlong: str,
                  bos_id: int | None, index: int) -> tuple[list[int], list[int]]:
  if len(prompt) + len(response) <= max_length:
    return prompt, response
  if overlong == "error":
    raise ValueError(f"record {index}: prompt + response + EOS is {len(prompt) + len(response)} "
                     f"tokens, more than max_length={max_length} (use overlong='truncate' or "
                     "a larger max_length)")
  head = prompt[:1] if prompt and bos_id is not None and prompt[0] == bos_id else []
  body = prompt[len(head):]
  keep = max(max_length - len(response) - len(head), min(len(body), 1))
  prompt = head + (body[len(body) - keep:] if keep else [])
  return prompt, response[:max_length - len(prompt)]


def _sequence(tokenizer, prompt_text: str, response_text: str, max_length: int,
              overlong: str, index: int) -> dict[str, np.ndarray]:
  """Unpadded tokens/mask/loss_mask of [BOS] prompt response EOS."""
  bos_id, eos_id, _ = _special_ids(tokenizer)
  prompt = list(tokenizer.encode(prompt_text))
  response = list(tokenizer.encode(response_text, add_special_tokens=False)) + [eos_id]
  prompt, response = _fit_sequence(prompt, response, max_length, overlong, bos_id, index)
  tokens = np.asarray(prompt + response, np.int32)
  loss_mask = np.zeros(len(tokens), bool)
  loss_mask[len(prompt):] = True
  return {"tokens": tokens, "mask": np.ones(len(tokens), bool), "loss_mask": loss_mask}


def _pad_right(row: dict[str, np.ndarray], length: int, pad_id: int) -> dict[str, np.ndarray]:
  n = len(row["tokens"])
  tokens = np.full(length, pad_id, np.int32)
  tokens[:n] = row["tokens"]
  mask = np.zeros(length, bool)
  mask[:n] = True
  loss_mask = np.zeros(length, bool)
  loss_mask[:n] = row["loss_mask"]
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def _check_length(name: str, value: int, minimum: int = 2) -> None:
  if not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}")


def _options(batch_size, kwargs) -> PipelineOptions:
  try:
    return PipelineOptions(batch_size=batch_size, **kwargs)
  except TypeError as e:
    raise ValueError(f"unknown pipeline option: {e}; accepted: "
                     f"{[f.name for f in dataclasses.fields(PipelineOptions)]}") from e


def sft_pipeline(source, tokenizer, *, batch_size: int, max_length: int, pack: bool = False,
                 transform: Callable[[Record], Record] | None = None, **options) -> Pipeline:
  """SFT batches {"tokens", "mask", "loss_mask"} [B, max_length] (+ "segment_ids",
  "positions" when `pack`) from records {"prompt", "response"}.

  `options` are `PipelineOptions` fields (seed, shuffle, num_epochs, drop_remainder,
  shard_index, shard_count, even_shards, overlong, validate, num_threads, prefetch).
  """
  _check_length("max_length", max_length)
  opts = _options(batch_size, options)
  _, _, pad_id = _special_ids(tokenizer)

  def encode(index: int, record: Record) -> dict[str, np.ndarray]:
    record = transform(record) if transform else record
    row = _sequence(tokenizer, _text(record, "prompt", index), _text(record, "response", index),
                    max_length, opts.overlong, index)
    return row if pack else _pad_right(row, max_length, pad_id)

  return Pipeline(source, encode, opts, pack_length=max_length if pack else None,
                  pad_id=pad_id)


def preference_pipeline(source, tokenizer, *, batch_size: int, max_length: int,
                        transform: Callable[[Record], Record] | None = None,
                        **options) -> Pipeline:
  """Preference batches {"chosen_tokens", "chosen_mask", "chosen_loss_mask",
  "rejected_tokens", "rejected_mask", "rejected_loss_mask"} [B, max_length] from records
  {"prompt", "chosen", "rejected"}."""
  _check_length("max_length", max_length)
  opts = _options(batch_size, options)
  _, _, pad_id = _special_ids(tokenizer)

  def encode(index: int, record: Record) -> dict[str, np.ndarray]:
    record = transform(record) if transform else record
    prompt = _text(record, "prompt", index)
    out = {}
    for side in ("chosen", "rejected"):
      row = _pad_right(_sequence(tokenizer, prompt, _text(record, side, index), max_length,
                                 opts.overlong, index), max_length, pad_id)
      out.update({f"{side}_{k}": v for k, v in row.items()})
    return out

  return Pipeline(source, encode, opts)


def prompt_pipeline(source, tokenizer, *, batch_size: int, max_prompt_length: int,
                    transform: Callable[[Record], Record] | None = None,
                    **options) -> Pipeline:
  """RL prompt batches {"prompt_tokens" [B, P] (left-padded), "prompt_mask" [B, P],
  "prompt_index" [B]} from records {"prompt"}."""
  _check_length("max_prompt_length", max_prompt_length, minimum=1)
  opts = _options(batch_size, options)
  bos_id, _, pad_id = _special_ids(tokenizer)
  P = max_prompt_length

  def encode(index: int, record: Record) -> dict[str, np.ndarray]:
    record = transform(record) if transform else record
    ids = list(tokenizer.encode(_text(record, "prompt", index)))
    if len(ids) > P:
      if opts.overlong == "error":
        raise ValueError(f"record {index}: the prompt is {len(ids)} tokens, more than "
                         f"max_prompt_length={P} (use overlong='truncate' or a larger "
                         "max_prompt_length)")
      head = ids[:1] if bos_id is not None and ids[:1] == [bos_id] and P > 1 else []
      ids = head + ids[len(ids) - (P - len(head)):]
    tokens = np.full(P, pad_id, np.int32)
    mask = np.zeros(P, bool)
    if ids:
      tokens[P - len(ids):] = ids
      mask[P - len(ids):] = True
    return {"prompt_tokens": tokens, "prompt_mask": mask,
            "prompt_index": np.asarray(index, np.int32)}

  return Pipeline(source, encode, opts)

