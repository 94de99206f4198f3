"""The sweep report: rank a sweep folder's trials and write what compares them.

`python -m runner.report SWEEP_DIR [--watch [SECONDS]]` (and the SweepReport callback when a
multirun ends) reads every trial folder's result.json, metrics.csv and .hydra/overrides.yaml,
then writes into the sweep folder: summary.csv, history.csv, best.yaml, report.png and
tensorboard_hparams/, and prints the ranked table (`--watch`: with the trials in flight under it). The steps run in this order:
collect trials -> rank -> write files -> draw -> print. The best trial is chosen once, in
`load_sweep`, and every output names that same trial.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from filelock import FileLock

from runner.paths import CONF_DIR
from runner.errors import RunnerError
from runner.sweep.journal import Journal
from runner.resolvers import GOALS
from runner.files import write_bytes_atomic, write_text_atomic
from runner.results import read_metrics, read_result

STATUSES = ("running", "completed", "pruned", "failed", "interrupted")

SUMMARY_FILE = "summary.csv"
HISTORY_FILE = "history.csv"
BEST_FILE = "best.yaml"
PLOT_FILE = "report.png"
HPARAMS_DIR = "tensorboard_hparams"
LOCK_FILE = ".report.lock"
# learning curves of more trials than this turn into an unreadable tangle
CURVES_SHOWN = 5
WATCH_SECONDS = 10.0


class SweepReportError(RunnerError):
    """The sweep folder cannot be reported on: missing, empty, or its trials disagree."""


@dataclass(frozen=True)
class Trial:
    """One trial folder as the report sees it; `value` is None until an epoch was evaluated."""

    number: int | None
    name: str
    path: Path
    status: str
    overrides: tuple[str, ...]
    metric: str | None
    goal: str | None
    value: float | None
    best_epoch: int | None
    epochs: int | None
    duration_s: float | None
    reason: str | None
    final_metrics: dict = field(default_factory=dict)
    best_metrics: dict = field(default_factory=dict)
    # the test stage's metrics (the best checkpoint on the test split): shown, never ranked by
    test_metrics: dict = field(default_factory=dict)
    # the command that reruns the trial alone, and the folder to run it from (recorded by the trial)
    command: str | None = None
    started_in: str | None = None
    history: list = field(default_factory=list)
    started_at: str | None = None
    max_epochs: int | None = None

    @property
    def ranked(self) -> bool:
        """Failed trials and trials without a value yet are listed, unranked, after the others."""
        return self.value is not None and self.status != "failed"


@dataclass(frozen=True)
class Sweep:
    """A sweep folder read once: trials best first, the one best, and what the sweep varied."""

    path: Path
    metric: str
    goal: str
    trials: list[Trial]
    best: Trial | None
    # override key -> {trial name: value}, typed alike across trials (numbers, booleans or text)
    parameters: dict[str, dict[str, object]]

    def rank_of(self, trial: Trial) -> int | None:
        return self.trials.index(trial) + 1 if trial.ranked else None

    def numeric_parameters(self) -> list[str]:
        return [key for key, values in self.parameters.items() if all(_is_number(v) for v in values.values())]


# ---------------------------------------------------------------- collect trials -> rank


def load_sweep(sweep_dir: Path | str) -> Sweep:
    """Read every trial of the sweep folder, rank them and choose the best: the report's one source."""
    sweep_dir = Path(sweep_dir)
    trials = collect_trials(sweep_dir)
    metric, goal = sweep_objective(trials, sweep_dir)
    ranked = rank_trials(trials, goal)
    return Sweep(
        path=sweep_dir,
        metric=metric,
        goal=goal,
        trials=ranked,
        best=ranked[0] if ranked[0].ranked else None,
        parameters=swept_parameters(ranked),
    )


