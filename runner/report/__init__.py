"""Reading what sweeps wrote: collecting trials (trials), ranking them by the objective (ranking), the
report's files (files: summary.csv, history.csv, best.yaml; hparams: TensorBoard HParams; drawing:
report.png; writing: all of them under one lock), the text table (table, cells), the PBT part (pbt), the
push to a tracker (trackers), and `python -m runner.report SWEEP_DIR [--watch] [--tracker NAME]` (cli).

Imports every other package (it reads what they write); none imports it.
"""

from runner.report.cli import main
from runner.report.ranking import load_sweep
from runner.report.table import format_in_flight, format_table
from runner.report.trackers import push_to_tracker, takes_sweeps
from runner.report.trials import SweepReportError
from runner.report.writing import report

__all__ = ["SweepReportError", "format_in_flight", "format_table", "load_sweep", "main", "push_to_tracker", "report",
           "takes_sweeps"]
