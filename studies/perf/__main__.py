from studies.perf.bench import main

main()
