"""data_gen: LintSeq and the Apache Beam pipelines that write TFRecords."""
