"""Writing the report: read and rank the sweep, then every report file into its folder under one lock."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from runner.report.drawing import draw_report_png
from runner.report.files import write_best_yaml, write_history_csv, write_summary_csv
from runner.report.hparams import write_tensorboard_hparams
from runner.report.importance import write_importance_csv
from runner.report.parallel import draw_parameters_png
from runner.report.ranking import Sweep, load_sweep
from runner.report.trials import SweepReportError

LOCK_FILE = ".report.lock"


def prepare_report() -> None:
    """Load what writing the report loads the first time (TensorBoard's writer, matplotlib and its
    fonts, scikit-learn's forest), writing nothing: done while a sweep's last trials run, the report
    after them is quick."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.ensemble import RandomForestRegressor  # noqa: F401  (the parameters' importance)
    from sklearn.inspection import permutation_importance  # noqa: F401
    from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: F401
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2  # noqa: F401
    from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: F401

    figure = Figure(figsize=(1, 1))
    FigureCanvasAgg(figure)
    figure.add_subplot().set_title("0")
    figure.savefig(io.BytesIO(), format="png")


def report(sweep_dir: Path | str) -> Sweep:
    """Read the sweep, write every report file; returns what was reported."""
    sweep = load_sweep(sweep_dir)
    write_report(sweep)
    return sweep


def write_report(sweep: Sweep) -> None:
    """Write every report file into the sweep folder; each appears whole or not at all."""
    try:
        # `--watch` in a terminal and the callback at the sweep's end may write at the same moment
        with FileLock(sweep.path / LOCK_FILE):
            write_summary_csv(sweep)
            write_history_csv(sweep)
            write_best_yaml(sweep)
            write_tensorboard_hparams(sweep)
            draw_report_png(sweep)
            write_importance_csv(sweep)
            draw_parameters_png(sweep)
    except OSError as error:
        # typically a colleague's sweep folder, readable but not writable
        raise SweepReportError(f"cannot write the report into {sweep.path}: {error}") from error
