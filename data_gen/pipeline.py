"""Apache Beam pipeline: program sources -> LintSeq / baseline examples -> sharded TFRecords.

    python -m data_gen.pipeline --output_dir OUT            # embedded default data, all variants
    python -m data_gen.pipeline --output_dir OUT --source jsonl --input data.jsonl \\
        --instruction_key q --response_key a
    python -m data_gen.pipeline --output_dir gs://B/out --runner=DataflowRunner \\
        --project P --region R --temp_location gs://B/tmp --sdk_container_image IMAGE

(a remote runner's workers need `data_gen` and its requirements: `--setup_file ./setup.py`
installs them on every worker, or use a container image holding them.)

Flags this module does not define are Beam pipeline options, so one command runs on any runner.
Without `--runner` the job runs on Beam's portable in-process runner (`FnApiRunner`, what
`DirectRunner` uses for batch jobs, named directly so that Beam does not first try to download
its Prism runner); `--direct_num_workers=2 --direct_running_mode=multi_processing` uses 2 cores.

Output (docs/ARCHITECTURE.md section 2): one TFDS dataset per variant, named after it,
`OUT/<variant>/1.0.0/<variant>-<split>.tfrecord-XXXXX-of-YYYYY` plus TFDS metadata (so
`tfds.load("lintseq", data_dir=OUT)` reads it), and `OUT/<variant>/stats.{json,txt}`. The
bytes are a function of the input and the settings only, never of the runner, worker count or
bundle boundaries:
- each program's split comes from a hash of its source id, its shard from another hash of it;
- the number of shards per split comes from the split's example count;
- each shard is written by one worker, records sorted by (source_id, sample_index), each
  `tf.train.Example` serialized with sorted map keys;
- records with the same source id are reduced to one (the smallest (instruction, program)),
  the others counted as `duplicate_source_id`;
- LintSeq itself is deterministic per (program, seed, sample index).
Programs are checked in two steps (`data_gen.programs`): their text when read, their parse when
generating, where the variants, which see each program one after another in a worker, share
one parse; `max_programs` samples among programs whose text passed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import math
import os
import sys
import time
import uuid

from data_gen import quiet_logs

if __name__ == "__main__":  # a command line: before Beam's import logs its notice
  quiet_logs.install()

import apache_beam as beam  # pylint: disable=wrong-import-position
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options import pipeline_options

from data_gen import dataset
from data_gen import progress as progress_lib
from data_gen import paths
from data_gen import programs
from data_gen import sources as sources_lib
from data_gen import stages
from data_gen import stats as stats_lib
from data_gen import quiet_beam
from data_gen import usage


class UsageError(ValueError):
  """A bad setting or flag, reported to the user in one line before anything runs."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything besides the input that determines the output bytes."""
  num_samples: int = 5
  seed: int = 0
  validation_fraction: float = 0.05
  examples_per_shard: int = 10_000
  max_program_bytes: int = 100_000
  max_program_lines: int = 1_000
  time_limit_s: float = 10.0
  max_programs: int | None = None
  keep_original_errors: bool = False

  def validate(self) -> None:
    if self.num_samples < 1:
      raise UsageError(f"num_samples must be >= 1, got {self.num_samples}")
    if not 0.0 <= self.validation_fraction < 1.0:
      raise UsageError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
    for name in ("examples_per_shard", "max_program_bytes", "max_program_lines"):
      if getattr(self, name) < 1:
        raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.time_limit_s <= 0:
      raise UsageError(f"time_limit_s must be > 0, got {self.time_limit_s}")
    if self.max_programs is not None and self.max_programs < 1:
      raise UsageError(f"max_programs must be >= 1, got {self.max_programs}")


def stable_hash(text: str, salt: str) -> int:
  """A 64-bit hash that is the same in every process and on every machine (unlike `hash`)."""
  digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=salt.encode("ascii"))
  return int.from_bytes(digest.digest(), "big")


