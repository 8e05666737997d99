"""Grain pipelines: formats, determinism, resume, sharding, epochs, packing; SentencePiece."""

import sys

import numpy as np
import pytest

from dera_jax.data import builders, pipeline, sentencepiece_tokenizer
from dera_jax.data.list_task import make_examples
from dera_jax.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
T = 64
ONE = dict(shard_index=0, shard_count=1)


def _records(n):
  return [{"prompt": ex.prompt, "response": ex.response, "k": ex.num_items}
          for ex in make_examples(n, seed=3)]


def _reference_row(tokenizer, prompt, response, length):
  """Independent re-implementation of experiments/demo.py's encode() for one row."""
  p = tokenizer.encode(prompt)
  ids = p + tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_ids[0]]
  tokens = np.full(length, tokenizer.pad_id, np.int32)
  tokens[:len(ids)] = ids
  mask = np.arange(length) < len(ids)
  loss_mask = mask & (np.arange(length) >= len(p))
  return tokens, mask, loss_mask


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_sft_batch_format_matches_reference():
  records = _records(10)
  p = pipeline.sft_pipeline(records, TOK, batch_size=4, max_length=T, seed=5, **ONE)
  batch = p[1]
  assert batch["tokens"].shape == (4, T) and batch["tokens"].dtype == np.int32
  assert batch["mask"].dtype == bool and batch["loss_mask"].dtype == bool
  for row, i in enumerate(p.batch_indices(1)):
    want = _reference_row(TOK, records[i]["prompt"], records[i]["response"], T)
    for key, w in zip(("tokens", "mask", "loss_mask"), want):
      np.testing.assert_array_equal(batch[key][row], w)


def test_deterministic_for_a_seed_and_seed_matters():
  records = _records(12)
  run = lambda seed: list(pipeline.sft_pipeline(records, TOK, batch_size=3, max_length=T,
                                                seed=seed, num_epochs=2, **ONE))
  first, second = run(7), run(7)
  assert len(first) == 8
  _assert_batches_equal(first, second)
  other = run(8)
  assert any(not np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, other))


