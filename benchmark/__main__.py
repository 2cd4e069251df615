from benchmark.run.cli import main

main()
