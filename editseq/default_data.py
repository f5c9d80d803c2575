"""The embedded default data and tokenizer, built on first use under a cache folder.

    $EDITSEQ_CACHE (default ~/.cache/editseq)/
      data-<key>/          data_gen output for the standard library's instruction pairs (full)
      data-small-<key>/    the same for a deterministic sample of 300 programs (tests, test_tiny)
      tokenizer-8192-v1-py311/  byte-level BPE trained on the standard library's .py files plus
                           the small dataset's prompts and completions
      tokenized/           token stores of the input pipeline (editseq.token_store)

Config values: `data.data_dir = ""` is the full default, `"default:small"` the small one;
`data.vocab_path = ""` is the default tokenizer. Data folders are keyed by a hash of the
generator's code, so a code change regenerates instead of serving stale data; the tokenizer is
keyed by a version only, so that its ids keep their meaning for existing checkpoints (delete
its folder to retrain it). Builds go to a temporary folder renamed
into place under an exclusive file lock, so concurrent processes build once and never see a
partial folder. Sizes: the full set is 3,138 programs (15.7k LintSeq sequences, ~1.5 min to
build on 2 cores); the small one builds in well under a minute.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable

from data_gen import quiet_logs

SMALL = "default:small"
SMALL_PROGRAMS = 300
DEFAULT_VOCAB_SIZE = 8192
_DATA_VERSION = "1"
_TOKENIZER_VERSION = 1


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("EDITSEQ_CACHE", "~/.cache/editseq")).expanduser().absolute()


def build_once(final: str | os.PathLike, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """Runs `build(tmp_folder)` unless `final` exists, then renames tmp_folder to `final`.

  An exclusive `flock` on `final.lock` makes concurrent callers wait for the first build.
  """
  final = pathlib.Path(final)
  if final.is_dir():
    return final
  final.parent.mkdir(parents=True, exist_ok=True)
  with open(f"{final}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if final.is_dir():
      return final
    tmp = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
      build(tmp)
      os.replace(tmp, final)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return final


def _data_key(*parts: str) -> str:
  """Hash of the generator's code, its settings and the Python version (the stdlib differs)."""
  import data_gen  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256("|".join((_DATA_VERSION, sys.version, *parts)).encode())
  for f in sorted(pathlib.Path(data_gen.__file__).parent.glob("*.py")):
    h.update(f.read_bytes())
  return h.hexdigest()[:12]


def default_data_dir(small: bool = False, purpose: str = "") -> str:
  """The generated default dataset (all variants), built on first use; returns its folder.
  `purpose` ends the line that announces a build (what the data is built for)."""
  max_programs = SMALL_PROGRAMS if small else None
  name = f"data-small-{_data_key(str(max_programs))}" if small else f"data-{_data_key('full')}"

  def build(tmp: pathlib.Path) -> None:
    from data_gen import pipeline  # pylint: disable=g-import-not-at-top  # Beam: only to build
    logging.info("building the default %s dataset in %s", "small" if small else "full", tmp)
    print(f"editseq: generating the embedded default data ({'small' if small else 'full'}) "
          f"under {cache_dir()}{purpose} (first use only)", file=sys.stderr)
    pipeline.run(output_dir=str(tmp), max_programs=max_programs, progress=sys.stderr.isatty())

  return str(build_once(cache_dir() / name, build))


def resolve_data_dir(data_dir: str) -> str:
  """`config.data.data_dir` -> a folder: "" is the full default, SMALL the small one."""
  if data_dir == "":
    return default_data_dir(small=False)
  if data_dir == SMALL:
    return default_data_dir(small=True)
  return data_dir


def default_vocab_path(vocab_size: int = DEFAULT_VOCAB_SIZE) -> str:
  """The default tokenizer.json, trained on first use (~10 s)."""
  from editseq import tokenizer  # pylint: disable=g-import-not-at-top
  # Not keyed by code: a checkpoint's token ids must keep their meaning across code changes.
  folder = cache_dir() / (f"tokenizer-{vocab_size}-v{_TOKENIZER_VERSION}-"
                          f"py{sys.version_info.major}{sys.version_info.minor}")

  def build(tmp: pathlib.Path) -> None:
    from data_gen import dataset  # pylint: disable=g-import-not-at-top
    data_dir = default_data_dir(small=True, purpose=", the default tokenizer's training text")
    print(f"editseq: training the default tokenizer ({vocab_size:,} ids) on the standard "
          f"library's sources and that data, under {folder} (first use only)", file=sys.stderr)
    code = (text for _, text in tokenizer.iter_python_sources())
    instructions = (ex["prompt"] + ex["completion"] for ex in
                    dataset.read_examples(data_dir, "lintseq", "train"))
    tokenizer.train_tokenizer(itertools.chain(code, instructions), tmp / "tokenizer.json",
                              vocab_size=vocab_size)

  return str(build_once(folder, build) / "tokenizer.json")


def vocabulary(vocab_path: str = "", eos_token: str | None = None, pad_token: str | None = None):
  """A config's `data.vocab_path` as a seqio vocabulary; "" is the default tokenizer (built on
  first use). `eos_token` / `pad_token` (a config's `data.eos_token` / `data.pad_token`) name
  the tokenizer's end and padding tokens instead of its files."""
  from editseq import tokenizer  # pylint: disable=g-import-not-at-top
  return tokenizer.load_vocabulary(vocab_path or default_vocab_path(),
                                   eos_token=eos_token or None, pad_token=pad_token or None)


def config_vocabulary(data):
  """The vocabulary of a config's `data` section (`vocab_path`, `eos_token`, `pad_token`)."""
  return vocabulary(data.vocab_path, data.get("eos_token"), data.get("pad_token"))


def default_vocabulary():
  """The default tokenizer as a seqio vocabulary (built on first use)."""
  return vocabulary("")


def main(argv=None) -> int:
  """`python -m editseq.default_data [--small]`: builds the defaults now and prints the paths."""
  from data_gen import usage  # pylint: disable=g-import-not-at-top
  parser = usage.ArgumentParser(prog="python -m editseq.default_data", description=main.__doc__)
  parser.add_argument("--small", action="store_true", help="only the small dataset")
  args = parser.parse_args(argv)
  print(f"data:      {default_data_dir(small=args.small)}")
  print(f"tokenizer: {default_vocab_path()}")
  return 0


if __name__ == "__main__":
  quiet_logs.install()
  sys.exit(main())