def test_resume_from_a_step_and_from_iterator_state():
  records = _records(11)
  p = pipeline.sft_pipeline(records, TOK, batch_size=2, max_length=T, seed=1, num_epochs=3,
                            **ONE)
  full = list(p)
  assert len(full) == p.num_batches == 3 * (11 // 2)
  _assert_batches_equal(list(p.iterator(start_step=6)), full[6:])
  _assert_batches_equal([p[k] for k in range(4, 9)], full[4:9])
  it = p.iterator()
  for _ in range(5):
    next(it)
  state = it.get_state()
  fresh = p.iterator()
  fresh.set_state(state)
  _assert_batches_equal(list(fresh), full[5:])


def test_epochs_are_permutations_in_new_orders():
  records = [{"prompt": str(i), "response": "x"} for i in range(20)]
  p = pipeline.prompt_pipeline(records, TOK, batch_size=5, max_prompt_length=8, seed=2,
                               num_epochs=3, **ONE)
  seen = np.concatenate([b["prompt_index"] for b in p]).reshape(3, 20)
  for epoch in seen:
    assert sorted(epoch) == list(range(20))
  assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
  unshuffled = pipeline.prompt_pipeline(records, TOK, batch_size=5, max_prompt_length=8,
                                        shuffle=False, **ONE)
  assert np.concatenate([b["prompt_index"] for b in unshuffled]).tolist() == list(range(20))


@pytest.mark.parametrize("n, even", [(20, True), (21, False)])
def test_two_shards_are_disjoint_and_cover(n, even):
  records = [{"prompt": str(i)} for i in range(n)]
  per_epoch = []
  for shard in range(2):
    p = pipeline.prompt_pipeline(records, TOK, batch_size=2, max_prompt_length=8, seed=4,
                                 num_epochs=2, drop_remainder=False, shard_index=shard,
                                 shard_count=2, even_shards=even)
    indices = [b["prompt_index"] for b in p]
    half = len(indices) // 2
    per_epoch.append([np.concatenate(indices[:half]), np.concatenate(indices[half:])])
  for epoch in range(2):
    a, b = per_epoch[0][epoch], per_epoch[1][epoch]
    assert not set(a) & set(b)
    assert sorted(np.concatenate([a, b])) == list(range(n))


def test_even_shards_drop_the_remainder():
  records = [{"prompt": str(i)} for i in range(21)]
  sizes = [pipeline.prompt_pipeline(records, TOK, batch_size=1, max_prompt_length=4,
                                    shard_index=s, shard_count=2).num_batches for s in range(2)]
  assert sizes == [10, 10]


def test_default_shard_is_the_jax_process():
  p = pipeline.prompt_pipeline([{"prompt": "a"}] * 4, TOK, batch_size=2, max_prompt_length=4)
  assert (p.shard_index, p.shard_count) == (0, 1)


def test_drop_remainder_false_keeps_the_last_partial_batch():
  p = pipeline.sft_pipeline(_records(7), TOK, batch_size=3, max_length=T,
                            drop_remainder=False, **ONE)
  assert [b["tokens"].shape[0] for b in p] == [3, 3, 1]


def test_packing_shapes_segments_and_masks():
  records = _records(30)
  p = pipeline.sft_pipeline(records, TOK, batch_size=2, max_length=96, pack=True, seed=3,
                            **ONE)
  batches = list(p)
  encoded = {}
  for r in records:
    tokens, mask, loss = _reference_row(TOK, r["prompt"], r["response"], 64)
    encoded.setdefault(tuple(tokens[mask]), []).append(loss[mask])
  segments = 0
  for b in batches:
    assert set(b) == {"tokens", "mask", "loss_mask", "segment_ids", "positions"}
    for key in b:
      assert b[key].shape == (2, 96)
    np.testing.assert_array_equal(b["mask"], b["segment_ids"] > 0)
    assert (b["tokens"][~b["mask"]] == TOK.pad_id).all()
    assert not b["loss_mask"][~b["mask"]].any()
    for row in range(2):
      for seg in range(1, b["segment_ids"][row].max() + 1):
        where = b["segment_ids"][row] == seg
        np.testing.assert_array_equal(b["positions"][row][where], np.arange(where.sum()))
        key = tuple(b["tokens"][row][where])
        assert key in encoded  # each segment is exactly one example
        np.testing.assert_array_equal(b["loss_mask"][row][where], encoded[key][0])
        segments += 1
  assert segments == 30  # one epoch: every example packed once
  assert sum(b["mask"].sum() for b in batches) == sum(
      len(TOK.encode(r["prompt"] + r["response"])) + 1 for r in records)
  # deterministic and resumable
  _assert_batches_equal(list(p.iterator(start_step=2)), batches[2:])


def test_preference_batches():
  records = [{"prompt": "Q:", "chosen": " yes", "rejected": " no no"} for _ in range(4)]
  b = pipeline.preference_pipeline(records, TOK, batch_size=4, max_length=16, **ONE)[0]
  assert set(b) == {f"{s}_{k}" for s in ("chosen", "rejected")
                    for k in ("tokens", "mask", "loss_mask")}
  for side in ("chosen", "rejected"):
    want = _reference_row(TOK, "Q:", records[0][side], 16)
    for key, w in zip(("tokens", "mask", "loss_mask"), want):
      np.testing.assert_array_equal(b[f"{side}_{key}"][0], w)


def test_prompt_batches_are_left_padded():
  records = [{"prompt": "ab"}, {"prompt": "abcd"}]
  b = pipeline.prompt_pipeline(records, TOK, batch_size=2, max_prompt_length=6,
                               shuffle=False, **ONE)[0]
  assert b["prompt_tokens"].dtype == np.int32 and b["prompt_index"].dtype == np.int32
  np.testing.assert_array_equal(b["prompt_tokens"][0], [256, 256, 256, 257, 97, 98])
  np.testing.assert_array_equal(b["prompt_mask"][1], [False, True, True, True, True, True])
  np.testing.assert_array_equal(b["prompt_index"], [0, 1])


def test_start_up_errors():
  with pytest.raises(ValueError, match="dataset is empty"):
    pipeline.sft_pipeline([], TOK, batch_size=1, max_length=T, **ONE)
  with pytest.raises(ValueError, match=r"batch_size=8 is larger than the 5 records"):
    pipeline.sft_pipeline(_records(5), TOK, batch_size=8, max_length=T, **ONE)
  with pytest.raises(ValueError, match=r"batch_size=3 is larger than the 2 records of this shard"):
    pipeline.sft_pipeline(_records(5), TOK, batch_size=3, max_length=T, shard_index=1,
                          shard_count=2)
  with pytest.raises(ValueError, match="shard_index=2"):
    pipeline.sft_pipeline(_records(5), TOK, batch_size=1, max_length=T, shard_index=2,
                          shard_count=2)
  long = _records(6)
  long[4] = {"prompt": "x" * 70, "response": "y"}
  with pytest.raises(ValueError, match=r"record 4: prompt \+ response \+ EOS is 73 tokens"):
    pipeline.sft_pipeline(long, TOK, batch_size=2, max_length=T, **ONE)
  with pytest.raises(ValueError, match=r"record 1: missing field 'response'"):
    pipeline.sft_pipeline([{"prompt": "a", "response": "b"}, {"prompt": "a"}], TOK,
                          batch_size=1, max_length=T, **ONE)
  with pytest.raises(ValueError, match=r"record 0: the prompt is 6 tokens"):
    pipeline.prompt_pipeline([{"prompt": "abcde"}], TOK, batch_size=1, max_prompt_length=4,
                             **ONE)
  with pytest.raises(ValueError, match="unknown pipeline option"):
    pipeline.sft_pipeline(_records(5), TOK, batch_size=1, max_length=T, sede=1)


def test_truncation_policy():
  records = [{"prompt": "abcdefgh", "response": "XY"}, {"prompt": "ab", "response": "Z" * 20}]
  p = pipeline.sft_pipeline(records, TOK, batch_size=2, max_length=8, shuffle=False,
                            overlong="truncate", **ONE)
  b = p[0]
  # the prompt loses its start (BOS kept), the response and EOS stay whole
  assert TOK.decode(b["tokens"][0]) == "efghXY"
  np.testing.assert_array_equal(b["tokens"][0][[0, -1]], [TOK.BOS, TOK.EOS])
  np.testing.assert_array_equal(b["loss_mask"][0], [False] * 5 + [True] * 3)
  # a response too long on its own: BOS + last prompt token, then the response cut
  assert TOK.decode(b["tokens"][1]) == "b" + "Z" * 6 and b["mask"][1].all()
  assert b["tokens"][1][-1] != TOK.EOS
  prompts = pipeline.prompt_pipeline([{"prompt": "abcdef"}], TOK, batch_size=1,
                                     max_prompt_length=4, overlong="truncate", **ONE)[0]
  np.testing.assert_array_equal(prompts["prompt_tokens"][0], [TOK.BOS, ord("d"), ord("e"),
                                                              ord("f")])


def test_pipeline_over_a_tfds_source(tmp_path):
  records = [{"prompt": r["prompt"], "response": r["response"]} for r in _records(9)]
  source = builders.build_dataset("pipeline_records", {"prompt": "text", "response": "text"},
                                  {"train": records}, data_dir=str(tmp_path))["train"]
  from_tfds = list(pipeline.sft_pipeline(source, TOK, batch_size=3, max_length=T, seed=9, **ONE))
  from_list = list(pipeline.sft_pipeline(records, TOK, batch_size=3, max_length=T, seed=9, **ONE))
  _assert_batches_equal(from_tfds, from_list)
  assert "tensorflow" not in sys.modules


def test_sentencepiece_train_round_trip_and_pipeline(tmp_path):
  corpus = [ex.prompt + ex.response for ex in make_examples(200, seed=0)]
  tok = sentencepiece_tokenizer.train_sentencepiece(iter(corpus), str(tmp_path / "sp"),
                                                    vocab_size=64)
  assert (tok.pad_id, tok.bos_id, tok.eos_ids) == (0, 2, (3,))
  assert tok.vocab_size <= 64 and tok.add_bos
  for text in corpus[:20] + ["Name some tools:  saw, rake."]:
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
    assert tok.decode(ids, skip_special_tokens=True) == text
  assert len(tok.encode(corpus[0])) < len(corpus[0])  # pieces, not characters
  loaded = sentencepiece_tokenizer.load_sentencepiece(str(tmp_path / "sp.model"))
  assert loaded.encode(corpus[3]) == tok.encode(corpus[3])
  records = [{"prompt": c.split(":")[0] + ":", "response": c.split(":")[1]} for c in corpus]
  b = pipeline.sft_pipeline(records, tok, batch_size=4, max_length=64, **ONE)[0]
  assert b["tokens"].shape == (4, 64)
  assert (b["tokens"][~b["mask"]] == 0).all()
  last = b["mask"].sum(axis=1) - 1
  assert (b["tokens"][np.arange(4), last] == 3).all()
  with pytest.raises(ValueError, match="corpus is empty"):
    sentencepiece_tokenizer.train_sentencepiece(["", ""], str(tmp_path / "e"), vocab_size=64)
  with pytest.raises(ValueError, match="does not exist"):
    sentencepiece_tokenizer.load_sentencepiece(str(tmp_path / "missing.model"))


def test_sentencepiece_byte_fallback_handles_unseen_text(tmp_path):
  corpus = [ex.prompt + ex.response for ex in make_examples(100, seed=1)]
  tok = sentencepiece_tokenizer.train_sentencepiece(corpus, str(tmp_path / "bf"),
                                                    vocab_size=300, byte_fallback=True)
  text = "Ünïcode ☃ never seen\n\ttabs"
  assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