def split_of(source_id: str, validation_fraction: float) -> str:
  """`validation` for a stable `validation_fraction` of the source ids, else `train`."""
  return "validation" if stable_hash(source_id, "split") < validation_fraction * 2**64 else "train"


def num_shards(num_examples: int, examples_per_shard: int) -> int:
  return max(1, math.ceil(num_examples / examples_per_shard))


# ---------------------------------------------------------------------------------------------
# Reading and checking programs (shared by all variants).

def _read_shard(item, sources):
  index, shard = item
  yield from sources[index].read(shard)


def _check_program(item, settings: Settings):
  """(source_id, (instruction, text)) for a program whose text is usable, else a tagged
  (reason, 1). The parse comes later, in `_Generate`, once per program and worker."""
  if isinstance(item, sources_lib.Skip):
    yield pvalue.TaggedOutput("skip", (item.reason, 1))
    return
  try:
    programs.check_instruction(item.instruction)
    text = programs.check_text(item.program, max_bytes=settings.max_program_bytes,
                               max_lines=settings.max_program_lines)
  except programs.BadProgram as e:
    yield pvalue.TaggedOutput("skip", (e.reason, 1))
    return
  yield item.source_id, (item.instruction, text)


def _dedupe(keyed):
  """Keeps one record per source id, whatever order the duplicates arrived in."""
  source_id, values = keyed
  values = sorted(values)
  if len(values) > 1:
    yield pvalue.TaggedOutput("skip", ("duplicate_source_id", len(values) - 1))
  yield source_id, values[0]


class _SampleTransform(beam.PTransform):
  """At most `max_programs` programs: those with the smallest hash of their source id.

  A deterministic uniform sample, for quick runs; the rest are counted as `over_max_programs`.
  """

  def __init__(self, max_programs: int):
    super().__init__()
    self.max_programs = max_programs

  def expand(self, programs):
    kept = (programs
            | "Smallest" >> beam.combiners.Top.Of(
                self.max_programs, key=lambda kv: stable_hash(kv[0], "sample"), reverse=True)
            | "Flatten" >> beam.FlatMap(lambda kept: kept))
    over = (programs
            | "Count" >> beam.combiners.Count.Globally()
            | "Over" >> beam.Map(lambda n, cap: ("over_max_programs", max(0, n - cap)),
                                 self.max_programs))
    return kept, over


# ---------------------------------------------------------------------------------------------
# Generating one variant's examples.

class _Generate(beam.DoFn):
  """Program -> examples of one variant. LintSeq and TensorFlow are loaded once per worker."""

  def __init__(self, variant: str, settings: Settings, ticker: progress_lib.Ticker | None):
    super().__init__()
    self.variant, self.settings, self.ticker = variant, settings, ticker
    self.programs = Metrics.counter("editseq", f"{variant}_programs")
    self.sequences = Metrics.counter("editseq", f"{variant}_sequences")
    self.skipped = Metrics.counter("editseq", f"{variant}_skipped")

  def setup(self):
    import tensorflow  # noqa: F401  (loaded here, not inside the first timed program)
    from data_gen import edit_format, lintseq
    self._edit_format, self._lintseq = edit_format, lintseq

  def teardown(self):
    if self.ticker is not None:
      self.ticker.close()

  def _sequences(self, instruction: str, program: str) -> list[tuple[str, str, list[int]]]:
    """(prompt, completion, added lines per diff) per sample; raises BadProgram."""
    ef = self._edit_format
    if self.variant == dataset.TEXT_VARIANT:  # a document: its text, checked but not parsed
      return [("", program, [len(program.splitlines())])]
    programs.parse(program)   # cached: the variants after this one reuse the parse
    if self.variant == "baseline":
      return [(ef.baseline_prompt(instruction), ef.baseline_completion(program),
               [len(program.splitlines())])]
    sequences = self._lintseq.lintseq(
        program, num_samples=self.settings.num_samples, seed=self.settings.seed,
        use_linter=self.variant == "lintseq", max_lines=self.settings.max_program_lines,
        max_bytes=self.settings.max_program_bytes, time_limit_s=self.settings.time_limit_s,
        keep_original_errors=self.settings.keep_original_errors)
    return [(*ef.lintseq_example(instruction, diffs),
             [sum(line.startswith("+") for line in d.split("\n")) for d in diffs])
            for diffs in sequences]

  def process(self, element):
    source_id, (instruction, program) = element
    start = time.perf_counter()
    try:
      samples = self._sequences(instruction, program)
    except programs.BadProgram as e:
      self.skipped.inc()
      yield pvalue.TaggedOutput("skip", (e.reason, 1))
      return
    finally:
      if self.ticker is not None:
        self.ticker.tick()
    split = split_of(source_id, self.settings.validation_fraction)
    for sample_index, (prompt, completion, diff_sizes) in enumerate(samples):
      record = dataset.serialize_example({
          "instruction": instruction, "program": program, "prompt": prompt,
          "completion": completion, "source_id": source_id, "sample_index": sample_index,
          "num_edits": len(diff_sizes), "variant": self.variant})
      yield split, (source_id, sample_index, record)
    self.programs.inc()
    self.sequences.inc(len(samples))
    yield pvalue.TaggedOutput("summary", stats_lib.program_summary(
        [len(s[2]) for s in samples], [n for s in samples for n in s[2]],
        time.perf_counter() - start))


