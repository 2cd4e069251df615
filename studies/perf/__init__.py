"""The performance benchmark (`python -m studies.perf`): `bench` runs it, `reference` is the RNP authors'
loop rebuilt for timing, `targets.yaml` holds what the figures are compared against."""
