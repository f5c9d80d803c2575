"""data_gen: LintSeq and the Apache Beam pipelines that write TFRecords."""
from editseq import quiet_beam
from editseq import quiet_tensorflow

quiet_beam.install()
quiet_tensorflow.install()
