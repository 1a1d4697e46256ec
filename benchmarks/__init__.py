"""Benchmarks: training-step throughput (ours vs the HF Llama peer), GPU suite, kernel timings."""
