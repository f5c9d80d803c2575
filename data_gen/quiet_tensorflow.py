"""TensorFlow without its C++ start-up banner.

`import tensorflow` prints some eight lines to stderr from native code before Python's logging
exists (absl's "All log messages before absl::InitializeLog()", oneDNN and CUDA-driver notices,
twice: two of its libraries log on load), and `TF_CPP_MIN_LOG_LEVEL` does not reach them; its
first tf.data or eager op then looks for GPUs and, on a machine without one, logs a failed cuInit. Every
CLI here imports TensorFlow (tf.data, TFRecords, seqio), so each run began with that noise.

`install()` (from `data_gen.quiet_logs`, which every command line calls; `eval`'s sandbox
stays free of it) adds an import hook that runs TensorFlow's first import with
file descriptor 2 sent to a temporary file, looks for GPUs at once, then writes back every line
that is not one of those notices. If the import fails, everything is written back.
Nothing is imported until someone imports TensorFlow.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile

# Native log lines TensorFlow writes while it loads that say nothing about this run.
_NOTICE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|[IW]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard|cuda_[a-z_]+)\.cc:\d+\] "
    r"|E\d{4} [\d:. ]+\d+ cuda_[a-z_]+\.cc:\d+\] failed call to cuInit"
    r"|To enable the following instructions: ")


def filter_notices(text: str) -> str:
    """`text` without TensorFlow's load-time notices (each a whole line)."""
    return "".join(line for line in text.splitlines(keepends=True) if not _NOTICE.match(line))


class _QuietLoader(importlib.abc.Loader):
  """Runs the real loader of the `tensorflow` package with stderr captured and filtered."""

  def __init__(self, loader: importlib.abc.Loader):
    self._loader = loader

  def __getattr__(self, name):  # get_resource_reader, is_package, ...: the real loader's
    return getattr(self._loader, name)

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowFinder)]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
      os.dup2(captured.fileno(), 2)
      failed = True
      try:
        self._loader.exec_module(module)
        failed = False
        # TensorFlow looks for GPUs (cuInit, and its error line on a machine without one) at
        # its first tf.data or eager op, after the import: look now, while stderr is captured.
        module.config.list_physical_devices("GPU")
      finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", errors="replace")
        sys.stderr.write(text if failed else filter_notices(text))
        sys.stderr.flush()


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` with the other finders and wraps its loader. Stays in place until the
  package is loaded: libraries probe for it with `importlib.util.find_spec` without importing."""

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow" or self not in sys.meta_path:
      return None
    index = sys.meta_path.index(self)
    del sys.meta_path[index]
    try:
      spec = importlib.util.find_spec(name)
    finally:
      sys.meta_path.insert(index, self)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


def install() -> None:
  """Quiets TensorFlow's first import in this process (no-op if it is imported already), and
  its C++ INFO and WARNING lines after it (tf.data's notes about buffer sizes and caches) unless
  TF_CPP_MIN_LOG_LEVEL says otherwise."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowFinder)
                                        for f in sys.meta_path):
    return
  sys.meta_path.insert(0, _QuietTensorFlowFinder())
