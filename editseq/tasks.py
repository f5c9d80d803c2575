"""seqio tasks over the TFRecords that `data_gen.pipeline` writes (docs/ARCHITECTURE.md section 2).

Tasks are registered by a function, so they point at whatever folder the user generated:

    tasks.register_tasks("/data/editseq", vocab)   # OUT of `python -m data_gen.pipeline`
    seqio.get_mixture_or_task("editseq_lintseq_instruct").get_dataset(None, split="train")

Every task yields `inputs` (the prompt, no eos; empty for pretraining) and `targets` (the
completion + eos), as int32 token ids. The loss goes on `targets` only: that is how the prompt
is masked out. Re-registering replaces the earlier tasks of the same names.

A task name may also be a mixture written inline, `task:rate,task:rate` (e.g.
`editseq_pretrain_web:1,editseq_pretrain_code:3`), so that a command line or config names one
without code (`config.data.task`); it is registered as a seqio mixture on first use.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os

import numpy as np
import seqio
import tensorflow as tf

from data_gen import dataset as data_lib


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Which folder of the generated data a task reads, and which features feed it."""
  variant: str  # the data_gen variant (its TFDS dataset name in the data dir)
  prompt_feature: str | None  # None: no prompt (pretraining)
  target_feature: str
  overlong: str  # what the input pipeline does with examples longer than a row
  folder: str = ""  # the data_gen output it reads, relative to the data dir ("": the dir itself)


TASK_SPECS = {
    "editseq_lintseq_instruct": TaskSpec("lintseq", "prompt", "completion", "truncate"),
    "editseq_baseline_instruct": TaskSpec("baseline", "prompt", "completion", "truncate"),
    "editseq_lintseq_nolint_instruct": TaskSpec("lintseq_nolint", "prompt", "completion",
                                                "truncate"),
    # Raw code: the programs, one record each (the baseline folder has one per program);
    # generate from `--source pytree`/`stdlib` for file-level code. Long files are split.
    "editseq_pretrain": TaskSpec("baseline", None, "program", "split"),
    # A pretraining mix's two parts: documents (`--variants text`: not parsed, no LintSeq) of a
    # web-text corpus and of a code corpus, data_gen outputs in DATA_DIR/web and DATA_DIR/code.
    "editseq_pretrain_web": TaskSpec("text", None, "program", "split", folder="web"),
    "editseq_pretrain_code": TaskSpec("text", None, "program", "split", folder="code"),
}
_registered_dirs: dict[str, str] = {}


class DataError(ValueError):
  """Missing or empty data, named so that the user can fix the path."""


def spec_dir(data_dir: str, spec: TaskSpec) -> str:
  """The data_gen output folder a task reads."""
  return os.path.join(data_dir, spec.folder) if spec.folder else data_dir


def list_split_files(data_dir: str, variant: str, split: str) -> list[str]:
  """The split's shards, sorted; a clear DataError when there are none or all are empty."""
  folder = data_lib.dataset_dir(data_dir, variant)
  if not tf.io.gfile.isdir(folder):
    raise DataError(f"data folder not found: {folder} (generate it with "
                    f"`python -m data_gen.pipeline --output_dir {data_dir}`)")
  pattern = data_lib.split_pattern(data_dir, variant, split)
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise DataError(f"no {split!r} shards in {folder} (expected {os.path.basename(pattern)})")
  if all(tf.io.gfile.stat(f).length == 0 for f in files):
    raise DataError(f"the {split!r} split in {folder} is empty ({len(files)} empty shards)")
  return files


def tokenize_batched(dataset: tf.data.Dataset, output_features, batch_size: int = 256):
  """seqio preprocessor: tokenizes the text features `batch_size` examples at a time.

  Same ids as `seqio.preprocessors.tokenize`, but one `encode_batch` call per batch (the
  tokenizer runs in parallel outside the GIL) instead of one Python call per example.
  """
  keys = [k for k in output_features if k in dataset.element_spec]

  def encode(texts: np.ndarray, vocab) -> tuple[np.ndarray, np.ndarray]:
    ids = vocab.encode_batch([t.decode("utf-8") for t in texts])
    return (np.fromiter((i for x in ids for i in x), np.int32, sum(map(len, ids))),
            np.array([len(x) for x in ids], np.int64))

  def tokenize(batch):
    out = dict(batch)
    for k in keys:
      values, lengths = tf.numpy_function(
          functools.partial(encode, vocab=output_features[k].vocabulary), [batch[k]],
          (tf.int32, tf.int64), stateful=False)
      values.set_shape([None])
      lengths.set_shape([None])
      out[k] = tf.RaggedTensor.from_row_lengths(values, lengths)
    return out

  return dataset.batch(batch_size).map(tokenize).unbatch()


