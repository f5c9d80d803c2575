"""The trainer's iterator on real generated data: exact contents, coverage per host, resume."""
import collections
import concurrent.futures
import json
import time

import jax
import numpy as np
import pytest

from configs import base
from editseq import default_data
from editseq import input_pipeline as ip
from editseq import packing
from editseq import tasks
from editseq import tokenizer
from tests import test_tokenizer

SEQ_LEN = 256


@pytest.fixture(scope="module")
def vocab():
  return default_data.default_vocabulary()


def _config(**data):
  config = base.get_config()
  config.model.vocab_size = 8192
  config.model.max_seq_len = 1024
  config.data.data_dir = default_data.SMALL
  config.data.seq_len = SEQ_LEN
  config.data.global_batch_size = 8
  config.data.update(data)
  return config


def _segments(batches):
  """Multiset of (tokens, loss mask) of every segment in the batches."""
  return collections.Counter(
      (s["tokens"].tobytes(), s["loss_mask"].tobytes())
      for b in batches for s in packing.unpack(b))


def _all_units(source):
  """The same multiset built straight from the token store: what one epoch must contain."""
  out = collections.Counter()
  for part in source.parts:
    store, units = part.store, part.units
    for e, s, n in zip(units.example, units.start, units.length):
      tokens = store.example(e)[s:s + n].astype(np.int32)
      mask = (s + np.arange(1, n) >= store.prompt_lens[e]).astype(np.int32)
      out[(tokens.tobytes(), mask.tobytes())] += 1
  return out


def test_batches_reproduce_the_records(vocab):
  """Unpacked rows decode to prompt + completion + eos of real records; the loss mask covers
  exactly the completion and the eos."""
  config = _config(seq_len=1024)  # long enough that few examples are truncated
  it = ip.make_eval_iterator(config, vocab, process_index=0, process_count=1)
  from data_gen import dataset as data_lib
  records = list(data_lib.read_examples(
      default_data.resolve_data_dir(default_data.SMALL), "lintseq", "validation"))
  fits, truncated = collections.Counter(), collections.Counter()
  for r in records:
    tokens = vocab.encode(r["prompt"]) + vocab.encode(r["completion"]) + [vocab.eos_id]
    if len(tokens) <= 1025:
      fits[(r["prompt"], r["completion"])] += 1
    else:
      truncated[tuple(tokens[:1025])] += 1
  assert len(fits) > len(truncated) > 0
  seen, seen_truncated = collections.Counter(), collections.Counter()
  for batch in it:
    assert all(v.shape == (8, 1024) and v.dtype == np.int32 for v in batch.values())
    for seg in packing.unpack(batch):
      tokens, mask = seg["tokens"], seg["loss_mask"].astype(bool)
      start = int(np.argmax(mask))  # the first completion target
      assert mask[start:].all()  # one run to the end: the completion (+ eos)
      if tokens[-1] != vocab.eos_id:
        seen_truncated[tuple(tokens.tolist())] += 1
        continue
      prompt = vocab.decode(tokens[:start + 1].tolist())
      completion = vocab.decode(tokens[start + 1:-1].tolist())
      seen[(prompt, completion)] += 1
  assert seen == fits
  assert seen_truncated == truncated