# ---------------------------------------------------------------------------------------------
# Writing shards and metadata.

def _assign_shard(element, counts, examples_per_shard):
  split, (source_id, sample_index, record) = element
  shards = num_shards(counts[split], examples_per_shard)
  return (split, stable_hash(source_id, "shard") % shards, shards), (source_id, sample_index, record)


def _write_shard(grouped, output_dir, variant):
  """Writes one shard, records sorted; returns (split, index, num_shards, num_records)."""
  import tensorflow as tf
  (split, index, shards), records = grouped
  records = sorted(records, key=lambda r: (r[0], r[1]))
  path = os.path.join(dataset.dataset_dir(output_dir, variant),
                      dataset.shard_filename(variant, split, index, shards))
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  with tf.io.TFRecordWriter(tmp) as writer:
    for _, _, record in records:
      writer.write(record)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return split, index, shards, len(records)


def _finalize(_, output_dir, variant, written, summary, skipped, settings_dict):
  """Fills empty shards, removes files of earlier runs, writes TFDS metadata and the stats."""
  import tensorflow as tf
  variant_dir = os.path.join(output_dir, variant)
  folder = dataset.dataset_dir(output_dir, variant)
  lengths: dict[str, list[int]] = {}
  for split, index, shards, count in written:
    lengths.setdefault(split, [0] * shards)[index] = count
  expected = set()
  for split, shard_lengths in lengths.items():
    for index, count in enumerate(shard_lengths):
      name = dataset.shard_filename(variant, split, index, len(shard_lengths))
      expected.add(name)
      if count == 0:  # a hash left this shard empty: write it so the file set is complete.
        with tf.io.TFRecordWriter(os.path.join(folder, name)):
          pass
  for name in tf.io.gfile.listdir(folder):
    if (dataset.is_shard_filename(name) and name not in expected) or ".tmp-" in name:
      tf.io.gfile.remove(os.path.join(folder, name))
  # Shards and metadata of the layout before the version folder, which TFDS would still load.
  for name in tf.io.gfile.listdir(variant_dir):
    if dataset.is_shard_filename(name) or name in dataset.METADATA_FILES:
      tf.io.gfile.remove(os.path.join(variant_dir, name))
  if lengths:
    dataset.write_metadata(output_dir, variant, lengths, description=(
        f"editseq {variant} examples generated by data_gen.pipeline with {settings_dict}"))
  else:  # nothing to load: no metadata (an earlier run's would point at removed files).
    for name in dataset.METADATA_FILES:
      if tf.io.gfile.exists(os.path.join(folder, name)):
        tf.io.gfile.remove(os.path.join(folder, name))
  report = stats_lib.make_report(variant, summary, dict(skipped), lengths, settings_dict)
  stats_lib.write_report(variant_dir, report)