def collect_trials(sweep_dir: Path) -> list[Trial]:
    """Every subfolder holding .hydra/ or result.json; one without result.json has not started training."""
    if not sweep_dir.is_dir():
        raise SweepReportError(f"sweep folder {sweep_dir} does not exist")
    folders = [p for p in sorted(sweep_dir.iterdir()) if (p / ".hydra").is_dir() or (p / "result.json").is_file()]
    if not folders:
        hint = (
            " it is a single run's folder; pass the sweep folder that holds the trial folders"
            if (sweep_dir / "result.json").is_file()
            else " is it a sweep folder (outputs/sweeps/<time>)? a sweep writes one per trial"
        )
        raise SweepReportError(f"no trials in {sweep_dir}: no subfolder holds .hydra/ or result.json;{hint}")
    return [read_trial(folder) for folder in folders]


def read_trial(folder: Path) -> Trial:
    result = read_result(folder) or {}
    # Hydra made the folder but training has not written result.json yet: queued or starting
    status = result.get("status", "running")
    if status not in STATUSES:
        raise SweepReportError(
            f"{folder / 'result.json'} has status {status!r}; a trial's status is one of {', '.join(STATUSES)}"
        )
    objective = result.get("objective") or {}
    config_objective = _config_objective(folder)
    return Trial(
        number=_job_number(folder.name),
        name=folder.name,
        path=folder.resolve(),
        status=status,
        overrides=tuple(_hydra_overrides(folder) or result.get("overrides") or ()),
        metric=objective.get("metric") or config_objective.get("metric"),
        goal=objective.get("goal") or config_objective.get("goal"),
        value=objective.get("value"),
        best_epoch=objective.get("epoch"),
        epochs=result.get("epochs"),
        duration_s=result.get("duration_s"),
        reason=result.get("reason"),
        final_metrics=result.get("final_metrics") or {},
        best_metrics=result.get("best_metrics") or {},
        test_metrics=result.get("test_metrics") or {},
        command=result.get("command"),
        started_in=result.get("started_in"),
        history=read_metrics(folder),
        started_at=result.get("started_at"),
        max_epochs=result.get("max_epochs"),
    )


def _job_number(folder_name: str) -> int | None:
    """Hydra's job number leads the trial folder's name (`3_optimizer.lr=0.01`)."""
    digits = folder_name.split("_", 1)[0]
    return int(digits) if digits.isdigit() else None


def _hydra_overrides(folder: Path) -> list[str] | None:
    path = folder / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def _config_objective(folder: Path) -> dict:
    """objective.* of the trial's composed config: the objective of a trial that has no result.json yet."""
    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("objective") or {}


def sweep_objective(trials: list[Trial], sweep_dir: Path) -> tuple[str, str]:
    """The metric and goal every trial was optimised for; ranking trials of different ones means nothing."""
    objectives = {(t.metric, t.goal) for t in trials if t.metric and t.goal}
    if not objectives:
        raise SweepReportError(
            f"no trial in {sweep_dir} names its objective yet (result.json objective.* or .hydra/config.yaml objective.*)"
        )
    if len(objectives) > 1:
        found = ", ".join(f"{metric} ({goal})" for metric, goal in sorted(objectives))
        raise SweepReportError(f"the trials in {sweep_dir} optimise different objectives: {found}; a sweep ranks one")
    metric, goal = objectives.pop()
    if goal not in GOALS:
        raise SweepReportError(f"objective.goal={goal!r} in {sweep_dir} is not allowed; use one of {', '.join(GOALS)}")
    return metric, goal


def rank_trials(trials: list[Trial], goal: str) -> list[Trial]:
    """Best first in the goal's direction; failed and value-less trials last, by job number."""
    sign = -1.0 if goal == "maximize" else 1.0

    def order(trial: Trial):
        by_value = sign * trial.value if trial.ranked else 0.0
        return (not trial.ranked, by_value, trial.number is None, trial.number or 0, trial.name)

    return sorted(trials, key=order)


def swept_parameters(trials: list[Trial]) -> dict[str, dict[str, object]]:
    """Override keys whose values differ between trials (or are missing in some): what the sweep varied."""
    texts: dict[str, dict[str, str]] = {}
    for trial in trials:
        for key, value in set_values(trial).items():
            texts.setdefault(key, {})[trial.name] = value
    swept = {
        key: values
        for key, values in texts.items()
        if len(set(values.values())) > 1 or len(values) < len(trials)
    }
    return {key: _typed_alike(swept[key]) for key in sorted(swept)}


