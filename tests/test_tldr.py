"""The TL;DR builder over small files in the summarize-from-feedback format."""

import json
import os

import pytest
import tensorflow_datasets as tfds

from dera_jax.data import builders, tldr


def _post(i, split="train"):
  return {"id": f"{split}{i}", "subreddit": "relationships", "title": f"title {i}",
          "post": f"my post number {i}\nsecond line", "summary": f" summary {i}"}


def _comparison(i, choice, split=None):
  record = {"info": {"id": f"c{i}", "post": f"post {i}", "title": f"t{i}", "subreddit": "tifu"},
            "summaries": [{"text": f" first {i}", "policy": "sup1", "note": None},
                          {"text": f" second {i}", "policy": "ref"}],
            "choice": choice, "worker": "w", "batch": "batch3"}
  if split:
    record["split"] = split
  return record


def _write(path, objects):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for obj in objects:
      f.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  root = tmp_path_factory.mktemp("tldr")
  manual = str(root / "manual")
  _write(f"{manual}/train.jsonl", [_post(i) for i in range(5)])
  _write(f"{manual}/valid.jsonl", [_post(i, "valid") for i in range(2)])
  _write(f"{manual}/test.jsonl", [_post(i, "test") for i in range(3)])
  _write(f"{manual}/comparisons/batch1.json",
         [_comparison(0, 1, "train"), _comparison(1, 0, "train"), _comparison(2, 1, "valid1")])
  _write(f"{manual}/comparisons/batch2.json", [_comparison(3, 0, "valid2"), ""])
  return manual, str(root / "data")


def test_sft_config(release):
  manual, data_dir = release
  sources = tldr.prepare_tldr("sft", manual_dir=manual, data_dir=data_dir)
  assert {k: len(v) for k, v in sources.items()} == {"train": 5, "valid": 2, "test": 3}
  assert sources["train"][3] == _post(3)
  example = tldr.sft_example(sources["test"][1])
  assert example == {"prompt": "SUBREDDIT: r/relationships\nTITLE: title 1\n"
                               "POST: my post number 1\nsecond line\nTL;DR:",
                     "response": " summary 1"}
  # read back in "another process": tfds.data_source by name/config
  raw = tfds.data_source("tldr/sft", data_dir=data_dir)
  assert raw["valid"][1]["id"] == b"valid1"
  assert builders.load_source("tldr/sft", split="train", data_dir=data_dir)[0]["id"] == "train0"


def test_comparisons_config(release):
  manual, data_dir = release
  sources = tldr.prepare_tldr("comparisons", manual_dir=manual, data_dir=data_dir)
  assert {k: len(v) for k, v in sources.items()} == {"train": 2, "valid1": 1, "valid2": 1}
  record = sources["train"][0]
  assert record["summaries"] == [" first 0", " second 0"] and record["choice"] == 1
  assert record["policies"] == ["sup1", "ref"] and record["post"] == "post 0"
  pair = tldr.comparison_example(record)
  assert pair["chosen"] == " second 0" and pair["rejected"] == " first 0"
  assert pair["prompt"].endswith("POST: post 0\nTL;DR:")
  assert tldr.comparison_example(sources["train"][1])["chosen"] == " first 1"


