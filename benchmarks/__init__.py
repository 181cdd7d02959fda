"""Benchmarks for keras_densenet; run each as ``python -m benchmarks.<name>``.

See ``benchmarks/README.md`` for the commands and ``benchmarks/RESULTS.md``
for measured numbers.
"""
