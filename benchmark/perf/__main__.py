from benchmark.perf.bench import main

main()
