"""data_gen.quiet_tensorflow: TensorFlow's load-time notices are dropped, nothing else is."""
import os
import subprocess
import sys

import pytest

from data_gen import quiet_tensorflow
from tests.conftest import REPO_ROOT

BANNER = "All log messages before absl::InitializeLog() is called"
# Lines TensorFlow 2.21 wrote on this machine while loading, as they came.
NOTICES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795695158.645479   16318 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795695158.646433   16318 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
    "E0000 00:00:1795695159.603053   16318 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1795695182.720429   16497 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
]


def test_only_the_load_notices_are_dropped():
  kept = ["E0000 00:00:1795695159.603053   16318 op_kernel.cc:52] OP_REQUIRES failed: bad input",
          "Traceback (most recent call last):", "ImportError: libcudart.so.12: cannot open"]
  text = "\n".join(NOTICES[:3] + kept[:1] + NOTICES[3:] + kept[1:]) + "\n"
  assert quiet_tensorflow.filter_notices(text) == "\n".join(kept) + "\n"


class _NoisyTensorFlow:
  """A loader that writes to file descriptor 2 as native code does, then maybe fails; the
  module it loads logs a failed cuInit when asked for its GPUs, as TensorFlow's first tf.data
  op does on a machine without one."""

  def __init__(self, lines, fail):
    self.lines, self.fail = lines, fail
    self.config = self  # module.config.list_physical_devices
    self.asked_for_gpus = False

  def create_module(self, spec):
    return None

  def exec_module(self, module):
    os.write(2, "".join(line + "\n" for line in self.lines).encode())
    if self.fail:
      raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")

  def list_physical_devices(self, kind):
    assert kind == "GPU"
    self.asked_for_gpus = True
    os.write(2, (NOTICES[3] + "\n").encode())
    return []


@pytest.mark.parametrize("fail", [False, True])
def test_the_loader_writes_back_what_matters(capfd, fail):
  noisy = _NoisyTensorFlow([*NOTICES, "a real problem"], fail)
  loader = quiet_tensorflow._QuietLoader(noisy)  # pylint: disable=protected-access
  if fail:
    with pytest.raises(ImportError, match="cannot open"):
      loader.exec_module(noisy)
  else:
    loader.exec_module(noisy)
  err = capfd.readouterr().err
  # A failed import keeps every line: the notices may be what explains it.
  assert err.splitlines() == ([*NOTICES, "a real problem"] if fail else ["a real problem"])
  # The GPU probe runs (and its cuInit line is dropped) inside the import, not at the first op.
  assert noisy.asked_for_gpus != fail


def _import_stderr(code: str) -> str:
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def test_importing_tensorflow_through_our_packages_is_quiet():
  """Without the hook TensorFlow prints its banner; after `quiet_logs.install()` (what every
  command line calls first) and a library's `find_spec` probe, which must not use the hook up,
  it prints nothing, and works."""
  assert BANNER in _import_stderr("import tensorflow")
  quiet = _import_stderr(
      "import importlib.util\n"
      "from data_gen import quiet_logs\n"
      "quiet_logs.install()\n"
      "assert importlib.util.find_spec('tensorflow') is not None\n"
      "import tensorflow as tf, seqio\n"
      "assert int(tf.constant(2) * 3) == 6")
  assert BANNER not in quiet and "port.cc" not in quiet, quiet
