"""Usage errors of every command line (data_gen, editseq, eval): a mistake in the flags is one
`error: ...` line on stderr and exit status 2, never a traceback. Standard library only, so the
lowest layer can use it; absl flags and configs are editseq/cli.py's."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_USAGE = 2


def fail(message: str, status: int = EXIT_USAGE) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose mistakes are one `error: ...` line and exit status 2 (argparse's own print
  its usage first; `--help` shows that)."""

  def error(self, message: str) -> NoReturn:
    fail(message)


def one_line(error: BaseException) -> str:
  detail = str(error.args[0] if error.args else error)
  return " ".join(detail.replace("\\n", " ").replace("\\'", "'").split()).strip("\"")
