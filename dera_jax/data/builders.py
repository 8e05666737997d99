"""TFDS builders that write `array_record` files without TensorFlow, and their readers.

TFDS 4.9 prepares and reads `array_record` datasets with NumPy alone: a
`tfds.core.GeneratorBasedBuilder` built with `file_format="array_record"` serialises its
examples through `tfds.features` (Text, Scalar, Tensor, Sequence — all usable without TF),
and `tfds.data_source(name, data_dir=...)` / `builder.as_data_source()` read them back as
random-access sources that grain consumes directly. Three things must be avoided, because
they reach for TensorFlow or the network: `dataset_info_from_configs` (it reads package
metadata files; use `tfds.core.DatasetInfo(builder=self, ...)`), `as_dataset` (a tf.data
pipeline) and `tfds.list_builders` (the community index).

A dataset is described by a *schema*: field name -> one of

    "text", "int", "float", "bool", "list[text]", "list[int]", "list[float]", "list[bool]"

stored as Text, Scalar(int64 / float32 / bool), Sequence(Text) and Tensor([None], …).
Records read back through `RecordSource` come decoded: text as `str`, numbers as Python
scalars, numeric lists as 1-D NumPy arrays, text lists as `list[str]`.

    splits = {"train": lambda: ({"prompt": p, "response": r} for p, r in pairs)}
    sources = build_dataset("my_task", {"prompt": "text", "response": "text"}, splits,
                            data_dir="/tmp/tfds")
    sources["train"][0]  # {"prompt": "...", "response": "..."}
    load_source("my_task", split="train", data_dir="/tmp/tfds")   # same, in another process

Examples keep their generator order (`disable_shuffling=True`); the grain pipelines shuffle.
"""

from __future__ import annotations

import os
import types
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

FIELD_TYPES = ("text", "int", "float", "bool", "list[text]", "list[int]", "list[float]",
               "list[bool]")
Schema = Mapping[str, str]
SplitRecords = Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]]

_NUMPY_DTYPES = {"int": np.int64, "float": np.float32, "bool": np.bool_}


def check_schema(schema: Schema) -> dict[str, str]:
  """The schema as a plain dict; ValueError naming the field whose type is not accepted."""
  if not schema:
    raise ValueError("schema is empty: give at least one field")
  out = {}
  for field, kind in schema.items():
    if not isinstance(field, str) or not field.isidentifier():
      raise ValueError(f"schema field {field!r}: names must be Python identifiers")
    if kind not in FIELD_TYPES:
      raise ValueError(f"schema field {field!r} has type {kind!r}; accepted: {FIELD_TYPES}")
    out[field] = kind
  return out


def features_for(schema: Schema) -> tfds.features.FeaturesDict:
  """The `tfds.features.FeaturesDict` storing records of `schema` (no TensorFlow needed)."""
  features = {}
  for field, kind in check_schema(schema).items():
    if kind == "text":
      features[field] = tfds.features.Text()
    elif kind == "list[text]":
      features[field] = tfds.features.Sequence(tfds.features.Text())
    elif kind.startswith("list["):
      features[field] = tfds.features.Tensor(shape=(None,), dtype=_NUMPY_DTYPES[kind[5:-1]])
    else:
      features[field] = tfds.features.Scalar(dtype=_NUMPY_DTYPES[kind])
  return tfds.features.FeaturesDict(features)


def _check_value(kind: str, value: Any) -> str | None:
  """None if `value` fits `kind`, else what is wrong with it."""
  def scalar_ok(k, v):
    if k == "text":
      return isinstance(v, str)
    if k == "bool":
      return isinstance(v, (bool, np.bool_))
    if k == "int":
      return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_))

  if kind.startswith("list["):
    inner = kind[5:-1]
    if isinstance(value, np.ndarray):
      if value.ndim != 1:
        return f"expected a 1-D list of {inner}, found an array of shape {value.shape}"
      value = value.tolist()
    if not isinstance(value, (list, tuple)):
      return f"expected a list of {inner}, found {type(value).__name__}"
    for i, item in enumerate(value):
      if not scalar_ok(inner, item):
        return f"item {i} should be {inner}, found {type(item).__name__} {item!r:.60}"
    return None
  if not scalar_ok(kind, value):
    return f"expected {kind}, found {type(value).__name__} {value!r:.60}"
  return None


def validate_record(record: Any, schema: Schema, *, where: str) -> dict[str, Any]:
  """`record` checked against `schema`; ValueError naming `where` and the field otherwise.

  `where` says which record this is ("data/train.jsonl line 12", "split 'train' record 3").
  Fields not in the schema are an error too (they would be silently dropped).
  """
  if not isinstance(record, Mapping):
    raise ValueError(f"{where}: expected a dict of fields, found {type(record).__name__}")
  missing = [f for f in schema if f not in record]
  if missing:
    raise ValueError(f"{where}: missing field(s) {missing}; the schema is {dict(schema)}")
  extra = [f for f in record if f not in schema]
  if extra:
    raise ValueError(f"{where}: field(s) {extra} are not in the schema {dict(schema)}")
  out = {}
  for field, kind in schema.items():
    problem = _check_value(kind, record[field])
    if problem:
      raise ValueError(f"{where}: field {field!r}: {problem}")
    value = record[field]
    out[field] = list(value) if kind.startswith("list[") else value
  return out


class RecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder for records of a schema; subclasses say where the records come from.

  Subclasses set `SCHEMA` (or override `schema()`), `VERSION`, optionally `DESCRIPTION`, and
  implement `split_records(dl_manager) -> {split name: iterable of records}`. Records are
  validated against the schema while they are written (`ValueError` naming the split and the
  record number). Build with `file_format="array_record"` (the default here).
  """

  VERSION = tfds.core.Version("1.0.0")
  SCHEMA: Schema = {}
  DESCRIPTION = ""

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    """None: these builders download nothing, so they keep no checksums file beside their
    code. (TFDS' own lookup of the code path needs the `importlib_resources` backport for
    classes defined in installed packages.)"""
    return None

  def schema(self) -> Schema:
    return self.SCHEMA

  def split_records(self, dl_manager) -> Mapping[str, SplitRecords]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=features_for(self.schema()), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    splits = self.split_records(dl_manager)
    if not splits:
      raise ValueError(f"dataset {self.name!r}: no splits to write")
    return {name: self._generate_examples(name, records) for name, records in splits.items()}

  def _generate_examples(self, split: str, records: SplitRecords):
    schema = check_schema(self.schema())
    if callable(records):
      records = records()
    for i, record in enumerate(records):
      yield i, validate_record(record, schema,
                               where=f"dataset {self.name!r} split {split!r} record {i}")


def make_builder(name: str, schema: Schema, splits: Mapping[str, SplitRecords], *,
                 data_dir: str, version: str = "1.0.0", description: str = "",
                 **builder_kwargs) -> RecordBuilder:
  """A builder for the records `splits` gives ({split: iterable or zero-argument callable}).

  `name` must be snake_case (TFDS' rule); the class is not registered, so any number of
  datasets can be made in one process — `load_source` reads them back from `data_dir`.
  Call `.download_and_prepare()` then `.as_data_source()`, or use `build_dataset`.
  """
  schema = check_schema(schema)
  if not splits:
    raise ValueError(f"dataset {name!r}: `splits` is empty")

  def body(ns):
    ns.update(name=name, VERSION=tfds.core.Version(version), SCHEMA=schema,
              DESCRIPTION=description,
              split_records=lambda self, dl_manager: dict(splits))

  cls = types.new_class(_class_name(name), (RecordBuilder,), {"skip_registration": True}, body)
  return cls(data_dir=data_dir, **builder_kwargs)


def build_dataset(name: str, schema: Schema, splits: Mapping[str, SplitRecords], *,
                  data_dir: str, version: str = "1.0.0", description: str = ""
                  ) -> dict[str, "RecordSource"]:
  """Write (if not yet written) and open a dataset: {split: RecordSource}."""
  builder = make_builder(name, schema, splits, data_dir=data_dir, version=version,
                         description=description)
  builder.download_and_prepare()
  return sources_of(builder)


def sources_of(builder: tfds.core.DatasetBuilder) -> dict[str, "RecordSource"]:
  """{split: RecordSource} of a prepared builder."""
  return {split: RecordSource(source) for split, source in builder.as_data_source().items()}


def load_source(name: str, *, split: str, data_dir: str) -> "RecordSource":
  """Open split `split` of the prepared dataset `name` ("name", "name/config" or
  "name/config:version") under `data_dir` with `tfds.data_source`.

  Raises ValueError naming the directory when the dataset has not been prepared there
  (instead of TFDS' fallback to its community index, which needs TensorFlow).
  """
  base = name.split(":")[0]
  if not os.path.isdir(os.path.join(data_dir, *base.split("/"))):
    raise ValueError(f"dataset {name!r} is not prepared under {data_dir!r} (no "
                     f"{os.path.join(data_dir, *base.split('/'))}); build it first")
  sources = tfds.data_source(name, data_dir=data_dir)
  if split not in sources:
    raise ValueError(f"dataset {name!r} has no split {split!r}; it has {sorted(sources)}")
  return RecordSource(sources[split])


class RecordSource:
  """A random-access source of decoded records over a TFDS data source (grain-compatible).

  `len(source)`, `source[i]` and `source.__getitems__([i, j, ...])`; text comes back as
  `str`, text lists as `list[str]`, numeric lists as 1-D arrays, scalars as Python numbers.
  """

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    n = len(self)
    index = int(index)
    if not -n <= index < n:
      raise IndexError(f"record {index} out of range for a source of {n} records")
    return decode_record(self.source[index % n])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self[i] for i in indices]

  def __iter__(self):
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return f"RecordSource({self.source!r}, {len(self)} records)"


def decode_record(record: Mapping[str, Any]) -> dict[str, Any]:
  """A record as TFDS' NumPy decoding returns it, with bytes -> str and lists -> arrays."""
  return {k: _decode_value(v) for k, v in record.items()}


def _decode_value(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    if value.dtype.kind in "SO":
      return [_decode_value(v) for v in value.tolist()]
    return value
  if isinstance(value, (list, tuple)):
    if value and all(isinstance(v, (bytes, str)) for v in value):
      return [_decode_value(v) for v in value]
    return np.asarray(value) if value else []
  if isinstance(value, np.generic):
    return value.item()
  return value


def _class_name(name: str) -> str:
  if not name or not name.replace("_", "a").isalnum() or name != name.lower() or \
      name[0].isdigit():
    raise ValueError(f"dataset name {name!r}: use snake_case (lower-case letters, digits, _)")
  return "".join(part.capitalize() for part in name.split("_")) or "Dataset"
