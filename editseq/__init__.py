"""editseq: model, sharding, training, checkpoints and the input pipeline."""
from editseq import quiet_tensorflow

quiet_tensorflow.install()
