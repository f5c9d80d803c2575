"""editseq: model, sharding, training, checkpoints and the input pipeline."""
from editseq import quiet_beam
from editseq import quiet_tensorflow

quiet_beam.install()
quiet_tensorflow.install()
