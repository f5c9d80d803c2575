"""data_gen: LintSeq and the Apache Beam pipelines that write TFRecords."""
from editseq import quiet_tensorflow

quiet_tensorflow.install()
