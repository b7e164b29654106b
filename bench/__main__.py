"""``python -m bench``: every benchmark, one table, bench/results/latest.json (see run_all)."""

import sys

from bench.run_all import main

sys.exit(main())