class _WriteVariant(beam.PTransform):
  def __init__(self, variant, output_dir, settings: Settings, shared_skips, ticker):
    super().__init__()
    self.variant, self.settings, self.ticker = variant, settings, ticker
    self.output_dir, self.shared_skips = output_dir, shared_skips

  def expand(self, programs):
    out = programs | "Generate" >> beam.ParDo(
        _Generate(self.variant, self.settings, self.ticker)).with_outputs(
            "skip", "summary", main="examples")
    counts = (out.examples | "SplitKeys" >> beam.Map(lambda e: (e[0], 1))
              | "CountSplits" >> beam.CombinePerKey(sum))
    written = (out.examples
               | "AssignShard" >> beam.Map(_assign_shard, beam.pvalue.AsDict(counts),
                                           self.settings.examples_per_shard)
               | "GroupShards" >> beam.GroupByKey()
               | "WriteShards" >> beam.Map(_write_shard, self.output_dir, self.variant))
    summary = out.summary | "Summarize" >> beam.CombineGlobally(stats_lib.MergeSummaries())
    skipped = ((self.shared_skips, out.skip) | "AllSkips" >> beam.Flatten()
               | "CountSkips" >> beam.CombinePerKey(sum))
    return (programs.pipeline
            | "Once" >> beam.Create([None])
            | "Finalize" >> beam.Map(
                _finalize, self.output_dir, self.variant, beam.pvalue.AsList(written),
                beam.pvalue.AsSingleton(summary), beam.pvalue.AsList(skipped),
                dataclasses.asdict(self.settings)))


# ---------------------------------------------------------------------------------------------
# Entry points.

def unknown_beam_flags(args: list[str]) -> list[str]:
  """Flags that no registered Beam `PipelineOptions` class defines (typos, usually)."""
  parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
  seen = set()
  for cls in pipeline_options.PipelineOptions.__subclasses__():
    if str(cls) not in seen:
      seen.add(str(cls))
      cls._add_argparse_args(parser)  # pylint: disable=protected-access
  _, unknown = parser.parse_known_args(args)
  return [a for a in unknown if a.startswith("-")]


def make_pipeline(pipeline_args: list[str]) -> beam.Pipeline:
  """A pipeline on the runner the options name; without one, the in-process FnApiRunner.

  Raises UsageError for options the runner rejects (Beam validates them here, e.g. Dataflow's
  project and gs:// locations) and for Dataflow without Beam's Google Cloud client libraries,
  which Beam would otherwise report only when the job is submitted.
  """
  options = pipeline_options.PipelineOptions(pipeline_args)
  runner = options.view_as(pipeline_options.StandardOptions).runner
  if runner is None:
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    direct = options.view_as(pipeline_options.DirectOptions)
    if direct.direct_running_mode == "multi_processing":
      # The same worker processes, started through data_gen.quiet_beam (their log noise off).
      direct.direct_running_mode = "in_memory"
      return beam.Pipeline(runner=fn_runner.FnApiRunner(
          default_environment=quiet_beam.worker_environment()), options=options)
    return beam.Pipeline(runner=fn_runner.FnApiRunner(), options=options)
  if runner.lower().removesuffix("runner") == "dataflow" and not _has_module("apitools"):
    raise UsageError(f"--runner={runner} needs Beam's Google Cloud extras on this machine: "
                     f"pip install 'apache-beam[gcp]=={beam.__version__}'")
  try:
    return beam.Pipeline(options=options)
  except ValueError as e:  # "Pipeline has validations errors: <one line per option>"
    raise UsageError(" ".join(str(e).split())) from None


def _has_module(name: str) -> bool:
  return importlib.util.find_spec(name) is not None


