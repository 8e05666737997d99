"""`Tokenizer` against transformers: encode/decode, special tokens and chat templates, for a
byte-level BPE tokenizer (tokenizer.json) and a sentencepiece model (tokenizer.model)."""

import json
import os

import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from dera_jax.data.tokenizer import Tokenizer  # noqa: E402

CHATML = ("{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Uses bos_token, loop controls and raise_exception like real templates do.
LLAMA_LIKE = ("{{ bos_token }}{% for message in messages %}"
              "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
              "{{ raise_exception('bad role') }}{% endif %}"
              "{% if loop.index0 > 5 %}{% break %}{% endif %}"
              "[{{ message['role'] | upper }}] {{ message['content'] | trim }}"
              "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n"
              "{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}")

TEXTS = [
    "Hello world",
    " leading space and  double  spaces",
    "  two leading spaces\nand a newline\n\n",
    "Unicode: héllo wörld — ñandú 日本語 😀 ∑x²",
    "<|im_start|>user\nhi there<|im_end|>\n<|eos|>",
    "text<|bos|>inside",
    "tabs\tand\r\nwindows",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi! ¿Qué tal?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is 2+2? "},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "日本語で"}],
]


def _corpus():
  words = ("the quick brown fox jumps over the lazy dog héllo wörld ñandú 日本語 data model "
           "token chat user assistant system newline").split()
  lines = []
  for i in range(300):
    line = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 9))
    lines.append(("  " if i % 5 == 0 else "") + line + (f" {i}" if i % 3 else "") + "\n")
  return lines


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers
  backend = tokenizers.Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  backend.train_from_iterator(_corpus(), trainer)
  backend.post_processor = processors.TemplateProcessing(
      single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", 1)])
  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
      additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHATML)
  path = tmp_path_factory.mktemp("bpe")
  hf.save_pretrained(path)
  (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [4, 2]}))
  return path


def _check_same_as_transformers(ours, hf, templates=True):
  for text in TEXTS:
    for special in (True, False):
      expected = hf.encode(text, add_special_tokens=special)
      assert ours.encode(text, add_special_tokens=special) == expected, (text, special)
    ids = hf.encode(text)
    for skip in (False, True):
      assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(
          ids, skip_special_tokens=skip), (text, skip)
  if templates:
    for messages in CONVERSATIONS:
      for gen in (True, False):
        assert ours.apply_chat_template(messages, add_generation_prompt=gen) == (
            hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen))


def test_bpe_tokenizer_matches_transformers(bpe_dir):
  hf = transformers.AutoTokenizer.from_pretrained(bpe_dir)
  ours = Tokenizer.from_pretrained(str(bpe_dir))
  assert ours.bos_id == 1 and ours.add_bos and ours.pad_id == 0
  assert ours.eos_ids == (4, 2)  # generation_config's list, in order
  assert ours.vocab_size == len(hf)
  assert ours.chat_template == CHATML
  _check_same_as_transformers(ours, hf)


def test_a_template_using_special_tokens_and_jinja_extensions(bpe_dir):
  hf = transformers.AutoTokenizer.from_pretrained(bpe_dir)
  hf.chat_template = LLAMA_LIKE
  ours = Tokenizer.from_pretrained(str(bpe_dir))
  ours.chat_template = LLAMA_LIKE
  _check_same_as_transformers(ours, hf)
  with pytest.raises(Exception, match="bad role"):
    ours.apply_chat_template([{"role": "robot", "content": "x"}])


def test_save_pretrained_round_trips_through_transformers(bpe_dir, tmp_path):
  ours = Tokenizer.from_pretrained(str(bpe_dir))
  ours.save_pretrained(str(tmp_path))
  hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
  _check_same_as_transformers(ours, hf)
  again = Tokenizer.from_pretrained(str(tmp_path), eos_ids=ours.eos_ids)
  assert (again.bos_id, again.eos_ids, again.pad_id, again.add_bos, again.chat_template) == (
      ours.bos_id, ours.eos_ids, ours.pad_id, ours.add_bos, ours.chat_template)


