"""`python -m benchmark.export [overrides]`: kept as an entry point; the code is `benchmark.run.export`."""

from benchmark.run.export import main

if __name__ == "__main__":
    main()
