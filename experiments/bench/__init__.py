"""Speed and memory benchmarks of the cascade: preprocessing, data loading, training steps,
inference, and profiles of the hot paths. Run ``python -m experiments.bench [--quick] [--full]``.

Every section returns rows (plain dicts) that `experiments.bench.report` writes as JSON and
Markdown. Sizes that differ from the configured ones (CPU runs) are stated in each row's
"setting".
"""
