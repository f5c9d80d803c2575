"""Apache Beam without the notices that say nothing about a local run.

Importing Beam's I/O modules logs "apitools not found, and bigquery client libraries are not
available ..." at WARNING on the root logger wherever Beam's GCP extra is not installed: on every
`data_gen` and `build_token_stores` run that does not target Dataflow, `--help` included. It
says nothing about those runs, and a Dataflow run without the extra is already a one-line error
(`data_gen.pipeline.make_pipeline`). `install()` (from `data_gen.quiet_logs`, which
every command line calls) adds a filter to the root logger that drops that one record; every other passes.

Beam's local worker processes (`--direct_running_mode=multi_processing`) log their start and
stop at INFO (some fifteen lines per worker), repeat the notice above, warn that a local job has
no staging folder, and send their warnings to the launcher, which prints them a second time.
`worker_environment()` runs those workers through this module instead (`run_worker()`): the
same Beam worker, whose stderr shows records at `$EDITSEQ_BEAM_LOG_LEVEL`
(default WARNING) and above, without those notices; `install()` drops the launcher's copies of
worker records below ERROR (the worker has printed them itself).
"""
from __future__ import annotations

import logging
import os
import shlex
import sys

LOG_LEVEL_ENV = "EDITSEQ_BEAM_LOG_LEVEL"
_NOTICES = (
    "apitools not found, and bigquery client libraries are not available",
    "No semi_persistent_directory found",  # a local job stages nothing
    "If direct_num_workers is not equal to 1",  # worker_environment() under 'in_memory'
)
# The launcher's logger for the log records its local workers send it.
_JOB_SERVICE_LOGGER = "apache_beam.runners.portability.local_job_service"
_FN_RUNNER_LOGGER = "apache_beam.runners.portability.fn_api_runner.fn_runner"


class _DropNotices(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    message = str(record.msg)
    if any(message.startswith(notice) for notice in _NOTICES):
      return False
    # A worker's own record, repeated by the launcher: the worker printed it already.
    return not (record.name == _JOB_SERVICE_LOGGER and message.startswith("Worker: ")
                and record.levelno < logging.ERROR)


def _add_filter(logger: logging.Logger) -> None:
  if not any(isinstance(f, _DropNotices) for f in logger.filters):
    logger.addFilter(_DropNotices())


def install() -> None:
  """Filters the notices out of the loggers that emit them (a logger's filters see only the
  records logged on it, not those its children pass up)."""
  for name in ("", _JOB_SERVICE_LOGGER, _FN_RUNNER_LOGGER, "__main__",
               "apache_beam.runners.worker.sdk_worker_main"):
    _add_filter(logging.getLogger(name))


def log_level() -> int:
  """The level of Beam records that local workers print ($EDITSEQ_BEAM_LOG_LEVEL, a name)."""
  level = logging.getLevelName(os.environ.get(LOG_LEVEL_ENV, "WARNING").upper())
  return level if isinstance(level, int) else logging.WARNING


def worker_environment():
  """Beam's environment for local worker processes, run through this module."""
  from apache_beam.transforms import environments  # pylint: disable=g-import-not-at-top
  command = ("from data_gen import quiet_beam, quiet_logs; quiet_logs.install(); "
             "quiet_beam.run_worker()")
  return environments.SubprocessSDKEnvironment.from_command_string(
      f"{shlex.quote(sys.executable)} -c {shlex.quote(command)}")


def run_worker() -> None:
  """A Beam SDK worker whose stderr shows records at `log_level()` and above. Its records still
  reach the launcher (Beam sets the root logger to INFO for that), whose own level decides."""
  install()
  handler = logging.StreamHandler()
  handler.setLevel(log_level())
  handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
  handler.addFilter(_DropNotices())
  logging.getLogger().addHandler(handler)  # before Beam's import calls logging.basicConfig()
  from apache_beam.runners.worker import sdk_worker_main  # pylint: disable=g-import-not-at-top
  sdk_worker_main.main(sys.argv)
