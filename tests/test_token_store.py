"""Token stores: the same bytes whether one process builds them or the Beam job does."""
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import base
from data_gen import dataset as data_lib
from editseq import build_token_stores
from editseq import default_data
from editseq import tasks
from editseq import token_store
from tests.conftest import REPO_ROOT
from tests.test_pipeline import PORTABLE_RUNNER

TASK = "editseq_lintseq_instruct"


@pytest.fixture(scope="module")
def vocab():
  return default_data.default_vocabulary()


@pytest.fixture(scope="module")
def resharded(tmp_path_factory):
  """The small default data with its train split rewritten as 3 files (same records, same
  order): (original data dir, resharded data dir)."""
  original = default_data.resolve_data_dir(default_data.SMALL)
  copy = tmp_path_factory.mktemp("data") / "small"
  shutil.copytree(original, copy)
  variant = tasks.TASK_SPECS[TASK].variant
  files = sorted(tf.io.gfile.glob(data_lib.split_pattern(str(copy), variant, "train")))
  records = [r.numpy() for r in tf.data.TFRecordDataset(files)]
  for f in files:
    os.remove(f)
  bounds = [0, len(records) // 4, len(records) // 2, len(records)]
  for i in range(3):
    name = data_lib.shard_filename(variant, "train", i, 3)
    with tf.io.TFRecordWriter(os.path.join(data_lib.dataset_dir(str(copy), variant), name)) as w:
      for record in records[bounds[i]:bounds[i + 1]]:
        w.write(record)
  return original, str(copy)


def _config(data_dir):
  config = base.get_config()
  config.data.data_dir = data_dir
  config.data.task = TASK
  return config


def _load(data_dir, vocab, cache, monkeypatch, split="train"):
  """The store a trainer whose cache is `cache` loads. The cache is set for this call only: the
  default tokenizer lives in the cache too, and a fresh one is trained on the current default
  data, which differs from an older cache's (tokenizers are keyed by version, not by code)."""
  with monkeypatch.context() as m:
    m.setenv("EDITSEQ_CACHE", str(cache))
    tasks.register_tasks(data_dir, vocab)
    return token_store.load(TASK, split, vocab)


def _files(folder) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


def test_two_builds_hold_the_same_bytes(resharded, vocab, tmp_path, monkeypatch):
  """E.g. on two hosts with local caches: the same bytes in the same order."""
  original, _ = resharded
  a, b = (_load(original, vocab, tmp_path / name, monkeypatch, "validation") for name in "ab")
  assert len(a) > 0 and a.meta == b.meta
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.offsets, b.offsets)
  np.testing.assert_array_equal(a.prompt_lens, b.prompt_lens)


def test_the_same_store_however_the_data_files_are_cut(
    resharded, vocab, tmp_path, monkeypatch):
  original, three = resharded
  one = _load(original, vocab, tmp_path / "one", monkeypatch)
  split = _load(three, vocab, tmp_path / "three", monkeypatch)
  assert len(split.meta["shards"]) == 3 and len(one.meta["shards"]) == 1
  assert sum(s["num_examples"] for s in split.meta["shards"]) == len(split) == len(one) > 0
  np.testing.assert_array_equal(split.tokens, one.tokens)
  np.testing.assert_array_equal(split.offsets, one.offsets)
  np.testing.assert_array_equal(split.prompt_lens, one.prompt_lens)
  for i in (0, len(one) // 2, len(one) - 1):
    np.testing.assert_array_equal(split.example(i), one.example(i))


def test_the_beam_job_writes_the_store_built_on_first_use(resharded, vocab, tmp_path,
                                                          monkeypatch):
  _, three = resharded
  logs = []
  folders = build_token_stores.build(_config(three), ["train", "validation"],
                                     str(tmp_path / "beam"), [], log=logs.append)
  assert len(folders) == 2 and all("examples" in line for line in logs)
  metas = [token_store.open_store(f).meta for f in folders]
  assert logs[0] == (f"tokenized data_files 4, examples {sum(m['num_examples'] for m in metas):,}, "
                     f"tokens {sum(m['num_tokens'] for m in metas):,}")  # 3 train + 1 validation
  for split, folder in zip(("train", "validation"), folders):
    local = _load(three, vocab, tmp_path / "local", monkeypatch, split)
    local_folder = tmp_path / "local" / "tokenized" / pathlib.Path(folder).name
    assert _files(folder) == _files(local_folder)  # the parts joined and removed
    assert token_store.open_store(folder).meta == local.meta
  # A second run finds them built; a trainer pointed at that cache reads them as they are.
  logs.clear()
  build_token_stores.build(_config(three), ["train", "validation"], str(tmp_path / "beam"), [],
                           log=logs.append)
  assert logs == [f"{f}: already built" for f in folders]
  before = _files(folders[0])
  assert len(_load(three, vocab, tmp_path / "beam", monkeypatch))
  assert _files(folders[0]) == before


def test_the_beam_job_on_the_portable_job_api_writes_the_same_store(resharded, vocab, tmp_path,
                                                                    monkeypatch):
  """Submitted as Flink/Spark/Dataflow runners take it (a portable pipeline through Beam's Job
  API, here the embedded job service with in-process SDK workers)."""
  _, three = resharded
  [folder] = build_token_stores.build(_config(three), ["validation"], str(tmp_path / "beam"),
                                      list(PORTABLE_RUNNER), log=lambda line: None)
  _load(three, vocab, tmp_path / "local", monkeypatch, "validation")
  assert _files(folder) == _files(tmp_path / "local" / "tokenized" / pathlib.Path(folder).name)


def test_an_incomplete_store_is_reported_not_read(resharded, vocab, tmp_path, monkeypatch):
  original, _ = resharded
  monkeypatch.setenv("EDITSEQ_CACHE", str(tmp_path))
  tasks.register_tasks(original, vocab)
  folder = tmp_path / "tokenized" / token_store.folder_name(TASK, "validation", vocab)
  folder.mkdir(parents=True)  # what a Beam job still running (or one that failed) leaves
  (folder / "tokens.bin").write_bytes(b"\0\0")
  with pytest.raises(tasks.DataError, match=r"incomplete token store .* \(no meta.json\)"):
    token_store.load(TASK, "validation", vocab)


def test_cli_builds_and_rejects_unknown_flags_in_one_line(tmp_path):
  command = [sys.executable, "-m", "editseq.build_token_stores", "--config=configs/test_tiny.py",
             "--splits=validation", f"--cache_dir={tmp_path}"]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "examples" in result.stdout and len(list((tmp_path / "tokenized").iterdir())) == 1
  result = subprocess.run(command + ["--runer=DataflowRunner"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "unknown flags: --runer=DataflowRunner" in result.stderr
  # A store still to build on Dataflow, without Beam's GCP extras here (or, with them, with
  # options Beam's validation rejects): one line, before any work.
  result = subprocess.run(
      [*command[:-2], "--splits=train", f"--cache_dir={tmp_path}", "--runner=DataflowRunner",
       "--project=p", "--region=us-central1", "--temp_location=gs://b/t"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert ("needs Beam's Google Cloud extras" in result.stderr or
          "Invalid GCS bucket" in result.stderr), result.stderr[-2000:]


def test_cached_default_data_loads_without_beam(resharded):
  """Beam (and its import-time warnings) loads only to generate the default data, not to find
  it: every training run on the default data goes through `resolve_data_dir`."""
  original, _ = resharded  # built (or found) in the cache by now
  code = ("import sys; from editseq import default_data; "
          "print(default_data.resolve_data_dir(default_data.SMALL)); "
          "print('apache_beam' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == [original, "False"]
