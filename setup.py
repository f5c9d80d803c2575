"""Packages the Beam jobs' code for the workers of a remote runner (Dataflow, Flink, Spark):

    python -m data_gen.pipeline ... --runner=DataflowRunner --setup_file ./setup.py
    python -m editseq.build_token_stores ... --runner=DataflowRunner --setup_file ./setup.py

Beam builds an sdist from this file and pip-installs it on every worker. The workers get
`data_gen` (LintSeq) and `editseq` (the tokenizer, seqio tasks and token stores; its training
modules come along but are never imported there; the `perf/` subpackages of benchmarks and the
config files of `configs/` stay in the checkout, the defaults every config starts from being
editseq/config_sections.py) and what the jobs import at run time
(pyflakes; TensorFlow and TFDS for the records; seqio, tokenizers and sentencepiece for the
vocabularies; absl, ml-collections and tqdm), at the versions pinned in requirements.txt; Beam
itself comes with the runner's SDK image. Training and evaluation run from a checkout.
"""
import pathlib
import re

import setuptools

WORKER_REQUIREMENTS = ("pyflakes", "tensorflow", "tensorflow-datasets", "seqio", "tokenizers",
                       "sentencepiece", "absl-py", "ml_collections", "tqdm")


def pinned(names, path=pathlib.Path(__file__).parent / "requirements.txt"):
  """`name==version` lines of requirements.txt for `names`, so the pins live in one place."""
  pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M))
  missing = [n for n in names if n not in pins]
  if missing:
    raise SystemExit(f"setup.py: requirements.txt has no pin for {', '.join(missing)}")
  return [f"{n}=={pins[n]}" for n in names]


setuptools.setup(
    name="editseq-data-gen",
    version="0.1.0",
    description="LintSeq data generation and tokenization (Apache Beam workers)",
    packages=["data_gen", "editseq"],
    python_requires=">=3.10",
    install_requires=pinned(WORKER_REQUIREMENTS),
)
