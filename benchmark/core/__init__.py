"""The floor the methods stand on: data, architectures, training, augmentation, evaluation, precision.

`attacks/` and `defenses/` import only from here; nothing here imports the harness above it
(`benchmark.weights`, `benchmark.run`, `benchmark.report`), the methods or the studies.
"""
