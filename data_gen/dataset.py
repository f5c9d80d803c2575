"""The generated data as TFDS datasets: record layout, metadata writing and reading helpers.

Layout (docs/ARCHITECTURE.md section 2): each variant is a prepared TFDS dataset named after
it, in TFDS's `<data_dir>/<name>/<version>/` layout:
`OUT/<variant>/1.0.0/<variant>-<split>.tfrecord-XXXXX-of-YYYYY` plus TFDS metadata
(`dataset_info.json`, `features.json`), so that `tfds.load("<variant>", data_dir=OUT)` and
`tfds.builder_from_directory("OUT/<variant>/1.0.0")` read it without any registered builder.
The variant's stats (`stats.json`, `stats.txt`) sit beside the version folder.
"""
from __future__ import annotations

import os
from typing import Iterator

VARIANTS = ("lintseq", "baseline", "lintseq_nolint")
# Documents as they are (web text, source files), for pretraining: no parse, no LintSeq. Not a
# default variant: only `--variants text` writes it.
TEXT_VARIANT = "text"
ALL_VARIANTS = VARIANTS + (TEXT_VARIANT,)
SPLITS = ("train", "validation")
VERSION = "1.0.0"
TEXT_FEATURES = ("instruction", "program", "prompt", "completion", "source_id", "variant")
INT_FEATURES = ("sample_index", "num_edits")
METADATA_FILES = ("dataset_info.json", "features.json")


def dataset_dir(output_dir: str, variant: str) -> str:
  """A variant's shards and TFDS metadata: TFDS's `<data_dir>/<name>/<version>` folder."""
  return os.path.join(output_dir, variant, VERSION)


def shard_filename(variant: str, split: str, index: int, num_shards: int) -> str:
  """TFDS's default file naming, `{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}`; the dataset
  name is the variant."""
  return f"{variant}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def split_pattern(output_dir: str, variant: str, split: str) -> str:
  """A glob matching every shard of one split."""
  return os.path.join(dataset_dir(output_dir, variant), f"{variant}-{split}.tfrecord-*")


def is_shard_filename(name: str) -> bool:
  return ".tfrecord-" in name


def features():
  """The `tfds.features.FeaturesDict` matching the stored `tf.train.Example`s."""
  import numpy as np
  import tensorflow_datasets as tfds
  spec = {name: tfds.features.Text() for name in TEXT_FEATURES}
  spec.update({name: tfds.features.Scalar(dtype=np.int64) for name in INT_FEATURES})
  return tfds.features.FeaturesDict(spec)


def serialize_example(example: dict) -> bytes:
  """One record as a deterministically serialized `tf.train.Example` (map keys sorted)."""
  import tensorflow as tf
  feature = {}
  for name in TEXT_FEATURES:
    feature[name] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[example[name].encode("utf-8")]))
  for name in INT_FEATURES:
    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(example[name])]))
  proto = tf.train.Example(features=tf.train.Features(feature=feature))
  return proto.SerializeToString(deterministic=True)


def write_metadata(output_dir: str, variant: str, shard_lengths: dict[str, list[int]],
                   description: str) -> None:
  """Writes the TFDS metadata (`METADATA_FILES`) beside the variant's shards.

  `shard_lengths[split][i]` is the number of records in shard i of that split. Pass only splits
  with examples: TFDS cannot read a split without any.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds
  folder = dataset_dir(output_dir, variant)
  split_infos = []
  for split, lengths in sorted(shard_lengths.items()):
    num_bytes = sum(
        tf.io.gfile.stat(os.path.join(folder, shard_filename(variant, split, i, len(lengths)))
                         ).length
        for i in range(len(lengths)))
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=list(lengths), num_bytes=num_bytes))
  tfds.folder_dataset.write_metadata(
      data_dir=folder, features=features(), split_infos=split_infos, version=VERSION,
      check_data=False, description=description)


def builder(output_dir: str, variant: str):
  """The TFDS builder of one variant, found by name as `tfds.load` finds it."""
  import tensorflow_datasets as tfds
  return tfds.builder(variant, data_dir=output_dir)


def load(output_dir: str, variant: str, split: str = "train"):
  """A `tf.data.Dataset` of one split, in stored (deterministic) order."""
  return builder(output_dir, variant).as_dataset(split=split, shuffle_files=False)


def read_examples(output_dir: str, variant: str, split: str = "train") -> Iterator[dict]:
  """The records of one split as Python dicts with `str` text, for tools and tests."""
  import tensorflow_datasets as tfds
  for row in tfds.as_numpy(load(output_dir, variant, split)):
    yield {k: v.decode("utf-8") if isinstance(v, bytes) else int(v) for k, v in row.items()}
