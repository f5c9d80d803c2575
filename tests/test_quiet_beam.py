"""data_gen.quiet_beam: Beam's BigQuery-client notice is dropped, other root warnings are not."""
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

NOTICE = "apitools not found"
_BEAM_BIGQUERY = "apache_beam.io.gcp.internal.clients.bigquery"


def _stderr(code: str) -> str:
  return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                        text=True, check=True, timeout=300).stderr


@pytest.mark.skipif(importlib.util.find_spec("apitools") is not None,
                    reason="Beam's GCP extra is installed: Beam logs no notice")
def test_the_notice_is_dropped_and_other_warnings_kept():
  assert NOTICE in _stderr(f"import {_BEAM_BIGQUERY}")  # what Beam does on its own
  err = _stderr(f"from data_gen import quiet_logs; quiet_logs.install(); "
                f"import {_BEAM_BIGQUERY}, logging; logging.warning('kept')")
  assert NOTICE not in err and "WARNING:root:kept" in err


@pytest.mark.parametrize("module, words", [("data_gen.pipeline", "usage: python -m data_gen"),
                                           ("editseq.build_token_stores", "--direct_num_workers")])
def test_the_command_line_tools_start_quietly(module, words):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as users run them
  result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert words in result.stdout + result.stderr  # the help itself (absl exits 1 after it)
  assert NOTICE not in result.stderr
  assert "absl::InitializeLog" not in result.stderr  # TensorFlow's banner (build_token_stores)


def test_importing_the_packages_installs_no_filter():
  """Only a command line installs the filters (`data_gen.quiet_logs`): importing the packages,
  or the pipeline as a library, leaves logging and the import system as they were."""
  _stderr("import logging, sys, data_gen, editseq, eval, data_gen.pipeline, editseq.tasks\n"
          "assert not logging.getLogger().filters, logging.getLogger().filters\n"
          "assert not [f for f in sys.meta_path if 'Quiet' in type(f).__name__], sys.meta_path")
