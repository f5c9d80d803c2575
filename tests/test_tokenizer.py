"""Tokenizer: lossless on the standard library, special ids, seqio interface, external files."""
import json

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from editseq import tokenizer as tok_lib

STDLIB = list(tok_lib.iter_python_sources())


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  """Our BPE trained on every 8th stdlib file (the rest is unseen text for the round trip)."""
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  tok_lib.train_tokenizer((t for _, t in STDLIB[::8]), path, vocab_size=4096)
  return tok_lib.load_vocabulary(path)


def _round_trip_failures(vocab, texts):
  ids = vocab.encode_batch(texts)
  return [i for i, (t, x) in enumerate(zip(texts, ids)) if vocab.decode(x) != t]


def _variants(text):
  """Whitespace the standard library itself avoids (CPython strips it): tabs, trailing spaces,
  CRLF line ends, form feeds, blank lines made of spaces."""
  lines = text.split("\n")
  yield text.replace("    ", "\t")
  yield "\n".join(line + " " * (i % 4) + "\t" * (i % 3 == 1) for i, line in enumerate(lines))
  yield text.replace("\n", "\r\n")
  yield "\f\n  \n\n\t \n" + text + "\n\n   "


def test_python_sources_are_each_file_decoded_as_python_reads_it(tmp_path):
  """What the default tokenizer is trained on: every .py file below the root in path order,
  decoded by its PEP 263 line with line ends kept; site-packages, other files and undecodable
  ones left out."""
  files = {"a.py": "s = 'h\u00e9llo \u2713'\n".encode(),
           "b/c.py": "# -*- coding: latin-1 -*-\r\ns = 'caf\u00e9'\r\n".encode("latin-1"),
           "b/site-packages/d.py": b"x = 1\n", "site-packages/e.py": b"x = 1\n",
           "bad.py": b"s = '\xff\xfe'\n", "unknown.py": b"# coding: no-such-codec\nx = 1\n",
           "notes.txt": b"x = 1\n"}
  for name, data in files.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(data)
  (tmp_path / "folder.py").mkdir()
  found = [(p.relative_to(tmp_path).as_posix(), text)
           for p, text in tok_lib.iter_python_sources(tmp_path)]
  assert found == [("a.py", "s = 'h\u00e9llo \u2713'\n"),
                   ("b/c.py", "# -*- coding: latin-1 -*-\r\ns = 'caf\u00e9'\r\n")]


def test_round_trip_stdlib_subset(vocab):
  # Deterministic subset (~3 MB): every 25th file, the smaller non-ASCII files, whitespace
  # variants of some; the slow tier does all of it.
  texts = [t for i, (_, t) in enumerate(STDLIB)
           if i % 25 == 0 or (not t.isascii() and len(t) < 40_000)]
  texts += [v for _, t in STDLIB[7::80] for v in _variants(t)]
  assert sum(not t.isascii() for t in texts) > 50  # the round trip covers non-ASCII text
  assert _round_trip_failures(vocab, texts) == []


@pytest.mark.slow
def test_round_trip_whole_stdlib(vocab):
  texts = [t for _, t in STDLIB]
  texts += [v for t in texts[::5] for v in _variants(t)]
  assert _round_trip_failures(vocab, texts) == []


def test_special_tokens(vocab):
  assert (vocab.pad_id, vocab.eos_id, vocab.diff_id) == (0, 1, 2)
  assert vocab.encode(tok_lib.DIFF_TOKEN) == [vocab.diff_id]
  text = "def f():\n    return 1\n<|diff|>@@ -1,0 +2,1 @@\n+\tx = 1  "
  ids = vocab.encode(text)
  assert ids.count(vocab.diff_id) == 1
  assert vocab.decode(ids) == text
  # seqio semantics: decode stops at the first eos; eos and pad carry no text.
  assert vocab.decode(ids + [vocab.eos_id] + vocab.encode("junk")) == text
  assert vocab.decode([vocab.pad_id] + ids) == text


def test_tf_side_matches_python(vocab):
  texts = [t for _, t in STDLIB[1:40:3]]
  for text in texts:
    ids = vocab.encode_tf(tf.constant(text)).numpy().tolist()
    assert ids == vocab.encode(text)
  batch = tf.ragged.constant([vocab.encode(t) for t in texts[:3]]).to_tensor(vocab.eos_id)
  decoded = vocab.decode_tf(batch).numpy()
  assert [d.decode() for d in decoded] == texts[:3]
  assert vocab.decode_tf(batch[0]).numpy().decode() == texts[0]


