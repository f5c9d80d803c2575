"""Benchmarks of sampling and sandboxed execution; no pipeline module imports them."""
