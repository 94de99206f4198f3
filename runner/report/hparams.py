"""The sweep as one TensorBoard HParams experiment: SWEEP_DIR/tensorboard_hparams/, a session per trial."""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

from runner.report.files import union
from runner.report.ranking import Sweep, is_number
from runner.report.trials import Trial
from runner.files import write_bytes_atomic

HPARAMS_DIR = "tensorboard_hparams"


# TensorBoard's session status has no "pruned" or "interrupted": a pruned trial ended as planned,
# an interrupted one neither succeeded nor failed and resumes when the sweep runs again.
_SESSION_STATUS = {
    "completed": "STATUS_SUCCESS",
    "pruned": "STATUS_SUCCESS",
    "failed": "STATUS_FAILURE",
    "running": "STATUS_RUNNING",
    "interrupted": "STATUS_UNKNOWN",
}


def write_tensorboard_hparams(sweep: Sweep) -> None:
    """SWEEP_DIR/tensorboard_hparams: one HParams experiment listing every trial, its swept values and objective.

    Each completed or pruned trial's own logger writes an HParams experiment of its own, and
    TensorBoard, given several in one logdir, takes the columns of one of them, picked afresh
    at each start; failed and running trials wrote none. This experiment describes the whole
    sweep: the swept keys with the values tried, each trial's status, the objective (the value
    summary.csv ranks by) and the last epoch's metrics under the names the trials log them, one
    session per trial. The folder is rebuilt aside and swapped in: a live TensorBoard never
    reads half of it, and reads the new event files as the runs' latest data.
    """
    from tensorboard.plugins.hparams import summary_v2 as hp

    metrics = union(list(t.final_metrics) for t in sweep.trials)
    hparams = [hp.HParam("status", hp.Discrete(sorted({t.status for t in sweep.trials})))]
    for key, values in sweep.parameters.items():
        if all(is_number(v) for v in values.values()):
            domain = hp.RealInterval(float(min(values.values())), float(max(values.values())))
        else:
            domain = hp.Discrete(sorted(set(values.values())))
        hparams.append(hp.HParam(key, domain))
    experiment = hp.hparams_config_pb(
        hparams,
        [hp.Metric("objective", display_name=f"objective: {sweep.metric} ({sweep.goal}, best epoch)")]
        + [hp.Metric(m, display_name=f"{m} (last epoch)") for m in metrics],
    )

    target = sweep.path / HPARAMS_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{HPARAMS_DIR}-", dir=sweep.path))
    try:
        staging.chmod(0o755)
        _write_events(staging, [experiment])
        for trial in sweep.trials:
            _write_events(staging / trial.name, _trial_summaries(trial, sweep))
        retired = staging.with_name(staging.name + "-old")
        if target.exists():
            target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _trial_summaries(trial: Trial, sweep: Sweep) -> list:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    values = {"status": trial.status}
    values.update({key: by_trial[trial.name] for key, by_trial in sweep.parameters.items() if trial.name in by_trial})
    end_info = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(
            status=api_pb2.Status.Value(_SESSION_STATUS[trial.status]), end_time_secs=time.time()
        )
    )
    session_end = summary_pb2.Summary()
    session_end.value.add(
        tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(end_info), tensor=metadata.NULL_TENSOR
    )
    scalars = {"objective": trial.value, **trial.final_metrics}
    measured = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in scalars.items() if v is not None]
    )
    return [hp.hparams_pb(values, trial_id=trial.name), measured, session_end]


def _write_events(run_dir: Path, summaries: list) -> None:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    records = RecordWriter(buffer)
    now = time.time()
    records.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
    for summary in summaries:
        records.write(event_pb2.Event(wall_time=now, step=0, summary=summary).SerializeToString())
    # a new name per write: TensorBoard follows event files by name and read offset
    write_bytes_atomic(run_dir / f"events.out.tfevents.{time.time_ns()}.runner-report", buffer.getvalue())
