"""Builds a config's token stores with Apache Beam, before training, for every host to read.

    python -m editseq.build_token_stores --config=configs/tinycodelm_150m.py \\
        --config.data.data_dir=gs://B/data --cache_dir=gs://B/cache \\
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp \\
        --setup_file=./setup.py

Without it, each training host tokenizes every split it reads on first use, alone (a 72B-token
corpus would take days). Here each data file of a split is tokenized by one worker into a part,
and a last step joins the parts into tokens.bin and writes the store's index and meta.json
(editseq/token_store.py): the same bytes as a store built on first use. Stores already built
are skipped.

The hosts then read `<cache_dir>/tokenized/` as their `$EDITSEQ_CACHE/tokenized/`: set
`EDITSEQ_CACHE=<cache_dir>` where it is a shared file system, or copy it to each host's cache
(`gcloud storage cp -r gs://B/cache/tokenized ~/.cache/editseq/`), or mount the bucket (gcsfuse).

Flags this module does not define are Beam pipeline options; without `--runner` the job runs in
this process (Beam's FnApiRunner; `--direct_num_workers=N --direct_running_mode=multi_processing`
uses N cores). A remote runner's workers need the project and its requirements (`--setup_file`,
or a container image) and read the data and the vocabulary from where the config names them.
"""
from __future__ import annotations

import collections
import functools
import json
import os

from data_gen import quiet_logs

if __name__ == "__main__":  # a command line: before Beam's and TensorFlow's imports log
  quiet_logs.install()

import apache_beam as beam  # pylint: disable=wrong-import-position
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options import pipeline_options
from ml_collections import config_flags

from data_gen import paths
from data_gen import pipeline as beam_pipeline
from data_gen import usage
from editseq import cli
from editseq import default_data
from editseq import tasks
from editseq import token_store
from editseq.tasks import DataError


class _WriteShard(beam.DoFn):
  """Tokenizes data files into shards; each worker registers the tasks over the same data with
  the same vocabulary (checked by fingerprint) first."""

  def __init__(self, data_dir: str, vocab_args: tuple[str, str, str]):
    super().__init__()
    self.data_dir, self.vocab_args = data_dir, vocab_args

  def setup(self):
    self.vocab = default_data.vocabulary(*self.vocab_args)
    tasks.register_tasks(self.data_dir, self.vocab)

  def process(self, element):
    job, index = element
    if self.vocab.fingerprint != job["vocab"]:
      raise ValueError(f"this worker's vocabulary ({self.vocab.fingerprint}) is not the one the "
                       f"job was launched with ({job['vocab']})")
    with tf.io.gfile.GFile(token_store.part_file(job["folder"], index), "wb") as out:
      shard = token_store.write_shard(out, job["task"], job["split"], index, job["num_files"],
                                      self.vocab)
    # Progress, as the runner's monitoring shows it (e.g. Dataflow's job page).
    Metrics.counter("token_stores", "data_files").inc()
    Metrics.counter("token_stores", "examples").inc(len(shard.lengths))
    Metrics.counter("token_stores", "tokens").inc(int(shard.lengths.sum()))
    yield shard


def _finish(shards, job):
  token_store.join_parts(job["folder"], job["num_files"])
  return token_store.finish(job["folder"], job["task"], job["split"], job["vocab"],
                            job["vocab_size"], shards)


def add_jobs(pipeline: beam.Pipeline, jobs: list[dict], data_dir: str,
             vocab_args: tuple[str, str, str]) -> None:
  """One branch per store: its data files spread over the workers, then `finish` once."""
  for job in jobs:
    name = f"{job['task']}/{job['split']}"
    _ = (pipeline
         | f"Files {name}" >> beam.Create([(job, i) for i in range(job["num_files"])])
         | f"Spread {name}" >> beam.Reshuffle()
         | f"Tokenize {name}" >> beam.ParDo(_WriteShard(data_dir, vocab_args))
         | f"Collect {name}" >> beam.combiners.ToList()
         | f"Finish {name}" >> beam.Map(_finish, job))


