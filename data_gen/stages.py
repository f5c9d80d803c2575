"""Stages of a job that are skipped when nothing they depend on has changed.

A stage writes one output folder. Its key is a digest of everything the output depends on: the
arguments, the content of its input files (or the key of the stage that wrote them) and the code
that computes it. After a successful run `Stage.record()` writes `FOLDER/.stage.json` with the
key and a digest of every file in the folder; a later run with the same key finds the folder
intact (`Stage.reusable()`) and skips the work. A changed input, a changed or deleted output file,
or a run that stopped half way (`Stage.begin()` removes the record first) runs the stage again.

    stage = stages.Stage("data_gen", out_dir, stages.digest(args, source.fingerprint(), ...))
    if stage.reusable():
      print(stage.reused_message()); return
    stage.begin(); ...work...; stage.record()
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import pathlib

RECORD_FILE = ".stage.json"


def digest(*parts) -> str:
  """sha256 of JSON-able parts (dict keys sorted; other objects by `str`)."""
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def folder_digests(folder: str | os.PathLike, skip: tuple[str, ...] = ()) -> dict[str, str]:
  """{path relative to `folder`: sha256} of every file below it, except the names in `skip`."""
  folder = pathlib.Path(folder)
  return {p.relative_to(folder).as_posix(): file_digest(p)
          for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def code_digest(*packages: str) -> str:
  """Digest of the `.py` files of the named packages (the code version of a stage)."""
  h = hashlib.sha256()
  for package in packages:
    root = pathlib.Path(importlib.import_module(package).__file__).parent
    for path in sorted(root.glob("*.py")):
      h.update(path.name.encode() + b"\0" + path.read_bytes())
  return h.hexdigest()


class Stage:
  """One stage's output folder and the key of the inputs it was (or will be) made from."""

  def __init__(self, name: str, folder: str | os.PathLike, key: str):
    self.name, self.folder, self.key = name, pathlib.Path(folder), key

  @property
  def _record_path(self) -> pathlib.Path:
    return self.folder / RECORD_FILE

  def reusable(self) -> bool:
    """True when the folder was made from the same key and no output changed since."""
    try:
      record = json.loads(self._record_path.read_text())
    except (OSError, ValueError):
      return False
    return (isinstance(record, dict) and record.get("key") == self.key
            and record.get("files") == folder_digests(self.folder, skip=(RECORD_FILE,)))

  def begin(self) -> None:
    """Forgets the previous record before the folder is rewritten."""
    self._record_path.unlink(missing_ok=True)

  def record(self) -> None:
    files = folder_digests(self.folder, skip=(RECORD_FILE,))
    self._record_path.write_text(json.dumps(
        {"stage": self.name, "key": self.key, "files": files}, indent=1, sort_keys=True) + "\n")

  def reused_message(self) -> str:
    return (f"{self.name}: reusing {self.folder} (made from the same inputs, key "
            f"{self.key[:12]}; --force reruns it)")
