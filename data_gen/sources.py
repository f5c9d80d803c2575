"""Program sources for the data_gen pipeline: each yields (source_id, instruction, program) records.

A source is split into shards (small picklable strings: a file, a module) that Beam workers read
independently, so reading scales with the workers. Records carry a stable `source_id` (the same
program gets the same id on every run and machine); anything unusable is yielded as a `Skip` with
a reason, so the pipeline can count it instead of losing it silently.

File sources hand over raw bytes; `data_gen.programs` decodes and checks them (and dataset
text) in the pipeline with the same rules for every source, and for LintSeq.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
from typing import Iterator

from apache_beam.io.filesystems import FileSystems

from data_gen import edit_format
from data_gen import stdlib_instructions
from data_gen.programs import BadProgram


class SourceError(ValueError):
  """A source is misconfigured (missing input, missing package): a user mistake, not bad data."""


@dataclasses.dataclass(frozen=True)
class Record:
  source_id: str
  instruction: str
  program: bytes | str  # bytes from file trees, text from datasets; see `programs`.


@dataclasses.dataclass(frozen=True)
class Skip:
  source_id: str
  reason: str


class Source(abc.ABC):
  """A collection of programs, read shard by shard."""

  @abc.abstractmethod
  def shards(self) -> list[str]:
    """Shard descriptors, in a fixed order; computed once, on the machine that builds the job."""

  @abc.abstractmethod
  def read(self, shard: str) -> Iterator[Record | Skip]:
    """Records of one shard; runs on the workers."""

  def fingerprint(self) -> str | None:
    """A digest of everything this source reads, or None when that is not cheap to know (then
    `python -m data_gen.pipeline` always regenerates instead of reusing an earlier output)."""
    return None


def _files_fingerprint(root: str, shards: list[str]) -> str:
  """Digest of the shard paths and the content of the files they name under `root`."""
  h = hashlib.sha256()
  for shard in shards:
    try:
      with FileSystems.open(os.path.join(root, shard) if root else shard) as f:
        content = hashlib.sha256(f.read()).digest()
    except OSError:  # read() counts it as unreadable; so does the digest
      content = b"unreadable"
    h.update(shard.encode() + b"\0" + content)
  return h.hexdigest()


class PyTreeSource(Source):
  """Every `.py` file under a folder, one program per file, instruction "" (pretraining-style).

  Ids are `<name>:<path relative to root>`. Folders named in `exclude` are not entered (by
  default third-party packages and caches, which live inside the standard library folder).
  """

  def __init__(self, root: str, name: str | None = None,
               exclude: tuple[str, ...] = ("site-packages", "dist-packages", "__pycache__")):
    if not os.path.isdir(root):
      raise SourceError(f"--input {root!r} is not a folder")
    self.root = root
    self.name = name or os.path.basename(os.path.normpath(root))
    self.exclude = frozenset(exclude)

  def shards(self) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(self.root):
      dirnames[:] = sorted(d for d in dirnames if d not in self.exclude)
      rel_dir = os.path.relpath(dirpath, self.root)
      found += [os.path.normpath(os.path.join(rel_dir, f)) for f in filenames if f.endswith(".py")]
    return sorted(found, key=lambda p: p.split(os.sep))

  def fingerprint(self) -> str:
    return _files_fingerprint(self.root, self.shards())

  def read(self, shard: str) -> Iterator[Record | Skip]:
    source_id = f"{self.name}:{shard.replace(os.sep, '/')}"
    try:
      with open(os.path.join(self.root, shard), "rb") as f:
        data = f.read()
    except OSError:
      yield Skip(source_id, "unreadable")
      return
    yield Record(source_id, "", data)


def stdlib_tree() -> PyTreeSource:
  """The running Python's standard library as a tree of programs (ids `stdlib:<path>`)."""
  return PyTreeSource(stdlib_instructions.stdlib_root(), name="stdlib")


class StdlibInstructionSource(Source):
  """The embedded default instruction data (see `stdlib_instructions`), one shard per module.

  `root=None` means the standard library of the process that reads: on a remote runner, the
  worker's own (Beam requires the launcher's Python version there, so the modules match).
  """

  def __init__(self, root: str | None = None):
    self.root = root

  def shards(self) -> list[str]:
    return stdlib_instructions.module_files(self.root or stdlib_instructions.stdlib_root())

  def fingerprint(self) -> str:
    return _files_fingerprint(self.root or stdlib_instructions.stdlib_root(), self.shards())

  def read(self, shard: str) -> Iterator[Record | Skip]:
    text = stdlib_instructions.read_module(self.root or stdlib_instructions.stdlib_root(), shard)
    if text is None:
      return
    for pair in stdlib_instructions.pairs_from_module(text, shard):
      yield Record(pair.source_id, pair.instruction, pair.program)


def response_program(response: str) -> str:
  """The program in a response: its ```python blocks when it is markdown, else the text itself.

  A response with code fences but no Python block raises `BadProgram("no_python_block")`;
  several Python blocks are joined (see `edit_format.extract_python_blocks`).
  """
  if "```" not in response and "~~~" not in response:
    return response
  program = edit_format.extract_python_blocks(response)
  if not program.strip():
    raise BadProgram("no_python_block")
  return program