@pytest.mark.parametrize("hosts", [1, 2, 4])
def test_each_epoch_covers_the_data_once_across_hosts(vocab, hosts):
  config = _config()
  its = [ip.make_train_iterator(config, vocab, process_index=h, process_count=hosts)
         for h in range(hosts)]
  source = its[0].source
  for it in its:
    it.num_epochs = 2  # stop after two epochs (the last batch completed with padding)
  per_host = [list(it) for it in its]
  assert len({len(b) for b in per_host}) == 1
  assert all(b["inputs"].shape == (8 // hosts, SEQ_LEN) for bs in per_host for b in bs)
  seen = _segments(b for bs in per_host for b in bs)
  expected = _all_units(source)
  assert seen == collections.Counter({k: 2 * v for k, v in expected.items()})
  # The global batch does not depend on the number of hosts.
  global_batches = [{k: np.concatenate([bs[i][k] for bs in per_host]) for k in packing.BATCH_KEYS}
                    for i in range(len(per_host[0]))]
  single = list(_with_epochs(ip.make_train_iterator(config, vocab, process_index=0,
                                                    process_count=1), 2))
  for a, b in zip(global_batches, single):
    for k in packing.BATCH_KEYS:
      np.testing.assert_array_equal(a[k], b[k])


def _with_epochs(it, n):
  it.num_epochs = n
  return it


def test_epochs_are_reshuffled_and_packing_is_tight(vocab):
  source = ip.make_train_iterator(_config(), vocab, process_index=0, process_count=1).source
  first, second = source.plan(0), source.plan(1)
  assert not np.array_equal(first.unit, second.unit)
  assert sorted(first.unit.tolist()) == sorted(second.unit.tolist())
  slots = source.parts[0].units.slots.sum()
  # LintSeq examples of 100-250 tokens in rows of 256 leave some rows with one example.
  assert slots / (first.num_rows * SEQ_LEN) > 0.88


def test_resume_gives_the_same_batches(vocab):
  config = _config(global_batch_size=16)
  it = ip.make_train_iterator(config, vocab, process_index=0, process_count=1)
  steps_per_epoch = it.source.plan(0).num_rows / 16
  total = int(2.5 * steps_per_epoch) + 2  # crosses two epoch boundaries
  reference, states = [], []
  for _ in range(total):
    states.append(json.loads(json.dumps(it.get_state())))
    reference.append(next(it))
  for k in (1, int(steps_per_epoch), total - 2):  # early, around the epoch end, late
    resumed = ip.make_train_iterator(config, vocab, process_index=0, process_count=1)
    resumed.set_state(states[k])
    for step in range(k, total):
      got = next(resumed)
      for key in packing.BATCH_KEYS:
        np.testing.assert_array_equal(got[key], reference[step][key], err_msg=f"step {step}")
  # set_state also rewinds a running iterator (prefetched batches are dropped).
  it.set_state(states[3])
  np.testing.assert_array_equal(next(it)["inputs"], reference[3]["inputs"])


def test_without_packing_each_row_is_one_example(vocab):
  it = ip.make_train_iterator(_config(pack=False), vocab, process_index=0, process_count=1)
  batch = next(it)
  assert np.all(batch["segment_ids"].max(axis=1) == 1)
  assert np.all(batch["segment_ids"][:, 0] == 1)


def test_cudnn_attention_caps_the_segments_per_row(vocab):
  """Under cuDNN attention a row holds at most model.max_segments examples (cuDNN's packed
  mode merges any further ones); the capped epoch still holds every unit exactly once."""
  def iterator(**model):
    config = _config(seq_len=1024)
    config.model.update(model)
    it = ip.make_train_iterator(config, vocab, process_index=0, process_count=1)
    it.num_epochs = 1
    return it

  xla = iterator()
  assert xla.source.max_segments_per_row is None
  assert np.diff(xla.source.plan(0).row_splits).max() > 2  # the cap below binds
  assert iterator(attention_impl="cudnn").source.max_segments_per_row == 16  # model default
  capped = iterator(attention_impl="cudnn", max_segments=2)
  batches = list(capped)
  assert max(b["segment_ids"].max() for b in batches) == 2
  assert _segments(batches) == _all_units(capped.source)
  with pytest.raises(tasks.DataError, match="iterator state does not match"):
    capped.set_state(xla.get_state())


def test_external_tokenizer_with_nonzero_pad(tmp_path):
  """An OLMo-style tokenizer (pad 1, eos last, <|diff|> appended) through the whole pipeline."""
  vocab = tokenizer.load_vocabulary(test_tokenizer.write_olmo_like_tokenizer(tmp_path))
  assert vocab.pad_id == 1
  config = _config()
  config.model.vocab_size = tokenizer.padded_vocab_size(vocab)
  it = ip.make_train_iterator(config, vocab, process_index=0, process_count=1)
  batch = next(it)
  pad = batch["segment_ids"] == 0
  assert pad.any() and np.all(batch["inputs"][pad] == 1) and np.all(batch["targets"][pad] == 1)
  for seg in packing.unpack(batch):
    assert seg["tokens"][-1] == vocab.eos_id or len(seg["tokens"]) == SEQ_LEN + 1
  assert (batch["inputs"] == vocab.diff_id).any()


def test_seed_changes_the_stream(vocab):
  a = next(ip.make_train_iterator(_config(seed=1), vocab, process_index=0, process_count=1))
  b = next(ip.make_train_iterator(_config(seed=1), vocab, process_index=0, process_count=1))
  c = next(ip.make_train_iterator(_config(seed=2), vocab, process_index=0, process_count=1))
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert not np.array_equal(a["inputs"], c["inputs"])


def test_state_from_other_data_is_rejected(vocab):
  it = ip.make_train_iterator(_config(seed=1), vocab, process_index=0, process_count=1)
  other = ip.make_train_iterator(_config(seq_len=128), vocab, process_index=0, process_count=1)
  with pytest.raises(tasks.DataError, match="iterator state does not match"):
    it.set_state(other.get_state())


def test_mixture_follows_rates_and_resumes(vocab):
  ip.validate_data_config(_config(), vocab, splits=("train",))  # registers the tasks
  name = tasks.register_mixture("test_pipeline_mix", {"editseq_lintseq_instruct": 3.0,
                                                      "editseq_baseline_instruct": 1.0})
  config = _config(task=name)
  it = ip.make_train_iterator(config, vocab, process_index=0, process_count=1)
  plan = it.source.plan(0)
  names = [p.store.meta["task"] for p in it.source.parts]
  share = np.mean(plan.part == names.index("editseq_lintseq_instruct"))
  assert abs(share - 0.75) < 0.01
  batches = [next(it) for _ in range(4)]
  state = it.get_state()
  after = next(it)
  again = ip.make_train_iterator(config, vocab, process_index=0, process_count=1)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["targets"], after["targets"])
  # The smaller baseline task is drawn above its size (1.5x): every unit once or twice.
  base = names.index("editseq_baseline_instruct")
  counts = np.bincount(plan.unit[plan.part == base], minlength=len(it.source.parts[base].units))
  assert counts.min() >= 1 and counts.max() - counts.min() <= 1
  # Rows mix both tasks' examples; every segment is an intact unit of one of them.
  assert set(_segments(batches)) <= set(_all_units(it.source))
  assert all(len(packing.unpack(b)) >= 8 for b in batches)


def test_eval_iterator_is_one_padded_pass(vocab):
  config = _config()
  batches = list(ip.make_eval_iterator(config, vocab, process_index=0, process_count=1))
  source = ip.make_eval_iterator(config, vocab, process_index=0, process_count=1).source
  assert _segments(batches) == _all_units(source)
  assert not batches[-1]["segment_ids"][-1].any()  # last batch completed with padding rows


def test_global_arrays_on_simulated_devices(vocab):
  batch = next(ip.make_train_iterator(_config(), vocab))  # 1 process in tests
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  arrays = ip.to_global_arrays(batch, sharding)
  for k, v in arrays.items():
    assert v.sharding == sharding
    np.testing.assert_array_equal(np.asarray(v), batch[k])


@pytest.mark.parametrize("change, message", [
    (dict(seq_len=2048), "exceeds model.max_seq_len=1024"),
    (dict(global_batch_size=6), "multiple of the process count 4"),
    (dict(data_dir="/nonexistent/editseq"), "data.data_dir not found"),
    (dict(task="editseq_nope"), "unknown task 'editseq_nope'"),
    (dict(seq_len=0), "must be positive"),
])
def test_bad_data_config(vocab, change, message):
  with pytest.raises(tasks.DataError, match=message):
    ip.validate_data_config(_config(**change), vocab, process_count=4)


def test_eval_split_checked_only_when_evaluating(vocab):
  config = _config(eval_split="test")
  with pytest.raises(tasks.DataError, match="no 'test' shards"):
    ip.validate_data_config(config, vocab, process_count=1)
  config.train.eval_every = 0
  ip.validate_data_config(config, vocab, process_count=1)


def test_vocabulary_larger_than_model(vocab):
  config = _config()
  config.model.vocab_size = 4096
  with pytest.raises(tasks.DataError, match="tokenizer has 8192 ids but model.vocab_size is 4096"):
    ip.make_train_iterator(config, vocab, process_index=0, process_count=1)


def test_missing_and_empty_split(vocab, tmp_path):
  from data_gen import dataset as data_lib
  folder = tmp_path / "lintseq" / data_lib.VERSION
  folder.mkdir(parents=True)
  config = _config(data_dir=str(tmp_path))
  with pytest.raises(tasks.DataError, match="no 'train' shards"):
    ip.make_train_iterator(config, vocab, process_index=0, process_count=1)
  (folder / data_lib.shard_filename("lintseq", "train", 0, 1)).write_bytes(b"")
  with pytest.raises(tasks.DataError, match="is empty"):
    ip.make_train_iterator(config, vocab, process_index=0, process_count=1)


def test_build_once_under_concurrency(tmp_path):
  """Concurrent builders (flock excludes separate opens, threads included) build once."""
  folder, log = tmp_path / "artifact", tmp_path / "log"

  def build(tmp):
    with open(log, "a") as f:
      f.write("built\n")
    time.sleep(0.2)
    (tmp / "x").write_text("done")

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(lambda _: default_data.build_once(folder, build), range(4)))
  assert set(results) == {folder}
  assert log.read_text() == "built\n"
  assert (folder / "x").read_text() == "done"
  assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
