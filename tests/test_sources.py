"""Program sources: .py trees, JSONL (keys, markdown, .gz), TFDS, HF; decoding and bad input."""
import gzip
import json
import os
import shutil
import sysconfig

import pytest

from data_gen import programs, sources
from tests.conftest import SHARED_DATA

STDLIB = sysconfig.get_paths()["stdlib"]
LIMITS = dict(max_bytes=100_000, max_lines=1_000)


def _reason(raw, **limits):
  with pytest.raises(programs.BadProgram) as info:
    programs.check(raw, **{**LIMITS, **limits})
  return info.value.reason


def test_check_accepts_real_modules_exactly():
  for name in ("bisect.py", "json/decoder.py", "textwrap.py"):
    with open(os.path.join(STDLIB, name), "rb") as f:
      data = f.read()
    text, tree = programs.check(data, **LIMITS)
    assert text == data.decode("utf-8") and tree.body


def test_check_reasons():
  """One set of reasons for every source and for LintSeq (data_gen.programs)."""
  assert _reason(b"") == "empty"
  assert _reason(b" \n\t\n") == "empty"
  assert _reason("x = 1\n" + "\x00") == "binary"
  with open(os.path.join(STDLIB, "bisect.py"), "rb") as f:
    assert _reason(f.read()[:200] + b"\x00\x01\x02") == "binary"
  assert _reason("x = 'é'\n".encode("latin-1")) == "not_utf8"
  assert _reason(json.loads('"x = \\"\\udcff\\"\\n"')) == "not_utf8"  # valid JSON, no UTF-8
  assert _reason("def f(:\n    pass\n") == "syntax_error"
  assert _reason("return 1\n") == "syntax_error"  # parses, but does not compile.
  assert _reason("x = " + "(" * 300 + ")" * 300 + "\n") == "syntax_error"
  assert _reason("# only a comment\n\n") == "empty"
  assert _reason("x = 1\n" * 11, max_lines=10) == "too_many_lines"
  assert _reason("x = 1\n" * 11, max_bytes=60) == "too_many_bytes"
  assert _reason("s = '<|diff|>'\n") == "contains_diff_token"
  assert _reason("x = 1\ry = 2\n") == "bare_cr"
  assert _reason(None) == "not_text"
  assert _reason("\ufeffx = 1\n") == "syntax_error"  # in text a byte-order mark is a character
  assert programs.check_text("x = 1\n" * 10, max_bytes=60, max_lines=10) == "x = 1\n" * 10
  assert programs.check_text(b"\xef\xbb\xbfx = 1\n", **LIMITS) == "x = 1\n"
  with pytest.raises(programs.BadProgram, match="not_utf8"):
    programs.check_instruction("Say \udcff.")
  with pytest.raises(programs.BadProgram, match="contains_diff_token"):
    programs.check_instruction("Use <|diff|>.")


def test_lintseq_shares_the_check():
  from data_gen import lintseq
  assert lintseq.LintSeqError is programs.BadProgram
  for raw, reason in [("x = 1\x00\n", "binary"), ("x = 1\n" * 11, "too_many_lines")]:
    with pytest.raises(programs.BadProgram) as info:
      lintseq.lintseq(raw, max_lines=10)
    assert info.value.reason == reason


def _read_all(source):
  return [item for shard in source.shards() for item in source.read(shard)]


def test_pytree_source_on_a_real_package(tmp_path):
  shutil.copytree(os.path.join(STDLIB, "json"), tmp_path / "json",
                  ignore=shutil.ignore_patterns("__pycache__"))
  (tmp_path / "json" / "site-packages").mkdir()
  (tmp_path / "json" / "site-packages" / "third_party.py").write_text("x = 1\n")
  source = sources.PyTreeSource(str(tmp_path / "json"))
  records = _read_all(source)
  assert [r.source_id for r in records] == [
      "json:__init__.py", "json:decoder.py", "json:encoder.py", "json:scanner.py", "json:tool.py"]
  for record in records:
    with open(tmp_path / "json" / record.source_id.split(":")[1], "rb") as f:
      assert record.program == f.read() and record.instruction == ""


