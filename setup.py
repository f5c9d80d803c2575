"""Packages `data_gen` for the workers of a remote Beam runner (Dataflow, Flink, Spark):

    python -m data_gen.pipeline ... --runner=DataflowRunner --setup_file ./setup.py

Beam builds an sdist from this file and pip-installs it on every worker. The workers get the
LintSeq pipeline and what it imports at run time (pyflakes, TensorFlow for tf.train.Example,
TFDS for its metadata), at the versions pinned in requirements.txt; Beam itself comes with the
runner's SDK image. Training and evaluation are not packaged: they run from a checkout.
"""
import pathlib
import re

import setuptools

WORKER_REQUIREMENTS = ("pyflakes", "tensorflow", "tensorflow-datasets")


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
    description="LintSeq edit-sequence data generation (Apache Beam workers)",
    packages=["data_gen"],
    python_requires=">=3.10",
    install_requires=pinned(WORKER_REQUIREMENTS),
)
