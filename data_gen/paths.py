"""Path flags made absolute once, where each command line is read.

orbax refuses relative paths, and a run's `config.json` must name the same folders whatever
the working directory of a later resume or evaluation; so every CLI passes its path-valued
flags (and config keys: editseq/cli.py) through `absolute` before doing anything with them.
URLs (`gs://`, `s3://`, `hf://`, `http(s)://`, ...) and empty values pass unchanged.
"""
from __future__ import annotations

import os
import re
import tempfile

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str) -> bool:
  return bool(_URL.match(path))


def absolute(path: str | None) -> str | None:
  """`path` made absolute against the working directory (`~` expanded); URLs, "" and None as
  they are."""
  if not path or is_url(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


class PathError(ValueError):
  """A folder a command must write to cannot be written; the message is one line."""


def check_writable_dir(path: str, flag: str) -> None:
  """Raises PathError unless folder `path` (absolute) exists or can be made, and takes a file.

  Tried for real (make the folders, write and remove a probe file), so whatever would fail
  later fails now, for root too (read-only mounts, a path under a file, /proc). Folders it
  made are removed again. URLs are left to the run.
  """
  if is_url(path):
    return
  made, existing = [], path
  while not os.path.exists(existing):
    made.append(existing)
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = "" if existing == path else f" ({existing} is a file)"
    raise PathError(f"{flag} {path} is not a folder{where}")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise PathError(f"{flag} {path} is not writable: {e.strerror}") from None
  finally:
    for folder in made:  # deepest first
      try:
        os.rmdir(folder)
      except OSError:
        pass