def default_sources() -> list[sources_lib.Source]:
  """The embedded default: instruction data mined from the standard library."""
  return [sources_lib.StdlibInstructionSource()]


def run(sources: list[sources_lib.Source] | None = None, output_dir: str = "",
        variants: tuple[str, ...] = dataset.VARIANTS, pipeline_args: tuple[str, ...] = (),
        progress: bool = False, **settings) -> dict[str, dict]:
  """Generates the variants' datasets under `output_dir`; returns {variant: stats report}.

  `sources` defaults to `default_sources()`; `settings` are `Settings` fields (num_samples,
  seed, validation_fraction, examples_per_shard, max_program_bytes, max_program_lines,
  time_limit_s, max_programs, keep_original_errors); `pipeline_args` are Beam pipeline options.
  Raises UsageError (bad settings) or SourceError (bad source) before anything runs.
  """
  try:
    settings = Settings(**settings)
  except TypeError as e:
    raise UsageError(str(e)) from None
  settings.validate()
  if not output_dir:
    raise UsageError("output_dir is required")
  if (not variants or len(set(variants)) != len(variants) or
      any(v not in dataset.ALL_VARIANTS for v in variants)):
    raise UsageError(f"variants must be a non-empty subset of {dataset.ALL_VARIANTS} without "
                     f"repeats, got {variants}")
  unknown = unknown_beam_flags(list(pipeline_args))
  if unknown:
    raise UsageError(f"unknown flag(s) {' '.join(unknown)}: neither a data_gen flag nor a Beam "
                     "pipeline option")
  options = pipeline_options.PipelineOptions(list(pipeline_args))
  if options.view_as(pipeline_options.DirectOptions).direct_running_mode == "multi_threading":
    raise UsageError("--direct_running_mode=multi_threading is not supported: the work is "
                     "CPU-bound Python (one GIL) and CPython 3.11's AST parser is not thread-safe "
                     "(gh-106905); use --direct_running_mode=multi_processing")
  beam_pipeline = make_pipeline(list(pipeline_args))
  sources = list(sources) if sources is not None else default_sources()
  shards = [(i, shard) for i, source in enumerate(sources) for shard in source.shards()]
  for variant in variants:
    if not FileSystems.exists(dataset.dataset_dir(output_dir, variant)):
      FileSystems.mkdirs(dataset.dataset_dir(output_dir, variant))

  start = time.perf_counter()
  bar = (progress_lib.SharedProgress("data_gen", " programs") if progress
         else contextlib.nullcontext())
  with bar, beam_pipeline as p:
    items = (p | "Shards" >> beam.Create(shards) | "SpreadShards" >> beam.Reshuffle()
             | "Read" >> beam.FlatMap(_read_shard, sources))
    checked = items | "Check" >> beam.FlatMap(_check_program, settings).with_outputs(
        "skip", main="ok")
    deduped = (checked.ok | "GroupIds" >> beam.GroupByKey()
               | "Dedupe" >> beam.FlatMap(_dedupe).with_outputs("skip", main="programs"))
    skip_parts = [checked.skip, deduped.skip]
    programs = deduped.programs
    if settings.max_programs is not None:
      programs, over = programs | "Sample" >> _SampleTransform(settings.max_programs)
      skip_parts.append(over)
    shared_skips = tuple(skip_parts) | "SharedSkips" >> beam.Flatten()
    programs = programs | "SpreadPrograms" >> beam.Reshuffle()
    for variant in variants:  # one progress bar: the variants see the same programs.
      _ = programs | f"Write_{variant}" >> _WriteVariant(
          variant, output_dir, settings, shared_skips,
          bar.ticker if progress and variant == variants[0] else None)
  elapsed = time.perf_counter() - start

  reports = {}
  for variant in variants:
    variant_dir = os.path.join(output_dir, variant)
    report = stats_lib.read_report(variant_dir)
    report["elapsed_s"] = round(elapsed, 2)
    report["sequences_per_s"] = round(report["sequences_out"] / elapsed, 1)
    stats_lib.write_report(variant_dir, report)
    reports[variant] = report
  return reports


