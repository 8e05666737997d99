"""TFDS array_record builders without TensorFlow: round trip, tfds.data_source, errors."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dera_jax.data import builders

SCHEMA = {"prompt": "text", "k": "int", "score": "float", "ok": "bool", "tags": "list[text]",
          "ids": "list[int]", "scores": "list[float]", "flags": "list[bool]"}


def _records(n):
  return [{"prompt": f"prompt {i} – é☃", "k": i * 7 - 3, "score": i / 4, "ok": i % 2 == 0,
           "tags": [f"t{j}" for j in range(i % 3)], "ids": list(range(i)),
           "scores": [0.5 * j for j in range(i % 4)], "flags": [j % 2 == 0 for j in range(i)]}
          for i in range(n)]


def _assert_same(got, want):
  assert set(got) == set(want)
  assert got["prompt"] == want["prompt"] and got["k"] == want["k"] and got["ok"] == want["ok"]
  assert got["score"] == pytest.approx(want["score"])
  assert list(got["tags"]) == want["tags"]
  np.testing.assert_array_equal(np.asarray(got["ids"], np.int64).reshape(-1), want["ids"])
  np.testing.assert_allclose(np.asarray(got["scores"], np.float32).reshape(-1), want["scores"])
  np.testing.assert_array_equal(np.asarray(got["flags"], bool).reshape(-1), want["flags"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  train, test = _records(7), _records(3)
  sources = builders.build_dataset("toy_records", SCHEMA,
                                   {"train": train, "test": lambda: iter(test)},
                                   data_dir=data_dir)
  return data_dir, sources, train, test


def test_round_trip_keeps_order_and_values(built):
  _, sources, train, test = built
  assert sorted(sources) == ["test", "train"]
  assert len(sources["train"]) == 7 and len(sources["test"]) == 3
  for got, want in zip(sources["train"], train):
    _assert_same(got, want)
  _assert_same(sources["test"][-1], test[-1])
  assert isinstance(sources["train"][0]["prompt"], str)
  assert sources["train"][3]["ids"].dtype == np.int64
  assert [r["k"] for r in sources["train"].__getitems__([4, 1])] == [train[4]["k"], train[1]["k"]]
  with pytest.raises(IndexError):
    sources["train"][7]


def test_written_as_array_record_and_read_with_tfds_data_source(built):
  data_dir, _, train, _ = built
  files = list((tfds.core.Path(data_dir) / "toy_records" / "1.0.0").glob("*array_record*"))
  assert files, "no array_record files written"
  raw = tfds.data_source("toy_records", data_dir=data_dir)
  assert len(raw["train"]) == 7
  assert raw["train"][2]["prompt"] == train[2]["prompt"].encode()  # raw TFDS: bytes
  _assert_same(builders.decode_record(raw["train"][5]), train[5])
  _assert_same(builders.load_source("toy_records", split="train", data_dir=data_dir)[6], train[6])


def test_no_tensorflow_needed(built):
  assert "tensorflow" not in sys.modules


def test_preparing_twice_reuses_the_files(built):
  data_dir, _, train, _ = built
  again = builders.build_dataset("toy_records", SCHEMA, {"train": [], "test": []},
                                 data_dir=data_dir)
  assert len(again["train"]) == len(train)


def test_bad_record_names_split_record_and_field(tmp_path):
  records = _records(3)
  records[2] = dict(records[2], k="three")
  with pytest.raises(ValueError, match=r"split 'train' record 2: field 'k'.*expected int"):
    builders.build_dataset("bad_records", SCHEMA, {"train": records}, data_dir=str(tmp_path))
  missing = _records(2)
  del missing[1]["tags"]
  with pytest.raises(ValueError, match=r"record 1: missing field\(s\) \['tags'\]"):
    builders.build_dataset("bad_records2", SCHEMA, {"train": missing}, data_dir=str(tmp_path))
  nested = _records(2)
  nested[0]["ids"] = [1, "x"]
  with pytest.raises(ValueError, match=r"record 0: field 'ids': item 1 should be int"):
    builders.build_dataset("bad_records3", SCHEMA, {"train": nested}, data_dir=str(tmp_path))


def test_schema_and_name_errors(tmp_path):
  with pytest.raises(ValueError, match=r"field 'x' has type 'str'"):
    builders.check_schema({"x": "str"})
  with pytest.raises(ValueError, match="schema is empty"):
    builders.check_schema({})
  with pytest.raises(ValueError, match="snake_case"):
    builders.make_builder("BadName", {"x": "text"}, {"train": []}, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="is not prepared"):
    builders.load_source("never_built", split="train", data_dir=str(tmp_path))


def test_subclass_builder(tmp_path):
  class Squares(builders.RecordBuilder, skip_registration=True):
    name = "squares_for_test"
    SCHEMA = {"x": "int", "y": "int"}

    def split_records(self, dl_manager):
      return {"train": [{"x": i, "y": i * i} for i in range(5)]}

  builder = Squares(data_dir=str(tmp_path))
  builder.download_and_prepare()
  source = builders.sources_of(builder)["train"]
  assert [r["y"] for r in source] == [0, 1, 4, 9, 16]
