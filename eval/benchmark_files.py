"""The evalplus release files behind HumanEval+ and MBPP+, fetched into the cache on first use.

Each file is pinned by release tag and SHA-256 and lands in `$EDITSEQ_CACHE/evalplus/` (default
~/.cache/editseq) as `<name>-<tag>.jsonl.gz`: downloaded to a temporary file in that folder,
checked, then renamed into place, so a failed or corrupted download leaves nothing behind and
concurrent first uses each see either no file or the whole one. A cached file is checked again on
every use (a few milliseconds) and fetched anew if it no longer matches.
`$EDITSEQ_EVALPLUS_URL` replaces the release URLs with a mirror that serves every file by its
release name (`<url>/HumanEvalPlus.jsonl.gz`); offline, pass the file itself (`--data_path`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import tempfile
import urllib.error
import urllib.request

from editseq.default_data import cache_dir

MIRROR_ENV = "EDITSEQ_EVALPLUS_URL"
_TIMEOUT_S = 60.0
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
  """A release file could not be fetched, or what came is not the pinned file."""


@dataclasses.dataclass(frozen=True)
class ReleaseFile:
  name: str
  tag: str
  url: str
  sha256: str

  @property
  def cached_name(self) -> str:
    stem = self.name.split(".", 1)
    return f"{stem[0]}-{self.tag}.{stem[1]}"


RELEASE_FILES = {
    "humaneval_plus": ReleaseFile(
        "HumanEvalPlus.jsonl.gz", "v0.1.10",
        "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/"
        "HumanEvalPlus.jsonl.gz",
        "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101"),
    "mbpp_plus": ReleaseFile(
        "MbppPlus.jsonl.gz", "v0.2.0",
        "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz",
        "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63"),
}


def source_url(release: ReleaseFile) -> str:
  mirror = os.environ.get(MIRROR_ENV)
  return f"{mirror.rstrip('/')}/{release.name}" if mirror else release.url


def sha256_of(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(benchmark: str, *, progress: bool = True) -> pathlib.Path:
  """The verified release file of `benchmark`, downloaded into the cache unless it is there."""
  release = RELEASE_FILES[benchmark]
  path = cache_dir() / "evalplus" / release.cached_name
  if path.exists() and sha256_of(path) == release.sha256:
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  url = source_url(release)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{release.cached_name}.tmp-")
  try:
    with os.fdopen(fd, "wb") as out:
      digest = _download(url, out, f"{release.name} {release.tag}", progress)
    if digest != release.sha256:
      raise DownloadError(
          f"{url} is not the {benchmark} release file {release.name} {release.tag} (sha256 "
          f"{digest}, expected {release.sha256}); nothing was kept. Pass --data_path a verified "
          f"copy, or point {MIRROR_ENV} at a good mirror")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  return path


def _download(url: str, out, label: str, progress: bool) -> str:
  """Streams `url` into `out` with a progress bar; returns the SHA-256 of what came."""
  from tqdm import tqdm
  digest = hashlib.sha256()
  try:
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
      length = response.headers.get("Content-Length")
      with tqdm(total=int(length) if length else None, unit="B", unit_scale=True,
                desc=f"downloading {label}", disable=not progress) as bar:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
          digest.update(chunk)
          out.write(chunk)
          bar.update(len(chunk))
  except (urllib.error.URLError, OSError, ValueError) as e:
    if isinstance(e, urllib.error.HTTPError):
      reason = f"HTTP {e.code} {e.reason}"
    else:
      reason = getattr(e, "reason", None) or e
    raise DownloadError(f"cannot download {label} from {url} ({reason}); offline, pass "
                        f"--data_path a copy of {label}") from None
  return digest.hexdigest()