def set_values(trial: Trial) -> dict[str, str]:
    """The config values a trial's overrides set, key -> value as typed."""
    values = {}
    for override in trial.overrides:
        key, sep, value = override.partition("=")
        # `~key` deletes a config entry: it sets no value to compare
        if sep and not key.startswith("~"):
            values[key.lstrip("+")] = value
    return values


def _typed_alike(texts: dict[str, str]) -> dict[str, object]:
    """Numbers if every value is a finite number, booleans if every one is true/false, else the text."""
    numbers = {name: _parse_number(text) for name, text in texts.items()}
    if all(v is not None for v in numbers.values()):
        return numbers
    if all(text.lower() in ("true", "false") for text in texts.values()):
        return {name: text.lower() == "true" for name, text in texts.items()}
    return dict(texts)


def _parse_number(text: str) -> int | float | None:
    for parse in (int, float):
        try:
            number = parse(text)
        except ValueError:
            continue
        return number if math.isfinite(number) else None
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rerun_command(trial: Trial) -> str:
    """The shell command that runs this trial's configuration again, alone, from the folder the sweep was
    started in (`trial.started_in`): as the trial recorded it (config folder flags, PYTHONPATH), or from
    its overrides for a trial that recorded none."""
    return trial.command or shlex.join(["python", "-m", "runner", *trial.overrides])


def objective_on_test(sweep: "Sweep") -> str:
    """The objective's metric on the test split: `val/acc` -> `test/acc`."""
    return "test/" + sweep.metric.split("/", 1)[-1]


# ---------------------------------------------------------------- write files


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
    except OSError as error:
        # typically a colleague's sweep folder, readable but not writable
        raise SweepReportError(f"cannot write the report into {sweep.path}: {error}") from error


def write_summary_csv(sweep: Sweep) -> None:
    """One row per trial, ranked; final/<metric> and best/<metric> columns for every metric any trial has."""
    metrics = _union(list(t.final_metrics) + list(t.best_metrics) for t in sweep.trials)
    tests = _union(list(t.test_metrics) for t in sweep.trials)
    columns = [
        "rank", "number", "name", "status", "objective", "best_epoch", "epochs", "duration_s", "reason", "overrides",
        *(f"final/{m}" for m in metrics), *(f"best/{m}" for m in metrics), *tests,
    ]  # fmt: skip
    rows = []
    for trial in sweep.trials:
        row = {
            "rank": sweep.rank_of(trial),
            "number": trial.number,
            "name": trial.name,
            "status": trial.status,
            "objective": trial.value,
            "best_epoch": trial.best_epoch,
            "epochs": trial.epochs,
            "duration_s": trial.duration_s,
            "reason": trial.reason,
            "overrides": shlex.join(trial.overrides),
        }
        row.update({f"final/{m}": v for m, v in trial.final_metrics.items()})
        row.update({f"best/{m}": v for m, v in trial.best_metrics.items()})
        row.update(trial.test_metrics)
        rows.append(row)
    _write_csv(sweep.path / SUMMARY_FILE, columns, rows)


def write_history_csv(sweep: Sweep) -> None:
    """Every trial's metrics.csv rows in one long table, keyed by trial name and number."""
    columns = ["name", "number", *_union(list(row) for t in sweep.trials for row in t.history)]
    rows = [{"name": t.name, "number": t.number, **row} for t in sorted(sweep.trials, key=_by_number) for row in t.history]
    _write_csv(sweep.path / HISTORY_FILE, columns, rows)


