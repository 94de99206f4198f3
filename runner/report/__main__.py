"""`python -m runner.report SWEEP_DIR`: write a sweep's report, or redraw it while the sweep runs."""

import sys

from runner.report import main

if __name__ == "__main__":
    sys.exit(main())
