try:
    from benchmark.run.cli import entry

    entry()
except KeyboardInterrupt:  # outside a cell (a cell says which one itself): at start-up or in the sweep's report
    from benchmark.core.errors import stop_interrupted

    stop_interrupted("no cell was running", "Files are written whole or not at all: rerun the same command to resume.")