def write_best_yaml(sweep: Sweep) -> None:
    """The best trial and the command that reruns it; no file while no trial has a value."""
    path = sweep.path / BEST_FILE
    best = sweep.best
    if best is None:
        path.unlink(missing_ok=True)
        return
    record = {
        "name": best.name,
        "number": best.number,
        "status": best.status,
        "objective": {"metric": sweep.metric, "goal": sweep.goal, "value": best.value, "epoch": best.best_epoch},
        "overrides": list(best.overrides),
        "command": rerun_command(best),
        # the folder to run the command from (where the sweep was started)
        "cwd": best.started_in,
        "test_metrics": best.test_metrics or None,
        "run_dir": str(best.path),
    }
    lineage = pbt_lineage(best)
    if lineage is not None:
        record["pbt"] = lineage
    # no line wrapping: the command is meant to be copied whole
    write_text_atomic(path, yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=math.inf))


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text_atomic(path, buffer.getvalue())


def _union(key_lists) -> list[str]:
    """Keys in first-seen order, each once."""
    return list(dict.fromkeys(key for keys in key_lists for key in keys))


def _by_number(trial: Trial):
    return (trial.number is None, trial.number or 0, trial.name)


# ---------------------------------------------------------------- TensorBoard HParams

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

    metrics = _union(list(t.final_metrics) for t in sweep.trials)
    hparams = [hp.HParam("status", hp.Discrete(sorted({t.status for t in sweep.trials})))]
    for key, values in sweep.parameters.items():
        if all(_is_number(v) for v in values.values()):
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


# ---------------------------------------------------------------- draw