def _parse_args(argv):
  parser = usage.ArgumentParser(
      prog="python -m data_gen.pipeline", allow_abbrev=False,
      description="Generate LintSeq / baseline instruction data as sharded TFRecords (+ TFDS "
                  "metadata and stats). Unknown flags are passed to Beam as pipeline options.")
  parser.add_argument("--output_dir", required=True, help="output folder (local or gs://...)")
  parser.add_argument("--source", default="stdlib_instructions",
                      choices=["stdlib_instructions", "stdlib", "pytree", "jsonl", "hf", "tfds"],
                      help="stdlib_instructions (default): instruction pairs mined from the "
                           "standard library; stdlib: its .py files; pytree: .py files under "
                           "--input; jsonl/hf/tfds: instruction datasets")
  parser.add_argument("--input", nargs="+", default=[],
                      help="folder (pytree) or JSONL file(s), .gz allowed (jsonl)")
  parser.add_argument("--instruction_key", default="instruction",
                      help="field with the instruction (\"\" for none)")
  parser.add_argument("--response_key", default="response",
                      help="field with the program or a markdown response")
  parser.add_argument("--tfds_name", default="",
                      help="--source tfds: the TFDS dataset, NAME or NAME/CONFIG[:VERSION]")
  parser.add_argument("--tfds_split", default="train", help="--source tfds: the split to read")
  parser.add_argument("--tfds_data_dir", default=None,
                      help="--source tfds: TFDS's data folder (default: TFDS's own, "
                           "~/tensorflow_datasets)")
  parser.add_argument("--hf_dataset", default="",
                      help="--source hf: the Hugging Face dataset id or local folder "
                           "(needs `pip install datasets`)")
  parser.add_argument("--hf_config", default=None, help="--source hf: the dataset's config name")
  parser.add_argument("--hf_split", default="train", help="--source hf: the split to read")
  parser.add_argument("--hf_data_dir", default=None,
                      help="--source hf: a folder of the dataset (e.g. data/python)")
  parser.add_argument("--hf_data_files", nargs="+", default=[],
                      help="--source hf: data files (local paths or the dataset's patterns), "
                           "one Beam shard each; e.g. --hf_dataset parquet --hf_data_files F...")
  parser.add_argument("--raw_responses", action="store_true",
                      help="jsonl/hf/tfds: take the response field as it is (documents such as "
                           "web text or source files), without extracting ```python blocks")
  parser.add_argument("--variants", default=",".join(dataset.VARIANTS),
                      help="comma-separated subset of " + ",".join(dataset.ALL_VARIANTS)
                           + f" ({dataset.TEXT_VARIANT}: each document as it is, for "
                           "pretraining; no parse, no LintSeq)")
  parser.add_argument("--num_samples", type=int, default=Settings.num_samples,
                      help="edit sequences per program")
  parser.add_argument("--seed", type=int, default=Settings.seed)
  parser.add_argument("--validation_fraction", type=float, default=Settings.validation_fraction,
                      help="share of programs (by a hash of their id) in the validation split")
  parser.add_argument("--examples_per_shard", type=int, default=Settings.examples_per_shard)
  parser.add_argument("--max_program_bytes", type=int, default=Settings.max_program_bytes)
  parser.add_argument("--max_program_lines", type=int, default=Settings.max_program_lines)
  parser.add_argument("--time_limit_s", type=float, default=Settings.time_limit_s,
                      help="LintSeq time cap per program; slower programs are skipped")
  parser.add_argument("--max_programs", type=int, default=Settings.max_programs,
                      help="keep a deterministic sample of at most this many programs")
  parser.add_argument("--keep_original_errors", action="store_true",
                      help="LintSeq tolerates a program's own pyflakes errors (default: their "
                           "lines go with the first deletion, as in the reference)")
  parser.add_argument("--no_progress", action="store_true", help="no progress bars")
  parser.add_argument("--force", action="store_true",
                      help="regenerate even when OUTPUT_DIR was made from the same input, "
                           "settings and code (by default such a rerun reuses it: the bytes "
                           "would be the same)")
  parser.add_argument("--beam_log_level", default="WARNING",
                      choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                      help="show Beam's own log records from this level up (INFO shows its "
                           "workers starting and stopping)")
  return parser.parse_known_args(argv)