def test_constructor_signature_still_works():
  from tokenizers import models
  backend = tokenizers.Tokenizer(models.WordLevel({"a": 0, "<s>": 1, "</s>": 2}, unk_token="a"))
  tok = Tokenizer(backend, bos_id=1, eos_ids=[2], pad_id=None, add_bos=True, chat_template=None)
  assert tok.pad_id == 2 and tok.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}
  with pytest.raises(ValueError, match="no chat template"):
    tok.apply_chat_template([{"role": "user", "content": "a"}])


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
  spm = pytest.importorskip("sentencepiece")
  path = tmp_path_factory.mktemp("sp")
  corpus = path / "corpus.txt"
  corpus.write_text("".join(_corpus()), encoding="utf-8")
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(path / "tokenizer"), vocab_size=400,
      model_type="bpe", character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1,
      eos_id=2, pad_id=-1, minloglevel=2)
  os.remove(corpus)
  os.remove(path / "tokenizer.vocab")
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
       "chat_template": LLAMA_LIKE, "tokenizer_class": "LlamaTokenizer", "legacy": True}))
  return path


def test_sentencepiece_tokenizer_matches_sentencepiece(sp_dir):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
  ours = Tokenizer.from_pretrained(str(sp_dir))
  assert ours.is_sentencepiece and ours.bos_id == 1 and ours.eos_ids == (2,) and ours.add_bos
  for text in TEXTS[:4] + TEXTS[6:]:
    assert ours.encode(text) == [1] + sp.encode(text)
    assert ours.decode(ours.encode(text), skip_special_tokens=True) == sp.decode(sp.encode(text))
  ids = ours.encode("héllo</s>")
  assert ids[-1] == 2 and ours.decode(ids) == "<s>héllo</s>"
  assert ours.decode(ids, skip_special_tokens=True) == "héllo"
  assert ours.apply_chat_template(CONVERSATIONS[0]).startswith("<s>[USER] Hi!")
  # A sentencepiece Tokenizer can also be built directly from the processor.
  direct = Tokenizer(sp, bos_id=1, eos_ids=[2], add_bos=True)
  assert direct.encode("the lazy dog") == ours.encode("the lazy dog")


def test_sentencepiece_tokenizer_saves_and_transformers_reads_it(sp_dir, tmp_path):
  ours = Tokenizer.from_pretrained(str(sp_dir))
  ours.save_pretrained(str(tmp_path))
  again = Tokenizer.from_pretrained(str(tmp_path))
  assert again.encode(TEXTS[3]) == ours.encode(TEXTS[3])
  hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
  # (transformers converts the model to a tokenizers BPE, whose byte fallback differs from
  # sentencepiece's on rare characters: the reference above is sentencepiece itself.)
  for text in ["the quick brown fox", "héllo wörld 42", "data model token"]:
    assert hf.encode(text) == ours.encode(text), text


@pytest.mark.parametrize("files,message", [
    ({}, "no tokenizer found"),
    ({"tokenizer.json": "{not json"}, "tokenizer.json: not a valid tokenizers file"),
    ({"tokenizer.model": "garbage"}, "tokenizer.model: not a valid sentencepiece model"),
])
def test_bad_tokenizer_directories_are_named(tmp_path, files, message):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  with pytest.raises(ValueError, match=message):
    Tokenizer.from_pretrained(str(tmp_path))


def test_special_token_missing_from_the_vocabulary_is_named(bpe_dir, tmp_path):
  import shutil
  shutil.copytree(bpe_dir, tmp_path / "t")
  config = json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())
  config["eos_token"] = "<|nope|>"
  (tmp_path / "t" / "tokenizer_config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="eos_token='<\\|nope\\|>' .* is not in the vocabulary"):
    Tokenizer.from_pretrained(str(tmp_path / "t"))
