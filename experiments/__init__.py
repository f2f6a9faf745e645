"""Recorded experiments, and the benchmark: ``python -m experiments.bench`` from the repository
root."""
