"""`python -m runner.report SWEEP_DIR [--watch [SECONDS]] [--tracker NAME] [--json]`: write the report and
print the table once, redraw it while the sweep runs, or print the report as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from runner.report.document import report_document
from runner.report.drawing import PLOT_FILE
from runner.report.files import BEST_FILE, HISTORY_FILE, SUMMARY_FILE
from runner.report.hparams import HPARAMS_DIR
from runner.report.ranking import load_sweep
from runner.report.table import format_in_flight, format_table
from runner.report.trackers import push_to_tracker, trackers
from runner.report.trials import SweepReportError
from runner.report.writing import report, write_report

WATCH_SECONDS = 10.0


def watch(sweep_dir: Path, seconds: float) -> None:
    """Redraw the table every `seconds` until Ctrl-C; rewrite the files only when a trial changed."""
    reported = None
    while True:
        try:
            sweep = load_sweep(sweep_dir)
            if sweep != reported:
                write_report(sweep)
                reported = sweep
            text = f"{format_table(sweep)}\n\n{format_in_flight(sweep)}"
        except SweepReportError as error:
            # a sweep that is starting has no trial folders yet: wait for them
            text = str(error)
        if sys.stdout.isatty():
            sys.stdout.write("\033[2J\033[H")
        print(f"{text}\n\n{time.strftime('%H:%M:%S')}  refreshing every {seconds:g}s, Ctrl-C to stop", flush=True)
        time.sleep(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Rank a sweep's trials; write summary.csv, history.csv, best.yaml, report.png and "
        "tensorboard_hparams/ into the sweep folder and print the ranked table.",
    )
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="the sweep folder (outputs/sweeps/<time>)")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=WATCH_SECONDS,
        metavar="SECONDS",
        help=f"redraw the table every SECONDS (default {WATCH_SECONDS:g}) while the sweep runs; Ctrl-C stops",
    )
    parser.add_argument(
        "--tracker",
        choices=sorted(trackers()),
        help="also send the summary to this tracker, which the trials logged to: the sweep's run gets the "
        "shared settings as params, the ranked table and report.png, each trial's run its rank",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document (objective, "
                        "best, importance, every trial ranked) and write nothing")
    args = parser.parse_args(argv)
    if args.json and (args.tracker or args.watch is not None):
        parser.error("--json prints the report once and writes nothing: use it without --watch and --tracker")
    if args.tracker and args.watch is not None:
        parser.error("--tracker sends the summary once: use it without --watch")
    if not args.sweep_dir.is_dir():
        problem = "is a file, not a folder" if args.sweep_dir.exists() else "does not exist"
        parser.error(f"sweep folder {args.sweep_dir} {problem}")
    if args.watch is not None and not args.watch > 0:
        parser.error(f"--watch {args.watch:g}: the refresh interval must be a positive number of seconds")
    if args.watch is not None:
        try:
            watch(args.sweep_dir, args.watch)
        except KeyboardInterrupt:
            return 0
    try:
        if args.json:
            print(json.dumps(report_document(load_sweep(args.sweep_dir)), indent=2))
            return 0
        sweep = report(args.sweep_dir)
    except SweepReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(sweep))
    print(f"\nReport written to {sweep.path}: {SUMMARY_FILE}, {HISTORY_FILE}, {BEST_FILE}, {PLOT_FILE}, {HPARAMS_DIR}/")
    if args.tracker:
        try:
            print(f"Summary sent to {push_to_tracker(sweep, trackers()[args.tracker])}")
        except SweepReportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0
