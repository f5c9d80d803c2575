"""Tools that measure or model the training side (benchmarks, ahead-of-time compiles, roofline,
profile summaries); no pipeline module imports them."""
