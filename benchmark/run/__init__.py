"""The harness that runs the methods: CLI, runtime set-up, run config, one cell, sweeps, records, export."""
