"""Reading what sweeps wrote: collecting trials, ranking them by the objective, the report's files
(summary.csv, history.csv, best.yaml, report.png, TensorBoard HParams), the text table, the push to a
tracker, and `python -m runner.report SWEEP_DIR [--watch] [--tracker NAME]`.

Imports every other package (it reads what they write); none imports it.
"""

from runner.report.core import (SweepReportError, format_in_flight, format_table, load_sweep, main, push_to_tracker,
                                report, takes_sweeps)

__all__ = ["SweepReportError", "format_in_flight", "format_table", "load_sweep", "main", "push_to_tracker", "report",
           "takes_sweeps"]
