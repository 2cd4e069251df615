import sys

from benchmark.report.write import main

sys.exit(main())