def test_comparison_split_from_file_stem(tmp_path):
  _write(f"{tmp_path}/comparisons/train.jsonl", [_comparison(0, 0)])
  assert list(tldr.comparison_splits(str(tmp_path))) == ["train"]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("summary"), r"missing field 'summary'"),
    (lambda r: r.update(title=7), r"field 'title' should be a string, found int"),
])
def test_sft_bad_record_names_file_and_line(tmp_path, mutate, message):
  bad = _post(1)
  mutate(bad)
  path = f"{tmp_path}/train.jsonl"
  _write(path, [_post(0), "", bad])
  with pytest.raises(ValueError, match=rf"{path} line 3: {message}"):
    tldr.sft_splits(str(tmp_path))


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("choice"), r"missing field 'choice'"),
    (lambda r: r.update(choice="1"), r"field 'choice' should be 0 or 1"),
    (lambda r: r["info"].pop("post"), r"missing field 'info.post'"),
    (lambda r: r["summaries"][1].update(text=None), r"field 'summaries\[1\].text' should be a"),
    (lambda r: r.update(summaries=[{"text": "a"}]), r"field 'summaries' should be a list of 2"),
    (lambda r: r.pop("info"), r"missing field 'info'"),
])
def test_comparison_bad_record_names_file_and_line(tmp_path, mutate, message):
  bad = _comparison(1, 0, "train")
  mutate(bad)
  path = f"{tmp_path}/comparisons/batch7.json"
  _write(path, [_comparison(0, 1, "train"), bad])
  with pytest.raises(ValueError, match=rf"{path} line 2: {message}"):
    tldr.comparison_splits(str(tmp_path))


def test_bad_json_and_missing_files(tmp_path):
  _write(f"{tmp_path}/train.jsonl", ['{"id": "x",'])
  with pytest.raises(ValueError, match=r"train.jsonl line 1: not valid JSON"):
    tldr.sft_splits(str(tmp_path))
  with pytest.raises(ValueError, match="no TL;DR SFT files"):
    tldr.sft_splits(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="no TL;DR comparison files"):
    tldr.comparison_splits(str(tmp_path))
  with pytest.raises(ValueError, match="config='x'"):
    tldr.prepare_tldr("x", manual_dir=str(tmp_path), data_dir=str(tmp_path))


def test_bad_record_stops_the_builder_before_writing(tmp_path):
  bad = _post(1)
  bad["post"] = ["not", "text"]
  _write(f"{tmp_path}/manual/train.jsonl", [_post(0), bad])
  with pytest.raises(ValueError, match=r"train.jsonl line 2: field 'post'"):
    tldr.prepare_tldr("sft", manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "d"))
  assert not os.path.exists(tmp_path / "d" / "tldr" / "sft" / "1.0.0")


def test_cnndm_comparison_uses_the_article():
  record = tldr.parse_comparison_record(
      {"info": {"id": "a1", "article": "the article", "post": None, "site": "dailymail"},
       "summaries": [{"text": "x"}, {"text": "y"}], "choice": 1}, "f line 1")
  assert (record["post"], record["title"], record["subreddit"]) == ("the article", "", "")


def test_tldr_sources_feed_the_pipelines(release):
  from dera_jax.data import pipeline
  from dera_jax.data.tokenizer import ByteTokenizer

  manual, data_dir = release
  tok = ByteTokenizer()
  sft = tldr.prepare_tldr("sft", manual_dir=manual, data_dir=data_dir)["train"]
  batch = pipeline.sft_pipeline(sft, tok, batch_size=2, max_length=128, shard_index=0,
                                shard_count=1, transform=tldr.sft_example)[0]
  assert batch["tokens"].shape == (2, 128)
  response = batch["tokens"][0][batch["loss_mask"][0]]
  assert tok.decode(response).startswith(" summary ")
  pairs = tldr.prepare_tldr("comparisons", manual_dir=manual, data_dir=data_dir)["train"]
  batch = pipeline.preference_pipeline(pairs, tok, batch_size=2, max_length=128, shuffle=False,
                                       shard_index=0, shard_count=1,
                                       transform=tldr.comparison_example)[0]
  assert tok.decode(batch["chosen_tokens"][0][batch["chosen_loss_mask"][0]]) == " second 0"
  prompts = pipeline.prompt_pipeline(sft, tok, batch_size=2, max_prompt_length=128,
                                     shard_index=0, shard_count=1,
                                     transform=tldr.prompt_example)[0]
  assert tok.decode(prompts["prompt_tokens"][0]).endswith("TL;DR:")