def draw_report_png(sweep: Sweep) -> None:
    """Objective per trial with best-so-far, the top trials' learning curves, objective per swept number."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    parameters = sweep.numeric_parameters()
    records = pbt_records(sweep)
    panels = 2 + len(parameters) + bool(records)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    figure = Figure(figsize=(5.2 * columns, 3.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    figure.suptitle(f"{sweep.path.name}: {sweep.metric} ({sweep.goal})")
    _draw_objective_per_trial(axes[0], sweep)
    _draw_learning_curves(axes[1], sweep)
    for ax in axes[:2]:
        # trial numbers and epochs are whole
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, key in zip(axes[2:], parameters):
        _draw_objective_against(ax, sweep, key)
    if records:
        _draw_pbt(axes[2 + len(parameters)], sweep, records)
    for ax in axes[panels:]:
        ax.set_visible(False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(sweep.path / PLOT_FILE, buffer.getvalue())


def _mark_best(ax, x, y) -> None:
    ax.scatter([x], [y], s=220, marker="*", color="crimson", zorder=5, label="best")


def _say_no_values(ax) -> None:
    ax.text(0.5, 0.5, "no objective values yet", ha="center", va="center", transform=ax.transAxes, color="gray")


def _draw_objective_per_trial(ax, sweep: Sweep) -> None:
    ax.set_title("objective per trial")
    ax.set_xlabel("trial number")
    ax.set_ylabel(sweep.metric)
    valued = sorted((t for t in sweep.trials if t.ranked and t.number is not None), key=_by_number)
    if not valued:
        _say_no_values(ax)
        return
    ax.scatter([t.number for t in valued], [t.value for t in valued], color="tab:blue", label="trial")
    pick = max if sweep.goal == "maximize" else min
    best_so_far = []
    for trial in valued:
        best_so_far.append(trial.value if not best_so_far else pick(best_so_far[-1], trial.value))
    ax.step([t.number for t in valued], best_so_far, where="post", color="tab:orange", label="best so far")
    if sweep.best and sweep.best.number is not None:
        _mark_best(ax, sweep.best.number, sweep.best.value)
    ax.legend(fontsize=8)


def _draw_learning_curves(ax, sweep: Sweep) -> None:
    ax.set_title(f"learning curves, top {CURVES_SHOWN}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(sweep.metric)
    top = [t for t in sweep.trials if t.ranked][:CURVES_SHOWN]
    if not top:
        _say_no_values(ax)
        return
    for trial in top:
        points = [(row["epoch"], row[sweep.metric]) for row in trial.history if row.get(sweep.metric) is not None]
        is_best = trial is sweep.best
        ax.plot(
            [epoch for epoch, _ in points],
            [value for _, value in points],
            marker="o",
            markersize=3,
            linewidth=2.5 if is_best else 1.2,
            label=f"#{trial.number}" + (" (best)" if is_best else ""),
        )
    if sweep.best.best_epoch is not None:
        _mark_best(ax, sweep.best.best_epoch, sweep.best.value)
    ax.legend(fontsize=8)


def _draw_objective_against(ax, sweep: Sweep, key: str) -> None:
    ax.set_title(f"objective vs {key}")
    ax.set_xlabel(key)
    ax.set_ylabel(sweep.metric)
    values = sweep.parameters[key]
    points = [(values[t.name], t.value) for t in sweep.trials if t.ranked and t.name in values]
    if not points:
        _say_no_values(ax)
        return
    xs = [x for x, _ in points]
    ax.scatter(xs, [y for _, y in points], color="tab:blue")
    # learning rates and weight decays are swept over decades
    if min(xs) > 0 and max(xs) / min(xs) >= 100:
        ax.set_xscale("log")
    if sweep.best and sweep.best.name in values:
        _mark_best(ax, values[sweep.best.name], sweep.best.value)
        ax.legend(fontsize=8)


# ---------------------------------------------------------------- print


def format_table(sweep: Sweep) -> str:
    """The ranked table as plain fixed-width text, with the status counts above it (as Ray Tune shows)."""
    counts = Counter(t.status for t in sweep.trials)
    lines = [
        f"Sweep {sweep.path}: {len(sweep.trials)} trials: "
        + ", ".join(f"{counts[s]} {s}" for s in STATUSES),
        f"Objective: {sweep.metric} ({sweep.goal})",
    ]
    if sweep.best:
        lines.append(f"Best: #{sweep.best.number} {sweep.best.name}  {sweep.metric}={_number_text(sweep.best.value)}")
        lines.append(f"Rerun: {rerun_command(sweep.best)}")
        if sweep.best.started_in:
            lines.append(f"  (from {sweep.best.started_in})")
    else:
        lines.append("Best: none yet (no trial has an objective value)")
    tested = any(t.test_metrics for t in sweep.trials)
    header = ["rank", "#", "status", sweep.metric, "at epoch", *([objective_on_test(sweep)] if tested else []), "epochs",
              "time", *sweep.parameters, "reason"]
    body = [
        [
            _text(sweep.rank_of(trial)),
            _text(trial.number),
            trial.status,
            _number_text(trial.value),
            _text(trial.best_epoch),
            *([_number_text(trial.test_metrics.get(objective_on_test(sweep)))] if tested else []),
            _text(trial.epochs),
            _duration_text(trial.duration_s),
            *(_text(values.get(trial.name)) for values in sweep.parameters.values()),
            _shorten(trial.reason or "", 48),
        ]
        for trial in sweep.trials
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *body]]
    pbt_text = format_pbt(sweep)
    if pbt_text:
        lines += ["", pbt_text]
    return "\n".join(lines)


def format_in_flight(sweep: Sweep, now: datetime | None = None) -> str:
    """What --watch shows under the table: each trial in flight, how far it is and for how long; with
    the runner's sweepers, also the trials asked but not started yet and how many are done."""
    now = now or datetime.now(timezone.utc)
    running = sorted((t for t in sweep.trials if t.status == "running"), key=_by_number)
    events = Journal(sweep.path).read()
    with_folder = {t.number for t in sweep.trials}
    told = {e["number"] for e in events if e["event"] == "tell"}
    queued = [e for e in events if e["event"] == "ask" and e["number"] not in with_folder and e["number"] not in told]
    lines = [f"In flight: {len(running) + len(queued)}"]
    for trial in running:
        if trial.started_at is None:
            where = "starting"
        else:
            started = datetime.fromisoformat(trial.started_at)
            if started.tzinfo is None:  # result.json writes UTC times
                started = started.replace(tzinfo=timezone.utc)
            seconds = (now - started).total_seconds()
            where = f"epoch {trial.epochs or 0}/{_text(trial.max_epochs)}, running for {_duration_text(seconds)}"
        lines.append(f"  #{_text(trial.number)}  {trial.name}  {where}")
    lines += [f"  #{e['number']}  asked, not started yet: {' '.join(e['overrides'])}" for e in queued]
    budgets = [e["budget"] for e in events if e["event"] == "start" and "budget" in e]
    if budgets:
        lines.append(f"Done: {len(told)} of {budgets[-1]} trials")
    return "\n".join(lines)


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _number_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------- trackers

