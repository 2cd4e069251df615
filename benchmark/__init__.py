"""Benchmark harness for backdoor defenses on image classifiers."""

__version__ = "0.1.0"
