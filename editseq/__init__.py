"""editseq: model, sharding, training, checkpoints and the input pipeline."""