def _sources_from_args(args) -> list[sources_lib.Source]:
  if args.source == "stdlib_instructions":
    return default_sources()
  if args.source == "stdlib":
    return [sources_lib.stdlib_tree()]
  if args.source == "pytree":
    if not args.input:
      raise sources_lib.SourceError("--source pytree needs --input FOLDER")
    return [sources_lib.PyTreeSource(root) for root in args.input]
  if args.source == "jsonl":
    return [sources_lib.JsonlSource(args.input, args.instruction_key, args.response_key,
                                    args.raw_responses)]
  if args.source == "hf":
    if not args.hf_dataset:
      raise sources_lib.SourceError("--source hf needs --hf_dataset NAME")
    return [sources_lib.HuggingFaceSource(
        args.hf_dataset, args.hf_split, args.hf_config, args.instruction_key, args.response_key,
        args.hf_data_dir, args.hf_data_files, args.raw_responses)]
  return [sources_lib.TfdsSource(args.tfds_name, args.tfds_split, args.tfds_data_dir,
                                 args.instruction_key, args.response_key, args.raw_responses)]


def output_stage(args, sources: list[sources_lib.Source]) -> stages.Stage | None:
  """The run as a stage keyed by its flags, its input's content and this package's code; None
  when the input cannot be fingerprinted cheaply (hf, tfds) or the output is not local.
  Beam's options are not part of the key: they do not change the bytes (module docstring)."""
  fingerprints = [source.fingerprint() for source in sources]
  if "://" in args.output_dir or None in fingerprints:
    return None
  flags = {k: v for k, v in vars(args).items()
           if k not in ("output_dir", "no_progress", "force", "beam_log_level")}
  return stages.Stage("data_gen", args.output_dir, stages.digest(
      flags, fingerprints, stages.code_digest("data_gen"), sys.version))


def main(argv=None) -> int:
  args, pipeline_args = _parse_args(sys.argv[1:] if argv is None else argv)
  os.environ[quiet_beam.LOG_LEVEL_ENV] = args.beam_log_level  # for Beam's worker processes
  logging.getLogger().setLevel(args.beam_log_level)
  settings = {name: getattr(args, name) for name in Settings.__dataclass_fields__}
  args.output_dir = paths.absolute(args.output_dir)
  args.input = [paths.absolute(p) for p in args.input]
  args.tfds_data_dir = paths.absolute(args.tfds_data_dir)
  args.hf_data_files = [paths.absolute(f) if os.path.exists(f) else f  # local files; else the
                        for f in args.hf_data_files]                     # dataset's patterns
  variants = tuple(v for v in args.variants.split(",") if v)
  try:
    paths.check_writable_dir(args.output_dir, "--output_dir")
    sources = _sources_from_args(args)
    stage = output_stage(args, sources)
    if stage is not None and not args.force and stage.reusable():
      print(stage.reused_message(), file=sys.stderr)
      reports = {v: stats_lib.read_report(os.path.join(args.output_dir, v)) for v in variants}
    else:
      if stage is not None and os.path.isdir(args.output_dir):
        stage.begin()
      reports = run(sources=sources, output_dir=args.output_dir, variants=variants,
                    pipeline_args=tuple(pipeline_args), progress=not args.no_progress, **settings)
      if stage is not None:
        stage.record()
  except (UsageError, sources_lib.SourceError, paths.PathError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for report in reports.values():
    print(stats_lib.format_text(report), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
