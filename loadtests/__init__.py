"""Benchmarks and load tests for skillcoach (run with `python -m loadtests ...`)."""
