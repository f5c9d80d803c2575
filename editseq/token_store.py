"""Token stores: a task split tokenized once into flat arrays that the input pipeline memory-maps.

A store is the folder `<cache>/tokenized/<task>-<split>-<key>/` (`<cache>` is `$EDITSEQ_CACHE`,
default `~/.cache/editseq`; `<key>` hashes the format version, the task's spec, its data files
with their sizes and modification times, and the vocabulary), holding:

    tokens.bin        the examples' tokens laid end to end (uint16, or uint32 for a vocabulary
                      of over 65536 ids)
    offsets.npy       int64 [num_examples + 1]: example i is tokens[offsets[i]:offsets[i + 1]]
    prompt_lens.npy   int32 [num_examples]: its first prompt_lens[i] tokens are the prompt
    meta.json         task, split, counts, max token id, dtype, vocabulary fingerprint, and the
                      examples and tokens of each data file; written last: a folder without it
                      is a build in progress (or one that failed)

The examples are in data-file order: data file i, read by seqio as `ShardInfo(i, num_files)`,
is one shard of the store, so its bytes depend on the data files and the vocabulary only. A
process builds it on first use (`load`, one data file after another), or
`python -m editseq.build_token_stores` tokenizes the data files in parallel beforehand with
Apache Beam, on any runner, into a cache that every host sees, and joins their parts into
tokens.bin. Both ways write the same bytes (tests/test_token_store.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib

import numpy as np
import seqio
import tensorflow as tf
from tqdm import auto as tqdm

from editseq import default_data
from editseq import tasks
from editseq.tasks import DataError

VERSION = 2
META_FILE = "meta.json"


@dataclasses.dataclass(frozen=True)
class TokenStore:
  """Tokenized examples of one task split: example i is `tokens[offsets[i]:offsets[i + 1]]`
  (prompt + completion + eos), its first `prompt_lens[i]` tokens the prompt."""
  tokens: np.ndarray
  offsets: np.ndarray
  prompt_lens: np.ndarray
  meta: dict

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def __len__(self) -> int:
    return len(self.prompt_lens)

  def example(self, i: int) -> np.ndarray:
    return np.asarray(self.tokens[self.offsets[i]:self.offsets[i + 1]])


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def folder_name(task_name: str, split: str, vocab) -> str:
  """`<task>-<split>-<key>` of the store of these data files and this vocabulary."""
  files = tasks.task_files(task_name, split)
  key = hashlib.sha256(json.dumps({
      "version": VERSION, "task": task_name, "split": split, "vocab": vocab.fingerprint,
      "spec": dataclasses.asdict(tasks.TASK_SPECS[task_name]),
      "files": [(f, tf.io.gfile.stat(f).length, tf.io.gfile.stat(f).mtime_nsec) for f in files],
  }, sort_keys=True).encode()).hexdigest()[:16]
  return f"{task_name}-{split}-{key}"


def part_file(folder: str, index: int) -> str:
  """Where a parallel build writes data file `index`'s tokens before `join_parts`."""
  return os.path.join(folder, "parts", f"tokens-{index:05d}.bin")


def _save_npy(path: str, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# Writing: one shard per data file, then the index and meta.json.

@dataclasses.dataclass(frozen=True)
class Shard:
  """What writing one shard reports to `finish`."""
  index: int
  lengths: np.ndarray
  prompt_lens: np.ndarray
  max_token_id: int


def write_shard(out, task_name: str, split: str, index: int, num_files: int, vocab,
                progress=None) -> Shard:
  """Tokenizes data file `index` of the split (of `num_files`), writing its tokens to the
  binary file object `out`."""
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False,
      shard_info=seqio.ShardInfo(index=index, num_shards=num_files))
  ds = ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
  dtype = token_dtype(vocab.vocab_size)
  lengths, prompt_lens, max_id = [], [], -1
  for ex in ds.as_numpy_iterator():
    tokens = np.concatenate([ex["inputs"], ex["targets"]])
    if len(tokens):
      max_id = max(max_id, int(tokens.max()))
    out.write(tokens.astype(dtype).tobytes())
    lengths.append(len(tokens))
    prompt_lens.append(len(ex["inputs"]))
    if progress is not None:
      progress.update()
  return Shard(index, np.asarray(lengths, np.int64), np.asarray(prompt_lens, np.int32), max_id)


