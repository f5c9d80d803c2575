"""The generated data as a TFDS dataset: record layout, metadata writing and reading helpers.

Layout (docs/ARCHITECTURE.md section 2): `OUT/<variant>/editseq-<split>.tfrecord-XXXXX-of-YYYYY`
plus TFDS metadata (`dataset_info.json`, `features.json`) so that
`tfds.builder_from_directory(OUT/<variant>)` reads it like any prepared TFDS dataset.
"""
from __future__ import annotations

import os
from typing import Iterator

VARIANTS = ("lintseq", "baseline", "lintseq_nolint")
SPLITS = ("train", "validation")
DATASET_NAME = "editseq"
TEXT_FEATURES = ("instruction", "program", "prompt", "completion", "source_id", "variant")
INT_FEATURES = ("sample_index", "num_edits")
METADATA_FILES = ("dataset_info.json", "features.json")


def shard_filename(split: str, index: int, num_shards: int) -> str:
  """TFDS's default file naming, `{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}`."""
  return f"{DATASET_NAME}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def is_shard_filename(name: str) -> bool:
  return name.startswith(f"{DATASET_NAME}-") and ".tfrecord-" in name


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


def write_metadata(variant_dir: str, shard_lengths: dict[str, list[int]], description: str) -> None:
  """Writes the TFDS metadata (`METADATA_FILES`) for the shards already in `variant_dir`.

  `shard_lengths[split][i]` is the number of records in shard i of that split. Pass only splits
  with examples: TFDS cannot read a split without any.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds
  split_infos = []
  for split, lengths in sorted(shard_lengths.items()):
    num_bytes = sum(
        tf.io.gfile.stat(os.path.join(variant_dir, shard_filename(split, i, len(lengths)))).length
        for i in range(len(lengths)))
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=list(lengths), num_bytes=num_bytes))
  tfds.folder_dataset.write_metadata(
      data_dir=variant_dir, features=features(), split_infos=split_infos, version="1.0.0",
      check_data=False, description=description)


def builder(variant_dir: str):
  """The TFDS builder over one variant's folder."""
  import tensorflow_datasets as tfds
  return tfds.builder_from_directory(variant_dir)


def load(variant_dir: str, split: str = "train"):
  """A `tf.data.Dataset` of one split, in stored (deterministic) order."""
  return builder(variant_dir).as_dataset(split=split, shuffle_files=False)


def read_examples(variant_dir: str, split: str = "train") -> Iterator[dict]:
  """The records of one split as Python dicts with `str` text, for tools and tests."""
  import tensorflow_datasets as tfds
  for row in tfds.as_numpy(load(variant_dir, split)):
    yield {k: v.decode("utf-8") if isinstance(v, bytes) else int(v) for k, v in row.items()}