def test_padded_vocab_size(vocab):
  assert vocab.vocab_size == 4096
  assert tok_lib.padded_vocab_size(vocab) == 4096
  assert tok_lib.padded_vocab_size(type("V", (), {"vocab_size": 50280})()) == 50304


def test_training_is_deterministic(tmp_path):
  texts = [t for _, t in STDLIB[::40]]
  a = tok_lib.train_tokenizer(texts, tmp_path / "a.json", vocab_size=1024)
  b = tok_lib.train_tokenizer(texts, tmp_path / "b.json", vocab_size=1024)
  assert tok_lib.load_vocabulary(a).fingerprint == tok_lib.load_vocabulary(b).fingerprint


def write_olmo_like_tokenizer(folder, vocab_size=1200):
  """A tokenizer.json laid out like OLMo's (id 0 not special, pad 1, eos last, no <|diff|>),
  with the tokenizer_config.json that names eos and pad."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
      (t for _, t in STDLIB[::50]),
      trainers.BpeTrainer(vocab_size=vocab_size,
                          special_tokens=["|||IP_ADDRESS|||", "<|padding|>"],
                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                          show_progress=False))
  tok.add_special_tokens(["<|endoftext|>"])
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(
      json.dumps({"eos_token": "<|endoftext|>", "pad_token": {"content": "<|padding|>"}}))
  return folder


@pytest.fixture(scope="module")
def olmo_like_dir(tmp_path_factory):
  return write_olmo_like_tokenizer(tmp_path_factory.mktemp("olmo"))


def test_hf_tokenizer_json(olmo_like_dir):
  vocab = tok_lib.load_vocabulary(olmo_like_dir)  # a folder holding tokenizer.json works too
  assert vocab.pad_id == 1
  assert vocab.eos_id == 1200
  assert vocab.diff_id == 1201 == vocab.vocab_size - 1
  assert tok_lib.padded_vocab_size(vocab) == 1280
  texts = [t for _, t in STDLIB[3::60]] + ["x = 1\n<|diff|>@@ -1,0 +2 @@\n+y\n"]
  assert _round_trip_failures(vocab, texts) == []
  with pytest.raises(tok_lib.VocabularyError, match="no <|diff|> token"):
    tok_lib.load_vocabulary(olmo_like_dir / "tokenizer.json", add_diff_token=False)


def test_hf_tokenizer_without_known_eos(tmp_path):
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(["abc def"], trainers.BpeTrainer(vocab_size=300, show_progress=False))
  tok.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(tok_lib.VocabularyError, match="no eos token"):
    tok_lib.load_vocabulary(tmp_path / "tokenizer.json")


def _train_sentencepiece(prefix, lossless: bool):
  lines = [line for _, t in STDLIB[::40] for line in t.split("\n")]
  options = dict(normalization_rule_name="identity", remove_extra_whitespaces=False,
                 add_dummy_prefix=False, byte_fallback=True, allow_whitespace_only_pieces=True,
                 character_coverage=1.0) if lossless else {}
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=1000, model_type="bpe",
      user_defined_symbols=[tok_lib.DIFF_TOKEN], pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      max_sentence_length=1 << 20, minloglevel=2, **options)
  return f"{prefix}.model"


def test_sentencepiece_model(tmp_path):
  vocab = tok_lib.load_vocabulary(_train_sentencepiece(tmp_path / "code", lossless=True))
  assert (vocab.pad_id, vocab.eos_id, vocab.diff_id) == (0, 1, 3)
  texts = [t for _, t in STDLIB[5::45]] + ["\tx = 'é'  \n\n<|diff|>+  y\n"]
  assert _round_trip_failures(vocab, texts) == []
  assert vocab.encode(tok_lib.DIFF_TOKEN) == [vocab.diff_id]


def test_sentencepiece_that_normalizes_is_rejected(tmp_path):
  with pytest.raises(tok_lib.VocabularyError, match="normalizes text"):
    tok_lib.load_vocabulary(_train_sentencepiece(tmp_path / "nfkc", lossless=False))


def test_bad_files(tmp_path):
  with pytest.raises(tok_lib.VocabularyError, match="not found"):
    tok_lib.load_vocabulary(tmp_path / "missing.json")
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(tok_lib.VocabularyError, match="not a Hugging Face tokenizer.json"):
    tok_lib.load_vocabulary(tmp_path / "bad.json")
  (tmp_path / "bad.model").write_bytes(np.arange(50, dtype=np.uint8).tobytes())
  with pytest.raises(tok_lib.VocabularyError, match="not a sentencepiece model"):
    tok_lib.load_vocabulary(tmp_path / "bad.model")