def join_parts(folder: str, num_parts: int, chunk_bytes: int = 64 << 20) -> None:
  """Appends the parts a parallel build wrote into `folder/tokens.bin`, in order, and deletes
  them (one sequential copy: minutes for a 100 GB store, small next to tokenizing it)."""
  with tf.io.gfile.GFile(os.path.join(folder, "tokens.bin"), "wb") as out:
    for i in range(num_parts):
      with tf.io.gfile.GFile(part_file(folder, i), "rb") as part:
        while chunk := part.read(chunk_bytes):
          out.write(chunk)
  tf.io.gfile.rmtree(os.path.join(folder, "parts"))


def finish(folder: str, task_name: str, split: str, vocab_fingerprint: str, vocab_size: int,
           shards: list[Shard]) -> dict:
  """Writes the index of the written shards and, last, meta.json; returns the meta."""
  shards = sorted(shards, key=lambda s: s.index)
  if [s.index for s in shards] != list(range(len(shards))):
    raise ValueError(f"shards missing: have {[s.index for s in shards]}")
  lengths = np.concatenate([np.zeros(0, np.int64)] + [s.lengths for s in shards])
  offsets = np.zeros(len(lengths) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  _save_npy(os.path.join(folder, "offsets.npy"), offsets)
  _save_npy(os.path.join(folder, "prompt_lens.npy"),
            np.concatenate([np.zeros(0, np.int32)] + [s.prompt_lens for s in shards]))
  meta = {"task": task_name, "split": split, "num_examples": len(lengths),
          "num_tokens": int(offsets[-1]),
          "max_token_id": max([-1] + [s.max_token_id for s in shards]),
          "dtype": np.dtype(token_dtype(vocab_size)).name, "vocab": vocab_fingerprint,
          "version": VERSION,
          "shards": [{"num_examples": len(s.lengths), "num_tokens": int(s.lengths.sum())}
                     for s in shards]}
  with tf.io.gfile.GFile(os.path.join(folder, META_FILE), "w") as f:
    f.write(json.dumps(meta, indent=1))
  return meta


def build(folder: str, task_name: str, split: str, vocab) -> dict:
  """Writes the whole store into `folder` in this process, one data file after another."""
  num_files = len(tasks.task_files(task_name, split))
  with tqdm.tqdm(desc=f"tokenizing {task_name}/{split}", unit=" examples", mininterval=2,
                 disable=None) as progress, \
       tf.io.gfile.GFile(os.path.join(folder, "tokens.bin"), "wb") as out:
    shards = [write_shard(out, task_name, split, i, num_files, vocab, progress)
              for i in range(num_files)]
  return finish(folder, task_name, split, vocab.fingerprint, vocab.vocab_size, shards)


# ---------------------------------------------------------------------------------------------
# Reading.

def open_store(folder: str | os.PathLike) -> TokenStore:
  """The store in `folder` (a local path: its tokens are memory-mapped)."""
  folder = pathlib.Path(folder)
  if not (folder / META_FILE).is_file():
    raise DataError(f"incomplete token store {folder} (no {META_FILE}): a build is in progress "
                    "or failed; wait for it, or delete the folder to rebuild it")
  meta = json.loads((folder / META_FILE).read_text())
  tokens = (np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r")
            if meta["num_tokens"] else np.zeros(0, meta["dtype"]))
  return TokenStore(tokens, np.load(folder / "offsets.npy"), np.load(folder / "prompt_lens.npy"),
                    meta)


def load(task_name: str, split: str, vocab) -> TokenStore:
  """The tokenized split of a registered task, built on first use."""
  folder = default_data.cache_dir() / "tokenized" / folder_name(task_name, split, vocab)
  default_data.build_once(folder, lambda tmp: build(str(tmp), task_name, split, vocab))
  store = open_store(folder)
  if not len(store):
    raise DataError(f"task {task_name!r} has no {split!r} examples "
                    f"({', '.join(tasks.task_files(task_name, split))})")
  return store