# the logger options; those whose class has `log_sweep` can take a sweep's summary
LOGGER_CONFIGS = CONF_DIR / "logger"


def trackers() -> dict[str, str]:
    """Logger options (conf/logger/NAME.yaml) whose class takes a sweep's summary: name -> `_target_`."""
    found = {}
    for path in sorted(LOGGER_CONFIGS.glob("*.yaml")):
        for node in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).values():
            if isinstance(node, dict) and takes_sweeps(node.get("_target_")):
                found[path.stem] = node["_target_"]
    return found


def takes_sweeps(target: str | None) -> bool:
    from hydra.utils import get_object

    return target is not None and hasattr(get_object(target), "log_sweep")


def tracker_summary(sweep: Sweep) -> dict:
    """The sweep as plain data for a tracker: its objective, best trial, status counts, settings every
    trial shares (the parent run's params), each trial's rank, the ranked table as summary.csv holds
    it, the printed table, and the report files to attach."""
    counts = Counter(t.status for t in sweep.trials)
    shared = _shared_overrides(sweep.trials)
    with (sweep.path / SUMMARY_FILE).open(newline="", encoding="utf-8") as f:
        columns, *rows = list(csv.reader(f))
    best = sweep.best
    return {
        "name": sweep.path.name,
        "metric": sweep.metric,
        "goal": sweep.goal,
        "best": None if best is None else {"name": best.name, "value": best.value, "epoch": best.best_epoch},
        "counts": {status: counts[status] for status in STATUSES},
        "params": {"objective.metric": sweep.metric, "objective.goal": sweep.goal, **shared},
        "trials": [{"name": t.name, "run_dir": str(t.path), "status": t.status, "value": t.value,
                    "rank": sweep.rank_of(t)} for t in sweep.trials],
        "table": {"columns": columns, "rows": rows},
        "text": format_table(sweep),
        "files": [str(sweep.path / name) for name in (SUMMARY_FILE, BEST_FILE, PLOT_FILE) if (sweep.path / name).is_file()],
    }


def _shared_overrides(trials: list[Trial]) -> dict[str, str]:
    """The values every trial's overrides set alike: the sweep's fixed settings."""
    first, *others = [set_values(trial) for trial in trials]
    return {key: value for key, value in sorted(first.items()) if all(o.get(key) == value for o in others)}


def push_to_tracker(sweep: Sweep, target: str) -> str:
    """Send the sweep's summary (tracker_summary) to the tracker whose logger class is `target`; says where it went."""
    from hydra.utils import get_object

    try:
        return get_object(target).log_sweep(sweep.path, tracker_summary(sweep))
    except Exception as error:
        raise SweepReportError(f"could not send the sweep's summary to {target}: {error}") from error


# ---------------------------------------------------------------- Population Based Training


def pbt_records(sweep: Sweep) -> list[dict]:
    """The sweep's PBT records (runner.sweep.pbt's global log), [] for a sweep without PBT."""
    from runner.sweep.pbt.records import read_records

    return read_records(sweep.path)


def pbt_lineage(trial: Trial) -> dict | None:
    """A PBT trial's schedule and ancestry from its policy file, and the command that replays it;
    None for a trial without PBT."""
    from runner.sweep.pbt.policy import POLICY_FILE, read_policy, schedule

    path = trial.path / POLICY_FILE
    if not path.is_file():
        return None
    segments = schedule(read_policy(path))
    return {
        "policy": str(path),
        "schedule": [{"epochs": _epochs_text(s.first, s.last if s.last is not None else trial.epochs),
                      "trained_by": s.trial, "values": s.values} for s in segments],
        "ancestry": [s.trial for s in segments],
        "replay": replay_command(trial, path),
    }