def _select_features(dataset: tf.data.Dataset, spec: TaskSpec) -> tf.data.Dataset:
  def select(ex):
    out = {"targets": ex[spec.target_feature], "source_id": ex["source_id"],
           "sample_index": ex["sample_index"]}
    out["inputs"] = ex[spec.prompt_feature] if spec.prompt_feature else tf.constant("")
    return out
  return dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)


def register_tasks(data_dir: str, vocab: seqio.Vocabulary) -> list[str]:
  """Registers (or re-registers) every task of TASK_SPECS over `data_dir`; returns the names.

  `data_dir` holds one folder per variant, as `data_gen.pipeline` writes it; a variant that
  was not generated only fails when its task is used.
  """
  features = {
      "inputs": seqio.Feature(vocab, add_eos=False, required=False),
      "targets": seqio.Feature(vocab, add_eos=True),
  }
  text = tf.io.FixedLenFeature([], tf.string)
  number = tf.io.FixedLenFeature([], tf.int64)
  description = {name: text for name in data_lib.TEXT_FEATURES}
  description.update({name: number for name in data_lib.INT_FEATURES})
  for name, spec in TASK_SPECS.items():
    source = seqio.TFExampleDataSource(
        {split: data_lib.split_pattern(spec_dir(data_dir, spec), spec.variant, split)
         for split in data_lib.SPLITS},
        feature_description=description)
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=source, output_features=features,
        preprocessors=[functools.partial(_select_features, spec=spec), tokenize_batched,
                       seqio.preprocessors.append_eos],
        metric_fns=[])
    _registered_dirs[name] = data_dir
  return list(TASK_SPECS)


def register_mixture(name: str, rates: dict[str, float]) -> str:
  """Registers a seqio mixture of registered editseq tasks with the given sampling rates."""
  unknown = [t for t in rates if t not in _registered_dirs]
  if unknown:
    raise DataError(f"mixture {name!r}: tasks {unknown} are not registered editseq tasks "
                    f"(registered: {sorted(_registered_dirs)})")
  if not rates or any(r <= 0 for r in rates.values()):
    raise DataError(f"mixture {name!r}: rates must be positive, got {rates}")
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(rates.items()))
  return name


def inline_mixture_rates(name: str) -> dict[str, float] | None:
  """{task: rate} of a mixture written inline (`task:rate,task:rate`); None for a plain name."""
  if ":" not in name and "," not in name:
    return None
  rates = {}
  for item in name.split(","):
    task, _, rate = item.strip().partition(":")
    try:
      value = float(rate)
    except ValueError:
      value = math.nan
    if math.isnan(value) or task in rates:
      raise DataError(f"mixture {name!r}: expected task:rate,task:rate with each task once, "
                      f"got {item.strip()!r}")
    rates[task] = value
  return rates


def task_components(name: str) -> list[tuple[str, float]]:
  """(task, rate) pairs behind a registered task (rate 1) or mixture (registered, or written
  inline: then registered here, named with `#` for `,`, which seqio names cannot hold)."""
  if name in _registered_dirs:
    return [(name, 1.0)]
  rates = inline_mixture_rates(name)
  if rates is not None:
    name = register_mixture(name.replace(" ", "").replace(",", "#"), rates)
  if name in seqio.MixtureRegistry.names():
    mixture = seqio.get_mixture_or_task(name)
    return [(t.name, mixture.get_rate(t)) for t in mixture.tasks]
  raise DataError(f"unknown task {name!r}: expected one of {sorted(_registered_dirs)} "
                  f"or a mixture registered with editseq.tasks.register_mixture")


def task_files(name: str, split: str) -> list[str]:
  """The TFRecord shards a registered task reads for `split` (checked to exist, non-empty)."""
  if name not in _registered_dirs:
    raise DataError(f"task {name!r} is not registered (call editseq.tasks.register_tasks)")
  spec = TASK_SPECS[name]
  return list_split_files(spec_dir(_registered_dirs[name], spec), spec.variant, split)
