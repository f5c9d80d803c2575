"""seqio tasks over real generated data (the small embedded default, built once per cache)."""
import pytest
import seqio
import tensorflow as tf

from data_gen import dataset as data_lib
from data_gen import lintseq
from editseq import default_data
from editseq import tasks


@pytest.fixture(scope="module")
def data_dir():
  return default_data.default_data_dir(small=True)


@pytest.fixture(scope="module")
def vocab():
  return default_data.default_vocabulary()


@pytest.fixture(scope="module")
def registered(data_dir, vocab):
  return tasks.register_tasks(data_dir, vocab)


def _task_examples(name, split, limit=None):
  ds = seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False)
  return list(ds.take(limit or -1).as_numpy_iterator())


@pytest.mark.parametrize("name", ["editseq_lintseq_instruct", "editseq_baseline_instruct",
                                  "editseq_lintseq_nolint_instruct"])
def test_instruct_tasks_match_records(registered, data_dir, vocab, name):
  """inputs = the prompt's tokens, targets = the completion's + eos, in the records' order."""
  assert name in registered
  variant = tasks.TASK_SPECS[name].variant
  records = list(data_lib.read_examples(data_dir, variant, "validation"))
  examples = _task_examples(name, "validation")
  assert len(examples) == len(records) > 0
  by_id = {(r["source_id"], r["sample_index"]): r for r in records}
  for ex in examples:
    rec = by_id[(ex["source_id"].decode(), int(ex["sample_index"]))]
    assert ex["inputs"].tolist() == vocab.encode(rec["prompt"])
    assert ex["targets"].tolist() == vocab.encode(rec["completion"]) + [vocab.eos_id]
    assert vocab.decode(ex["targets"]) == rec["completion"]
    if variant != "baseline":
      # Only the instruction is masked; the reference's training text, byte for byte.
      diffs = lintseq.lintseq_sample(rec["program"], seed=0, sample_index=rec["sample_index"],
                                     use_linter=variant == "lintseq")
      reference = (rec["instruction"] + "".join("\n<|diff|>" + d for d in diffs)
                   + "\n<|diff|>\n<|diff|>")
      assert rec["prompt"] == rec["instruction"]
      assert (vocab.decode(ex["inputs"]) + vocab.decode(ex["targets"][:-1])).encode() == (
          reference.encode())
      assert ex["targets"][-1] == vocab.eos_id and ex["targets"][1] == vocab.diff_id


def test_pretrain_task_is_programs(registered, data_dir, vocab):
  records = list(data_lib.read_examples(data_dir, "baseline", "validation"))
  examples = _task_examples("editseq_pretrain", "validation")
  assert sorted(vocab.decode(ex["targets"]) for ex in examples) == sorted(
      r["program"] for r in records)
  assert all(len(ex["inputs"]) == 0 for ex in examples)


def test_batched_tokenize_matches_seqio_tokenize(registered, vocab):
  """Our batched preprocessor against seqio's own per-example tokenize."""
  texts = ["", "def f():\n\treturn 1  \n", "é<|diff|>@@ -0,0 +1 @@\n+x", "a" * 3000]
  ds = tf.data.Dataset.from_tensor_slices({"inputs": texts, "targets": texts[::-1]})
  features = {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}
  ours = list(tasks.tokenize_batched(ds, features, batch_size=3).as_numpy_iterator())
  theirs = list(seqio.preprocessors.tokenize(ds, features).as_numpy_iterator())
  assert len(ours) == len(theirs) == 4
  for a, b in zip(ours, theirs):
    assert a["inputs"].tolist() == b["inputs"].tolist()
    assert a["targets"].tolist() == b["targets"].tolist()


def test_mixture(registered):
  name = tasks.register_mixture("test_mix", {"editseq_lintseq_instruct": 3.0,
                                             "editseq_pretrain": 1.0})
  assert tasks.task_components(name) == [("editseq_lintseq_instruct", 3.0),
                                         ("editseq_pretrain", 1.0)]
  with pytest.raises(tasks.DataError, match="not registered editseq tasks"):
    tasks.register_mixture("bad_mix", {"nope": 1.0})
  with pytest.raises(tasks.DataError, match="rates must be positive"):
    tasks.register_mixture("bad_mix", {"editseq_pretrain": 0.0})


def test_register_points_tasks_at_another_dir(registered, data_dir, vocab, tmp_path):
  tasks.register_tasks(str(tmp_path), vocab)
  try:
    with pytest.raises(tasks.DataError, match="data folder not found"):
      tasks.task_files("editseq_lintseq_instruct", "train")
    folder = tmp_path / "lintseq" / data_lib.VERSION
    folder.mkdir(parents=True)
    with pytest.raises(tasks.DataError, match="no 'train' shards"):
      tasks.task_files("editseq_lintseq_instruct", "train")
    (folder / data_lib.shard_filename("lintseq", "train", 0, 1)).write_bytes(b"")
    with pytest.raises(tasks.DataError, match="is empty"):
      tasks.task_files("editseq_lintseq_instruct", "train")
  finally:
    tasks.register_tasks(data_dir, vocab)


def test_unknown_task(registered):
  with pytest.raises(tasks.DataError, match="unknown task 'editseq_nope'"):
    tasks.task_components("editseq_nope")


def test_a_mixture_written_inline(registered):
  """`task:rate,task:rate` in data.task: a seqio mixture registered on first use."""
  assert tasks.task_components("editseq_lintseq_instruct:3, editseq_pretrain:0.5") == [
      ("editseq_lintseq_instruct", 3.0), ("editseq_pretrain", 0.5)]
  assert "editseq_lintseq_instruct:3#editseq_pretrain:0.5" in seqio.MixtureRegistry.names()
  for bad, message in [("editseq_pretrain:x", "expected task:rate"),
                       ("editseq_pretrain,editseq_lintseq_instruct:1", "expected task:rate"),
                       ("editseq_pretrain:1,editseq_pretrain:2", "each task once"),
                       ("editseq_pretrain:0,editseq_lintseq_instruct:1", "rates must be positive"),
                       ("editseq_nope:1", "not registered editseq tasks")]:
    with pytest.raises(tasks.DataError, match=message):
      tasks.task_components(bad)


def test_pretraining_parts_read_their_folders(registered, data_dir, vocab, tmp_path):
  """editseq_pretrain_web/_code read `--variants text` outputs in DATA_DIR/web and /code."""
  tasks.register_tasks(str(tmp_path), vocab)
  try:
    for name, part in (("editseq_pretrain_web", "web"), ("editseq_pretrain_code", "code")):
      folder = tmp_path / part / "text" / data_lib.VERSION
      folder.mkdir(parents=True)
      shard = folder / data_lib.shard_filename("text", "train", 0, 1)
      with tf.io.TFRecordWriter(str(shard)) as writer:
        writer.write(data_lib.serialize_example({
            "instruction": "", "program": f"{part} document", "prompt": "",
            "completion": f"{part} document", "source_id": f"{part}:1", "sample_index": 0,
            "num_edits": 1, "variant": "text"}))
      assert tasks.task_files(name, "train") == [str(shard)]
      [example] = _task_examples(name, "train")
      assert vocab.decode(example["targets"][:-1].tolist()) == f"{part} document"
      assert example["targets"][-1] == vocab.eos_id and len(example["inputs"]) == 0
  finally:
    tasks.register_tasks(data_dir, vocab)
