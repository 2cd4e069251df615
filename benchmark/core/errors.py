"""User-facing errors: the entry point prints their message alone, without a traceback."""


class BenchmarkError(Exception):
    """An error the user can fix (bad value, missing data); shown as one clear message."""


class ConfigError(BenchmarkError, ValueError):
    """A config value is of the wrong type or out of its allowed range."""


class DataMissingError(BenchmarkError, FileNotFoundError):
    """A dataset or checkpoint is not on disk and could not be downloaded."""
