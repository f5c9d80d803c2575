"""Trains or finetunes a model; rerunning the same command resumes from the last checkpoint.

    python -m editseq.train --config=configs/tinycodelm_150m.py --workdir=DIR \\
        [--config.train.steps=1000 --config.optimizer.learning_rate=1e-4 ...]

`--config.train.epochs=E` (E > 0) trains E passes over the train split instead of
`train.steps`, which is then derived from the data (editseq/config_sections.py says how).

With no data flags it trains on the embedded default data (built on first use). Exit status:
0 done, 1 diverged (NaN/inf loss; the last good checkpoint is kept), 2 bad config or data,
143 preempted by SIGTERM after saving a checkpoint.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from data_gen import paths
from data_gen import quiet_logs
from data_gen import usage
from editseq import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); override fields with --config.SECTION.KEY=VALUE.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder: config.json, checkpoints/, metrics.jsonl, tensorboard/. "
    "Local or gs://; rerunning with the same workdir resumes.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): 'auto' joins a multi-process job when the environment "
    "describes one (Cloud TPU VM, SLURM, Open MPI, Kubernetes JobSet) or when "
    "--coordinator_address is given, and runs alone otherwise.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host jobs that no cluster "
    "environment describes (e.g. GPU hosts started by scripts/gpu/gpu_launch.sh).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator_address.")

EXIT_DIVERGED, EXIT_PREEMPTED = 1, 143


def _initialize_distributed(mode: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if mode == "off":
    return
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit) and None in explicit:
    usage.fail("--coordinator_address, --num_processes and --process_id go together")
  try:
    jax.distributed.initialize(*explicit)
  except ValueError as e:
    # Raised before contacting anyone when no cluster environment is detected.
    if mode == "on" or "coordinator_address" not in str(e):
      raise
  if jax.process_count() > 1:
    logging.info("process %d of %d", jax.process_index(), jax.process_count())


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    usage.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.load_config(_CONFIG)
  if config is None or not _WORKDIR.value:
    usage.fail("--config and --workdir are required (see --help)")
  if config.train.epochs > 0 and "train.steps" in config_flags.get_override_values(
      flags.FLAGS["config"]):
    usage.fail(f"--config.train.steps cannot be given with train.epochs={config.train.epochs:g}: "
               "the steps are derived from the epochs (set train.epochs=0 to give steps)")
  workdir = paths.absolute(_WORKDIR.value)
  cli.absolute_config_paths(config)
  try:
    paths.check_writable_dir(workdir, "--workdir")
  except paths.PathError as e:
    usage.fail(str(e))
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO.
  _initialize_distributed(_DISTRIBUTED.value)

  from editseq import config_validation  # pylint: disable=g-import-not-at-top
  from editseq import trainer  # pylint: disable=g-import-not-at-top
  try:
    trainer.train_and_evaluate(config, workdir)
  except config_validation.ConfigError as e:
    usage.fail(str(e))
  except trainer.TrainingDiverged as e:
    usage.fail(str(e), EXIT_DIVERGED)
  except trainer.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  quiet_logs.install()
  app.run(main, flags_parser=cli.parse_flags)
