"""eval: sampling, sandboxed execution, pass@k and plots."""
from editseq import quiet_tensorflow

quiet_tensorflow.install()
