"""eval: sampling, sandboxed execution, pass@k and plots."""