def build(config, splits: list[str], cache_dir: str, pipeline_args: list[str],
          log=print) -> list[str]:
  """Builds the stores of `config.data.task` (each task of a mixture) for `splits` under
  `cache_dir/tokenized/`, skipping those already built; returns their folders."""
  unknown = beam_pipeline.unknown_beam_flags(pipeline_args)
  if unknown:
    raise DataError(f"unknown flags: {' '.join(unknown)} (see --help; flags this command does "
                    "not define are Beam pipeline options)")
  data_dir = default_data.resolve_data_dir(config.data.data_dir)
  vocab_args = (config.data.vocab_path, config.data.get("eos_token"), config.data.get("pad_token"))
  vocab = default_data.vocabulary(*vocab_args)
  tasks.register_tasks(data_dir, vocab)
  jobs, folders = [], []
  for task_name, _ in tasks.task_components(config.data.task):
    for split in splits:
      folder = os.path.join(cache_dir, "tokenized",
                            token_store.folder_name(task_name, split, vocab))
      folders.append(folder)
      if tf.io.gfile.exists(os.path.join(folder, token_store.META_FILE)):
        log(f"{folder}: already built")
        continue
      tf.io.gfile.makedirs(os.path.dirname(token_store.part_file(folder, 0)))
      jobs.append({"task": task_name, "split": split, "folder": folder,
                   "num_files": len(tasks.task_files(task_name, split)),
                   "vocab": vocab.fingerprint, "vocab_size": vocab.vocab_size})
  if jobs:
    pipeline = beam_pipeline.make_pipeline(pipeline_args)
    add_jobs(pipeline, jobs, data_dir, vocab_args)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("token_stores"))["counters"]
    totals = collections.Counter()
    for counter in counters:  # one per store's Tokenize step
      totals[counter.key.metric.name] += counter.committed
    log("tokenized " + ", ".join(f"{name} {n:,}" for name, n in sorted(totals.items())))
    for job in jobs:
      with tf.io.gfile.GFile(os.path.join(job["folder"], token_store.META_FILE)) as f:
        meta = json.load(f)
      log(f"{job['folder']}: {meta['num_examples']:,} examples, {meta['num_tokens']:,} tokens, "
          f"from {len(meta['shards'])} data files")
  return folders


def _define_flags() -> flags.FlagHolder:
  """The command's flags (defined only when it runs: `build` is a library function too)."""
  flags.DEFINE_list("splits", None, "Splits to tokenize (default: train and "
                    "config.data.eval_split).")
  flags.DEFINE_string("cache_dir", None, "Where the stores go (under tokenized/): local, a "
                      "shared file system or gs://. Default: $EDITSEQ_CACHE or ~/.cache/editseq, "
                      "the trainer's cache.")
  return config_flags.DEFINE_config_file(
      "config", None, "The training config whose data.task, data.data_dir and data.vocab_path "
      "name the stores.")


def main(argv: list[str], config_flag: flags.FlagHolder) -> None:
  config = cli.load_config(config_flag)
  if config is None:
    usage.fail("--config is required (see --help)")
  splits = flags.FLAGS.splits or ["train", config.data.eval_split]
  remote = pipeline_options.PipelineOptions(argv[1:]).view_as(
      pipeline_options.StandardOptions).runner is not None
  if not flags.FLAGS["verbosity"].present:  # A remote runner logs its job's progress at INFO.
    logging.set_verbosity(logging.INFO if remote else logging.WARNING)
  try:
    cli.absolute_config_paths(config)
    cache_dir = paths.absolute(flags.FLAGS.cache_dir) or str(default_data.cache_dir())
    paths.check_writable_dir(cache_dir, "--cache_dir")
    build(config, splits, cache_dir, argv[1:])
  except (DataError, beam_pipeline.UsageError, paths.PathError) as e:
    usage.fail(str(e))


if __name__ == "__main__":
  app.run(functools.partial(main, config_flag=_define_flags()),
          flags_parser=functools.partial(cli.parse_flags, known_only=True))