def replay_command(trial: Trial, policy: Path) -> str:
    """The trial's rerun command with its PBT overrides swapped for `pbt=replay pbt.policy=<policy>`."""
    overrides = list(trial.overrides)
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] != "pbt"]
    # quoted for Hydra too: trial folders hold '=' and ','
    quoted = '"' + str(policy).replace('\\', '\\\\').replace('"', '\\"') + '"'
    tail = shlex.join([*kept, "pbt=replay", f"pbt.policy={quoted}"])
    command, given = trial.command, shlex.join(overrides)
    if command and overrides and command.endswith(given):
        return command[: len(command) - len(given)] + tail
    if command and not overrides:
        return f"{command} {tail}"
    return f"python -m runner {tail}"


def format_pbt(sweep: Sweep) -> str | None:
    """The PBT part of the printed report: exploits counted, and the best trial's schedule over
    epochs, its ancestry and the replay command. None for a sweep without PBT."""
    records = pbt_records(sweep)
    if not records:
        return None
    exploits = sum(r.get("decision") == "exploit" for r in records)
    lines = [f"PBT: {len(records)} perturbation points recorded, {exploits} exploits (pbt_global.jsonl)"]
    lineage = pbt_lineage(sweep.best) if sweep.best else None
    if lineage is None:
        return "\n".join(lines)
    numbers = {t.name: f"#{t.number}" if t.number is not None else t.name for t in sweep.trials}
    keys = list(lineage["schedule"][0]["values"])
    header = ["epochs", *keys, "trained by"]
    body = [[segment["epochs"], *(_value_text(segment["values"].get(k)) for k in keys),
             numbers.get(segment["trained_by"], segment["trained_by"])] for segment in lineage["schedule"]]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines.append(f"Schedule of the best trial #{sweep.best.number} ({lineage['policy']}):")
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *body]]
    ancestry = [numbers.get(lineage["schedule"][0]["trained_by"], lineage["schedule"][0]["trained_by"])]
    for segment in lineage["schedule"][1:]:
        copied_at = int(segment["epochs"].split("-")[0]) - 1
        ancestry.append(f"{numbers.get(segment['trained_by'], segment['trained_by'])} (copied at epoch {copied_at})")
    lines.append("Ancestry: " + " -> ".join(ancestry))
    lines.append(f"Replay: {lineage['replay']}")
    return "\n".join(lines)


def _draw_pbt(ax, sweep: Sweep, records: list[dict]) -> None:
    """The objective of every member over epochs; each exploit drawn as the jump from the trial's
    value to its donor's at that epoch."""
    ax.set_title("PBT: members over epochs, exploits")
    ax.set_xlabel("epoch")
    ax.set_ylabel(sweep.metric)
    for trial in sorted(sweep.trials, key=_by_number):
        points = [(row["epoch"], row[sweep.metric]) for row in trial.history if row.get(sweep.metric) is not None]
        is_best = trial is sweep.best
        ax.plot([e for e, _ in points], [v for _, v in points], linewidth=2.5 if is_best else 0.9,
                alpha=1.0 if is_best else 0.6, color="crimson" if is_best else None)
    jumps = [r for r in records if r.get("decision") == "exploit" and r.get("value") is not None
             and r.get("donor_value") is not None]
    for record in jumps:
        ax.plot([record["epoch"]] * 2, [record["value"], record["donor_value"]], color="gray", linestyle=":",
                linewidth=1)
    if jumps:
        ax.scatter([r["epoch"] for r in jumps], [r["donor_value"] for r in jumps], marker="^", color="black",
                   s=25, zorder=4, label=f"exploit ({len(jumps)})")
    if sweep.best and sweep.best.best_epoch is not None:
        _mark_best(ax, sweep.best.best_epoch, sweep.best.value)
    ax.legend(fontsize=8)


def _epochs_text(first: int, last: int | None) -> str:
    if last is None:
        return f"{first}-"
    return f"{first}-{last}" if last > first else str(first)


def _value_text(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _text(value)


# ---------------------------------------------------------------- command line


def report(sweep_dir: Path | str) -> Sweep:
    """Read the sweep, write every report file; returns what was reported."""
    sweep = load_sweep(sweep_dir)
    write_report(sweep)
    return sweep


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
    args = parser.parse_args(argv)
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