def _example_record(source_id: str, row: dict, instruction_key: str, response_key: str,
                    raw: bool = False):
  """A Record from one dataset row, or a Skip (`missing_key`, `no_python_block`). `raw`: the
  response is taken as it is (a document: web text, a source file), never as markdown."""
  instruction = row.get(instruction_key, "") if instruction_key else ""
  response = row.get(response_key)
  if not isinstance(instruction, str) or not isinstance(response, str):
    return Skip(source_id, "missing_key")
  if raw:
    return Record(source_id, instruction, response)
  try:
    return Record(source_id, instruction, response_program(response))
  except BadProgram as e:
    return Skip(source_id, e.reason)


class JsonlSource(Source):
  """JSON-lines instruction data (local or any Beam filesystem, `.gz` read transparently).

  Each line is an object; `instruction_key` ("" for none) and `response_key` name its fields.
  Ids are `<file name>:<line number>` (1-based). Undecodable lines are skipped as `bad_json`.
  `raw`: responses are documents taken as they are (no markdown code-block extraction).
  """

  def __init__(self, paths: list[str], instruction_key: str = "instruction",
               response_key: str = "response", raw: bool = False):
    if not paths:
      raise SourceError("the jsonl source needs --input FILE.jsonl")
    for path in paths:
      if not FileSystems.exists(path):
        raise SourceError(f"--input {path!r} does not exist")
    if not response_key:
      raise SourceError("--response_key must name the field holding the program")
    self.paths = list(paths)
    self.instruction_key = instruction_key
    self.response_key = response_key
    self.raw = raw

  def shards(self) -> list[str]:
    return list(self.paths)

  def fingerprint(self) -> str:
    return _files_fingerprint("", self.shards())

  def read(self, shard: str) -> Iterator[Record | Skip]:
    name = os.path.basename(shard)
    with FileSystems.open(shard) as f:
      for number, line in enumerate(iter(f.readline, b""), start=1):
        if not line.strip():
          continue
        source_id = f"{name}:{number}"
        try:
          row = json.loads(line)
        except ValueError:
          yield Skip(source_id, "bad_json")
          continue
        if not isinstance(row, dict):
          yield Skip(source_id, "bad_json")
          continue
        yield _example_record(source_id, row, self.instruction_key, self.response_key,
                              self.raw)


class HuggingFaceSource(Source):
  """A Hugging Face dataset split (needs the optional `datasets` package). Ids
  `hf:<name>:<split>:<row>`, or `hf:<name>:<data file>:<row>` with `data_files`.

  `data_dir` selects a folder of the dataset (e.g. The Stack's `data/python`); `data_files`
  (paths or patterns as `datasets.load_dataset` takes them) are read one file per shard, so
  Beam's workers share a large dataset; when they are local files, their content keys the
  output (a rerun on the same files reuses it). `raw` as for `JsonlSource`.
  """

  def __init__(self, dataset: str, split: str = "train", config: str | None = None,
               instruction_key: str = "instruction", response_key: str = "response",
               data_dir: str | None = None, data_files: list[str] | None = None,
               raw: bool = False):
    try:
      import datasets  # noqa: F401  (optional dependency, checked before the job starts)
    except ImportError:
      raise SourceError(
          "the hf source needs the Hugging Face `datasets` package: pip install datasets") from None
    self.dataset, self.split, self.config = dataset, split, config
    self.instruction_key, self.response_key = instruction_key, response_key
    self.data_dir, self.data_files, self.raw = data_dir, list(data_files or []), raw

  def shards(self) -> list[str]:
    return list(self.data_files) or [self.split]

  def fingerprint(self) -> str | None:
    if not self.data_files or not all(os.path.isfile(f) for f in self.data_files):
      return None
    return _files_fingerprint("", self.shards())

  def read(self, shard: str) -> Iterator[Record | Skip]:
    import datasets
    files = {"data_files": {self.split: shard}} if self.data_files else {}
    rows = datasets.load_dataset(self.dataset, self.config, data_dir=self.data_dir,
                                 split=self.split, **files)
    for index, row in enumerate(rows):
      yield _example_record(f"hf:{self.dataset}:{shard}:{index}", row,
                            self.instruction_key, self.response_key, self.raw)


class TfdsSource(Source):
  """A TFDS dataset split, read in its stored order. Ids `tfds:<name>:<split>:<index>`.

  Text features may be stored as bytes (`tfds.features.Text`); they are decoded as UTF-8.
  """

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
               instruction_key: str = "instruction", response_key: str = "response",
               raw: bool = False):
    if not name:
      raise SourceError("the tfds source needs --tfds_name")
    self.name, self.split, self.data_dir = name, split, data_dir
    self.instruction_key, self.response_key, self.raw = instruction_key, response_key, raw

  def shards(self) -> list[str]:
    import tensorflow_datasets as tfds
    try:
      builder = tfds.builder(self.name, data_dir=self.data_dir)
    except tfds.core.DatasetNotFoundError:
      raise SourceError(f"no TFDS dataset {self.name!r} (data_dir {self.data_dir})") from None
    if not builder.is_prepared():
      raise SourceError(f"TFDS dataset {self.name!r} is not prepared in {builder.data_dir}: "
                        f"run `tfds build {self.name}` first")
    return [self.split]

  def read(self, shard: str) -> Iterator[Record | Skip]:
    import tensorflow_datasets as tfds
    builder = tfds.builder(self.name, data_dir=self.data_dir)
    dataset = builder.as_dataset(split=shard, shuffle_files=False)
    for index, row in enumerate(tfds.as_numpy(dataset)):
      source_id = f"tfds:{self.name}:{shard}:{index}"
      try:
        row = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in row.items()}
      except UnicodeDecodeError:
        yield Skip(source_id, "not_utf8")
        continue
      yield _example_record(source_id, row, self.instruction_key, self.response_key,
                            self.raw)
