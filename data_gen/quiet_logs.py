"""The log filters a command line of this project installs, first thing, by calling `install()`.

Importing a package here changes no logger, import hook or file descriptor: each `python -m`
entry point calls `install()` in its `__main__` block, and the two whose own imports load Beam or
TensorFlow (`data_gen.pipeline`, `editseq.build_token_stores`) call it before those imports. It
lives in `data_gen`, the bottom layer, so that `editseq` and `eval` use it without `data_gen`
importing them: Beam's notices (`data_gen.quiet_beam`) and TensorFlow's load-time banner
(`data_gen.quiet_tensorflow`).
"""
from data_gen import quiet_beam
from data_gen import quiet_tensorflow


def install() -> None:
  """Drops Beam's notices from the loggers and quiets TensorFlow's first import (idempotent)."""
  quiet_beam.install()
  quiet_tensorflow.install()