def test_pytree_source_hands_bad_files_over_as_bytes(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "a.py").write_bytes(b"x = 1\n")
  (tmp_path / "sub" / "b.py").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
  (tmp_path / "c.py").write_bytes(b"")
  (tmp_path / "notes.txt").write_text("not python")
  records = _read_all(sources.PyTreeSource(str(tmp_path), name="t"))
  assert [r.source_id for r in records] == ["t:a.py", "t:c.py", "t:sub/b.py"]
  reasons = []
  for r in records:
    try:
      programs.check(r.program, **LIMITS)
      reasons.append("ok")
    except programs.BadProgram as e:
      reasons.append(e.reason)
  assert reasons == ["ok", "empty", "binary"]


def test_pytree_missing_folder_is_a_source_error(tmp_path):
  with pytest.raises(sources.SourceError, match="not a folder"):
    sources.PyTreeSource(str(tmp_path / "nope"))


MARKDOWN = ("Here is a solution.\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
            "Usage:\n\n```bash\npython add.py\n```\n\n```py\nprint(add(1, 2))\n```\n")


def test_response_program_keeps_only_python_blocks():
  assert sources.response_program(MARKDOWN) == (
      "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n")
  assert sources.response_program("def f():\n    return 1\n") == "def f():\n    return 1\n"
  with pytest.raises(programs.BadProgram, match="no_python_block"):
    sources.response_program("Run this:\n```bash\nls\n```\n")


def test_jsonl_source_keys_markdown_and_bad_lines(tmp_path):
  path = tmp_path / "data.jsonl"
  rows = [
      {"q": "Add two numbers.", "a": MARKDOWN},
      {"q": "Plain code answer.", "a": "x = 1\n"},
      {"q": "Only shell.", "a": "```sh\nls\n```"},
      {"q": "Missing answer."},
      {"q": 3, "a": "x = 1\n"},
  ]
  lines = [json.dumps(r) for r in rows] + ["{not json", "", "[1, 2]"]
  path.write_text("\n".join(lines) + "\n")
  got = _read_all(sources.JsonlSource([str(path)], instruction_key="q", response_key="a"))
  assert [(g.source_id, type(g).__name__) for g in got] == [
      ("data.jsonl:1", "Record"), ("data.jsonl:2", "Record"), ("data.jsonl:3", "Skip"),
      ("data.jsonl:4", "Skip"), ("data.jsonl:5", "Skip"), ("data.jsonl:6", "Skip"),
      ("data.jsonl:8", "Skip")]
  assert got[0].instruction == "Add two numbers."
  assert got[0].program == "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
  assert [g.reason for g in got[2:]] == [
      "no_python_block", "missing_key", "missing_key", "bad_json", "bad_json"]
  no_instruction = _read_all(sources.JsonlSource([str(path)], instruction_key="", response_key="a"))
  assert no_instruction[0].instruction == ""


def test_jsonl_source_reads_real_gzipped_benchmark_data():
  path = str(SHARED_DATA / "MbppPlus.jsonl.gz")
  if not os.path.exists(path):
    pytest.skip("needs the MBPP+ file beside the checkout (tests/conftest.py SHARED_DATA)")
  records = _read_all(sources.JsonlSource([path], "prompt", "canonical_solution"))
  with gzip.open(path, "rt") as f:
    rows = [json.loads(line) for line in f]
  assert len(records) == len(rows) == 378
  assert records[0].source_id == "MbppPlus.jsonl.gz:1"
  assert [r.program for r in records] == [row["canonical_solution"] for row in rows]
  assert all(programs.check(r.program, **LIMITS) for r in records)


def test_jsonl_source_errors(tmp_path):
  with pytest.raises(sources.SourceError, match="does not exist"):
    sources.JsonlSource([str(tmp_path / "missing.jsonl")])
  with pytest.raises(sources.SourceError, match="--input"):
    sources.JsonlSource([])


def test_hf_source_without_datasets_is_a_clear_error():
  try:
    import datasets  # noqa: F401
  except ImportError:
    with pytest.raises(sources.SourceError, match="pip install datasets"):
      sources.HuggingFaceSource("some/dataset")
  else:
    pytest.skip("`datasets` is installed; the missing-package error cannot be shown")


def test_hf_source_reads_local_data_files_one_shard_each(tmp_path):
  """The hf source over local files (`datasets`' json builder): one shard per file, raw
  documents kept as they are, and the files' content keys the output."""
  pytest.importorskip("datasets")
  files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
  files[0].write_text(json.dumps({"text": "Intro ```python\nx = 1\n```"}) + "\n"
                      + json.dumps({"text": "second"}) + "\n")
  files[1].write_text(json.dumps({"text": "third"}) + "\n")
  source = sources.HuggingFaceSource("json", instruction_key="", response_key="text",
                                     data_files=[str(f) for f in files], raw=True)
  assert source.shards() == [str(f) for f in files]
  records = [r for shard in source.shards() for r in source.read(shard)]
  assert [(r.source_id, r.program) for r in records] == [
      (f"hf:json:{files[0]}:0", "Intro ```python\nx = 1\n```"), (f"hf:json:{files[0]}:1", "second"),
      (f"hf:json:{files[1]}:0", "third")]
  before = source.fingerprint()
  files[1].write_text(json.dumps({"text": "changed"}) + "\n")
  assert before is not None and source.fingerprint() != before
  assert sources.HuggingFaceSource("some/dataset").fingerprint() is None


def _store_tfds_dataset(data_dir, name, rows):
  """A prepared TFDS dataset from rows: TFDS-serialized records + `write_metadata` (a builder over
  files; TFDS's `store_as_tfds_dataset` needs `importlib_resources`, which is not installed)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  features = tfds.features.FeaturesDict(
      {"question": tfds.features.Text(), "answer": tfds.features.Text()})
  folder = os.path.join(data_dir, name, "1.0.0")
  os.makedirs(folder)
  with tf.io.TFRecordWriter(os.path.join(folder, f"{name}-train.tfrecord-00000-of-00001")) as w:
    for row in rows:
      w.write(features.serialize_example(row))
  tfds.folder_dataset.write_metadata(data_dir=folder, features=features, check_data=False,
                                     split_infos=[tfds.core.SplitInfo(
                                         name="train", shard_lengths=[len(rows)], num_bytes=0)])


def test_tfds_source_reads_a_local_dataset(tmp_path):
  rows = [{"question": f"Return {i}.", "answer": f"```python\ndef f():\n    return {i}\n```"}
          for i in range(5)]
  rows.append({"question": "No code.", "answer": "```text\nnothing\n```"})
  _store_tfds_dataset(str(tmp_path), "tiny_instructions", rows)
  source = sources.TfdsSource("tiny_instructions", "train", str(tmp_path),
                              instruction_key="question", response_key="answer")
  got = _read_all(source)
  assert [g.source_id for g in got] == [f"tfds:tiny_instructions:train:{i}" for i in range(6)]
  assert [(g.instruction, g.program) for g in got[:5]] == [
      (f"Return {i}.", f"def f():\n    return {i}\n") for i in range(5)]
  assert got[5] == sources.Skip("tfds:tiny_instructions:train:5", "no_python_block")


def test_tfds_source_unknown_dataset_is_a_source_error(tmp_path):
  with pytest.raises(sources.SourceError, match="no_such_dataset_here"):
    sources.TfdsSource("no_such_dataset_here", "train", str(tmp_path)).shards()
