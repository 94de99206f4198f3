"""Experiment loggers: the runner hands each one scalars, hparams, images, figures, histograms and text.

A logger implements the calls it can use; the base class ignores the rest. Every logger is built
with `run_dir`, the run's folder, and `start_step`, the step a resumed run continues from: what an
earlier attempt logged up to that step is kept, what it logged after it (it died past its last
checkpoint) is dropped, as TensorBoard's `purge_step` does. A logger may also ask for these, by
naming them in its constructor (the runner passes only what a constructor names):

    sweep_dir   the sweep folder when the run is a trial of a multirun, else None
    hparams     the flattened config plus the group choices (runner.run.callbacks.flat_hparams): the
                keys of TensorBoard's HParams, MLflow's params and W&B's config
    choices     each config group's choice, {"model": "lenet", ...} (empty when composed without
                Hydra's app)

Besides the log_* calls the runner makes these, in this order at the end of a run:

    log_summary(summary, step)  the run's best: best/<metric> for every metric at the best epoch,
                                and best/epoch (absent while nothing was evaluated)
    set_status(status, reason)  completed, pruned, failed or interrupted, with the reason; also
                                `interrupted` as soon as a signal's checkpoint is saved (the process
                                may be killed right after, or go on training)
    close()

Trackers (MLflow, W&B) keep the id of their run in the run folder (mlflow_run.json,
wandb_run.json), so that a resumed run continues the same tracker run. A logger class may also
offer `log_sweep(sweep_dir, summary)`: `python -m runner.report SWEEP_DIR --tracker NAME` and the end
of a multirun send it the sweep's ranked summary.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MLFLOW_RUN_FILE = "mlflow_run.json"
WANDB_RUN_FILE = "wandb_run.json"


class Logger:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, object], metrics: dict[str, float]) -> None: ...

    def log_images(self, tag: str, images: torch.Tensor, captions: list[str], step: int) -> None:
        """A grid of images in [0, 1], [N, C, H, W], with a caption each."""

    def log_figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure."""

    def log_histograms(self, tensors: dict[str, torch.Tensor], step: int) -> None: ...

    def log_text(self, tag: str, text: str) -> None: ...

    def log_summary(self, summary: dict[str, float], step: int) -> None: ...

    def set_status(self, status: str, reason: str | None) -> None: ...

    def close(self) -> None: ...


class FreshSteps:
    """Keeps from a logging call the values a logger has not logged yet: each tag only at a step after
    the last one it was logged at.

    The runner logs `lr` with the step scalars and with the epoch's, at one step when an epoch ends
    on a logging step; and everything up to `start_step` was logged by an earlier attempt.
    """

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.last: dict[str, int] = {}

    def __call__(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        fresh = {tag: value for tag, value in metrics.items() if step > self.last.get(tag, self.start_step)}
        self.last.update(dict.fromkeys(fresh, step))
        return fresh


class TensorBoardLogger(Logger):
    """TensorBoard events in `run_dir/subdir`."""

    def __init__(self, run_dir: str | Path, subdir: str = "tensorboard", start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides the events of an earlier attempt from purge_step on: keep those up to
        # start_step (a checkpoint is saved after its epoch's scalars are logged), drop the later ones
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / subdir), purge_step=start_step + 1)

    def log_metrics(self, metrics, step):
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_hparams(self, hparams, metrics):
        # written into this run's own event file (SummaryWriter.add_hparams would open a new
        # sub-run), so `tensorboard --logdir SWEEP_DIR` shows one HParams row per trial
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        experiment, session_start, session_end = hparams_summary(hparams, metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(f"hparams/{tag}", value, 0)

    def log_images(self, tag, images, captions, step):
        self.writer.add_figure(tag, _image_grid(images, captions), step)

    def log_figure(self, tag, figure, step):
        self.writer.add_figure(tag, figure, step, close=False)

    def log_histograms(self, tensors, step):
        for tag, tensor in tensors.items():
            self.writer.add_histogram(tag, tensor.detach().float().cpu(), step)

    def log_text(self, tag, text):
        # TensorBoard renders text as markdown: indent to keep YAML as a code block
        self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), 0)

    def close(self):
        self.writer.close()


def _image_grid(images: torch.Tensor, captions: list[str]):
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, channels, height, width = images.shape
    columns = min(8, n)
    rows = -(-n // columns)
    # every image on one white canvas, a caption band above each, drawn by one Axes: a tenth of
    # the time of one Axes per image with tight_layout (half a second per grid, paid by every trial)
    band, gap = height // 3, width // 8
    cell_height, cell_width = height + band, width + gap
    canvas = torch.ones(rows * cell_height, columns * cell_width, 3)
    pixels = images.detach().float().clamp(0, 1).cpu()
    pixels = pixels.expand(-1, 3, -1, -1) if channels == 1 else pixels
    for i in range(n):
        top, left = (i // columns) * cell_height + band, (i % columns) * cell_width + gap // 2
        canvas[top : top + height, left : left + width] = pixels[i].permute(1, 2, 0)
    figure, ax = plt.subplots(figsize=(1.6 * columns, 1.9 * rows))
    figure.subplots_adjust(0, 0, 1, 1)
    ax.axis("off")
    ax.imshow(canvas.numpy(), interpolation="nearest")
    for i, caption in enumerate(captions):
        ax.text((i % columns + 0.5) * cell_width, (i // columns) * cell_height + 0.8 * band, caption, ha="center",
                fontsize=8, color="green" if caption.endswith("✓") else "red")
    return figure


class CSVLogger(Logger):
    """Every scalar as a (step, tag, value) row of one long CSV file, flushed as it goes."""

    def __init__(self, run_dir: str | Path, filename: str = "scalars.csv", start_step: int = 0):
        path = Path(run_dir) / filename
        self.fresh = FreshSteps(start_step)
        if path.exists():
            _keep_rows_up_to(path, start_step)
        is_new = not path.exists()
        self.file = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        if is_new:
            self.writer.writerow(["step", "tag", "value"])

    def log_metrics(self, metrics, step):
        self.writer.writerows([step, tag, value] for tag, value in self.fresh(metrics, step).items())
        self.file.flush()

    def close(self):
        self.file.close()


def _keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rows an earlier attempt wrote after `step`; the file is replaced whole, or left as it was."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= step]
    if len(kept) < len(rows):
        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        _replace_file(path, buffer.getvalue())


def _replace_file(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_record(path: Path, record: dict) -> None:
    _replace_file(path, json.dumps(record, indent=2) + "\n")


class ConsoleLogger(Logger):
    """Scalars as plain log lines."""

    def __init__(self, run_dir: str | Path | None = None, start_step: int = 0):
        pass

    def log_metrics(self, metrics, step):
        log.info("step %d  %s", step, "  ".join(f"{tag}={value:.4g}" for tag, value in metrics.items()))


# ---------------------------------------------------------------- trackers: MLflow and W&B

# MLflow's status of a run that ended as the runner says (a pruned trial ended as its sweep planned)
MLFLOW_STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# MLflow refuses longer param values
MLFLOW_PARAM_LENGTH = 6000


class MLflowLogger(Logger):
    """One MLflow run per run, in a tracking store: by default a SQLite file beside the run folders.

    Logged: every scalar under the runner's names and steps; the flattened config as params (the
    keys of TensorBoard's HParams) and the group choices as tags; the config as config.txt;
    prediction grids and figures as PNGs under media/; the best of every metric (best/<metric>,
    best/epoch); at the end the status (FINISHED, FAILED, or KILLED for an interrupted run, with the
    runner's own status and reason as tags) and, with `log_best_checkpoint`, checkpoints/best.pt.
    A trial of a sweep is a child run of the sweep's run, named after the sweep folder, which the
    first trial to start creates (the trials may be processes on different machines: its id is kept
    in SWEEP_DIR/mlflow_run.json, under a file lock).
    """

    def __init__(self, run_dir: str | Path, tracking_uri: str, experiment_name: str = "runner",
                 log_best_checkpoint: bool = False, start_step: int = 0, sweep_dir: str | Path | None = None,
                 hparams: dict[str, Any] | None = None, choices: dict[str, str] | None = None):
        self.run_dir = Path(run_dir)
        self.uri = _absolute_store_uri(tracking_uri)
        self.log_best_checkpoint = log_best_checkpoint
        self.fresh = FreshSteps(start_step)
        self.ended = False  # a status was set; a logging call after it (training went on) reopens the run
        with _store_errors(f"the MLflow store {self.uri}", "set logger.mlflow.tracking_uri (or MLFLOW_TRACKING_URI) "
                           "to a store you can write, or leave the logger out with ~logger.mlflow"):
            self.client, experiment_id = _open_mlflow(self.uri, experiment_name)
            self.run_id = self._continue(start_step) or self._create(experiment_id, sweep_dir, choices or {})
            _log_params_once(self.client, self.run_id, hparams or {})

    def _continue(self, start_step: int) -> str | None:
        """The run's id if this resumes the run recorded in the run folder; else None, and the recorded run,
        if it was left running, is marked killed: its attempt never saved a checkpoint to go on from."""
        from mlflow.exceptions import MlflowException

        record = _read_record(self.run_dir / MLFLOW_RUN_FILE)
        if record is None or record.get("tracking_uri") != self.uri:
            return None
        try:
            run = self.client.get_run(record["run_id"])
        except MlflowException:
            log.warning("MLflow run %s of %s is not in %s; a new run starts", record["run_id"], self.run_dir, self.uri)
            return None
        if run.info.lifecycle_stage == "deleted":
            return None
        if start_step == 0:
            if run.info.status == "RUNNING":
                self._end_run(run.info.run_id, "interrupted", "superseded: the run started over from step 0")
            return None
        self.client.update_run(run.info.run_id, status="RUNNING")
        _drop_metrics_after(self.client, run.info.run_id, start_step)
        return run.info.run_id

    def _create(self, experiment_id: str, sweep_dir: str | Path | None, choices: dict[str, str]) -> str:
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {**choices, "run_dir": str(self.run_dir)}
        if sweep_dir is not None:
            tags[MLFLOW_PARENT_RUN_ID] = _sweep_run(self.client, experiment_id, Path(sweep_dir), self.uri)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name, tags=resolve_tags(tags))
        _write_record(self.run_dir / MLFLOW_RUN_FILE,
                      {"tracking_uri": self.uri, "experiment_id": experiment_id, "run_id": run.info.run_id})
        return run.info.run_id

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric, RunTag

        if not metrics:
            return
        if self.ended:  # interrupted, and training went on
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.log_batch(self.run_id, tags=[RunTag("status", "running"), RunTag("reason", "")])
            self.ended = False
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(tag, float(value), now, step)
                                                    for tag, value in metrics.items()])

    def log_metrics(self, metrics, step):
        self._log(self.fresh(metrics, step), step)

    def log_summary(self, summary, step):
        self._log(self.fresh(summary, step), step)

    def log_images(self, tag, images, captions, step):
        import matplotlib.pyplot as plt

        figure = _image_grid(images, captions)
        try:
            self.log_figure(tag, figure, step)
        finally:
            plt.close(figure)

    def log_figure(self, tag, figure, step):
        self.client.log_figure(self.run_id, figure, f"media/{tag}/step_{step:08d}.png")

    def log_text(self, tag, text):
        self.client.log_text(self.run_id, text, f"{tag}.txt")

    def set_status(self, status, reason):
        self._end_run(self.run_id, status, reason)
        self.ended = True

    def _end_run(self, run_id: str, status: str, reason: str | None) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag("status", status), RunTag("reason", reason or "")])
        self.client.set_terminated(run_id, MLFLOW_STATUS[status])

    def close(self):
        best = self.run_dir / "checkpoints" / "best.pt"
        if self.log_best_checkpoint and best.exists():
            self.client.log_artifact(self.run_id, str(best), "checkpoints")

    @staticmethod
    def log_sweep(sweep_dir: str | Path, summary: dict[str, Any]) -> str:
        """The sweep's run: its definition as params, the best value and the status counts as metrics,
        the ranked table as its description and with report.png as artifacts; each trial's run gets
        its `rank`, so sorting the children by it (or by best/<metric>) gives the report's order."""
        from mlflow import MlflowClient
        from mlflow.entities import Metric, RunTag

        sweep_dir = Path(sweep_dir)
        record = _read_record(sweep_dir / MLFLOW_RUN_FILE)
        if record is None:
            raise RuntimeError(f"no trial of {sweep_dir} logged to MLflow (no {MLFLOW_RUN_FILE} in the sweep folder); "
                               f"run the sweep with the mlflow logger, e.g. logger=[tensorboard,mlflow]")
        uri, run_id = record["tracking_uri"], record["run_id"]
        with _store_errors(f"the MLflow store {uri}", "check that the store can be written, or set "
                           "MLFLOW_TRACKING_URI as when the sweep ran"):
            client = MlflowClient(uri)
            _log_params_once(client, run_id, summary["params"])
            now = int(time.time() * 1000)
            metrics = [Metric(f"trials/{status}", count, now, 0) for status, count in summary["counts"].items()]
            tags = [RunTag("mlflow.note.content", f"```\n{summary['text']}\n```")]
            best = summary["best"]
            if best is not None:
                metrics.append(Metric(f"best/{summary['metric']}", best["value"], now, 0))
                tags.append(RunTag("best_trial", best["name"]))
            client.log_batch(run_id, metrics=metrics, tags=tags)
            for path in summary["files"]:
                client.log_artifact(run_id, path)
            for trial in summary["trials"]:
                child = _read_record(Path(trial["run_dir"]) / MLFLOW_RUN_FILE)
                if child is not None and child["tracking_uri"] == uri and trial["rank"] is not None:
                    client.log_batch(child["run_id"], metrics=[Metric("rank", trial["rank"], now, 0)])
            counts = summary["counts"]
            if counts["running"]:
                client.update_run(run_id, status="RUNNING")
            else:
                client.set_terminated(run_id, "KILLED" if counts["interrupted"] else "FINISHED")
        return f"MLflow run {run_id} in {uri}"


@contextmanager
def _store_errors(store: str, ways_out: str):
    """Turns any failure of a tracker's store into one message: which store, why, and the ways out."""
    try:
        yield
    except TrackerError:
        raise
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TrackerError(f"cannot use {store}: {first_line}; {ways_out}") from error


class TrackerError(RuntimeError):
    """A tracker's store cannot be used; the message names it, says why and what to do."""


def _absolute_store_uri(uri: str) -> str:
    """A SQLite URI with a relative path (`sqlite:///outputs/mlflow.db`) made absolute: every trial,
    whatever its working folder, reaches the same file."""
    database = _sqlite_file(uri)
    if database is None or database.is_absolute():
        return uri
    query = uri.partition("?")[1:]
    return "sqlite:///" + str(database.resolve()) + "".join(query)


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def _open_mlflow(uri: str, experiment_name: str):
    """A client of the store and the experiment's id; a new SQLite store and the experiment are
    created once, under a file lock, as runs in parallel would otherwise collide doing it."""
    from mlflow import MlflowClient

    # a new store's schema migrations log a line each
    logging.getLogger("alembic").setLevel(logging.WARNING)
    database = _sqlite_file(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock") if database is not None else nullcontext():
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            return client, experiment.experiment_id
        location = str(database.parent / "mlartifacts") if database is not None else None
        return client, client.create_experiment(experiment_name, artifact_location=location)


def _sweep_run(client, experiment_id: str, sweep_dir: Path, uri: str) -> str:
    """The sweep's run, which its trials' runs are children of: created by the first trial, found by the others."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(sweep_dir / f".{MLFLOW_RUN_FILE}.lock"):
        record = _read_record(sweep_dir / MLFLOW_RUN_FILE)
        if record is not None and record["tracking_uri"] == uri:
            return record["run_id"]
        run = client.create_run(experiment_id, run_name=sweep_dir.name, tags={"sweep_dir": str(sweep_dir)})
        _write_record(sweep_dir / MLFLOW_RUN_FILE,
                      {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run.info.run_id})
        return run.info.run_id


def _log_params_once(client, run_id: str, params: dict[str, Any]) -> None:
    """Params the run does not have yet. MLflow params never change: a value that did (a resumed run's
    larger trainer.max_epochs) is set as the tag `changed/<key>`."""
    from mlflow.entities import Param, RunTag

    logged = client.get_run(run_id).data.params
    texts = {key: str(value)[:MLFLOW_PARAM_LENGTH] for key, value in params.items()}
    new = [Param(key, text) for key, text in texts.items() if key not in logged]
    changed = [RunTag(f"changed/{key}", text) for key, text in texts.items() if key in logged and logged[key] != text]
    client.log_batch(run_id, params=new, tags=changed)


def _drop_metrics_after(client, run_id: str, step: int) -> None:
    """Delete the metric values a run holds after `step`, which an attempt that died past its last
    checkpoint logged, as TensorBoard's purge_step hides them. MLflow's API has no call for it; its
    SQL store (SQLite, PostgreSQL, MySQL) is changed directly. Other stores keep them, with a warning."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = client._tracking_client.store
    if not isinstance(store, SqlAlchemyStore):
        stale = [key for key in client.get_run(run_id).data.metrics
                 if any(m.step > step for m in client.get_metric_history(run_id, key))]
        if stale:
            log.warning("MLflow run %s keeps values of %s logged after step %d by an attempt that did not reach "
                        "its next checkpoint: this store cannot delete them", run_id, ", ".join(stale), step)
        return
    with store.ManagedSessionMaker(read_only=False) as session:
        stale = session.query(SqlMetric).filter(SqlMetric.run_uuid == run_id, SqlMetric.step > step)
        keys = sorted({key for (key,) in stale.with_entities(SqlMetric.key).distinct()})
        if not keys:
            return
        stale.delete(synchronize_session=False)
        # each key's latest value, which the run's page and its search show, becomes the last one kept
        session.query(SqlLatestMetric).filter(SqlLatestMetric.run_uuid == run_id,
                                              SqlLatestMetric.key.in_(keys)).delete(synchronize_session=False)
        for key in keys:
            last = (session.query(SqlMetric).filter(SqlMetric.run_uuid == run_id, SqlMetric.key == key)
                    .order_by(SqlMetric.step.desc(), SqlMetric.timestamp.desc(), SqlMetric.value.desc()).first())
            if last is not None:
                session.add(SqlLatestMetric(run_uuid=run_id, key=key, value=last.value, timestamp=last.timestamp,
                                            step=last.step, is_nan=last.is_nan))
    log.info("MLflow run %s: dropped what an earlier attempt logged after step %d (%s)", run_id, step, ", ".join(keys))


WANDB_MODES = ("offline", "online", "disabled")


class WandbLogger(Logger):
    """A W&B run in run_dir/wandb/, offline by default: nothing leaves the machine until `wandb sync`.

    Logged as the W&B tutorial logs them: every scalar at the runner's step, the flattened config
    (the keys of TensorBoard's HParams), prediction images with their captions, weight and gradient
    histograms, figures; `summary` holds the best of every metric (best/<metric>, best/epoch) and
    the runner's status and reason. A trial of a sweep is in the group named after the sweep folder;
    a run is named after its folder; a resumed run continues the same W&B run id.
    """

    def __init__(self, run_dir: str | Path, project: str = "runner", entity: str | None = None,
                 mode: str = "offline", job_type: str = "train", start_step: int = 0,
                 sweep_dir: str | Path | None = None, hparams: dict[str, Any] | None = None):
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.wandb.mode={mode!r} is not a W&B mode; use one of {', '.join(WANDB_MODES)}")
        self.wandb = _import_wandb()
        self.run_dir = Path(run_dir)
        record = _read_record(self.run_dir / WANDB_RUN_FILE)
        run_id = record["id"] if start_step > 0 and record is not None else uuid.uuid4().hex[:16]
        with _store_errors(f"W&B ({mode}) in {self.run_dir / 'wandb'}",
                           "set logger.wandb.mode (or WANDB_MODE) to offline, or leave the logger out with ~logger.wandb"):
            self.run = _start_wandb(self.wandb, mode, project=project, entity=entity, id=run_id,
                                    name=self.run_dir.name, group=Path(sweep_dir).name if sweep_dir else None,
                                    job_type=job_type, dir=str(self.run_dir))
            self.run.config.update(hparams or {}, allow_val_change=True)
        _write_record(self.run_dir / WANDB_RUN_FILE, {"id": run_id, "project": project, "entity": entity, "mode": mode})
        self.exit_code = 0
        self.ended = False

    def _log(self, data: dict[str, Any], step: int) -> None:
        if self.ended:  # interrupted, and training went on
            self.run.summary.update({"status": "running", "reason": ""})
            self.ended = False
        self.run.log(data, step=step)

    def log_metrics(self, metrics, step):
        self._log(dict(metrics), step)

    def log_images(self, tag, images, captions, step):
        import torch

        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        self._log({tag: [self.wandb.Image(image, caption=caption) for image, caption in zip(pixels, captions)]}, step)

    def log_figure(self, tag, figure, step):
        self._log({tag: self.wandb.Image(figure)}, step)

    def log_histograms(self, tensors, step):
        self._log({tag: self.wandb.Histogram(tensor.detach().float().cpu().numpy()) for tag, tensor in tensors.items()},
                  step)

    def log_summary(self, summary, step):
        self.run.summary.update(summary)

    def set_status(self, status, reason):
        if status == "interrupted":
            # if the process is killed now, W&B shows the run as preempted rather than crashed
            self.run.mark_preempting()
        self.run.summary.update({"status": status, "reason": reason or ""})
        self.exit_code = 0 if status in ("completed", "pruned") else 1
        self.ended = True

    def close(self):
        self.run.finish(exit_code=self.exit_code)

    @staticmethod
    def log_sweep(sweep_dir: str | Path, summary: dict[str, Any]) -> str:
        """A run of its own in the sweep's group (job type `sweep`), in SWEEP_DIR/wandb/: the sweep's
        definition as config, the ranked table as a W&B Table, report.png, and the best value, best
        trial and status counts in its summary. W&B's runs table sorted by best/<metric> gives the
        report's order."""
        wandb = _import_wandb()
        sweep_dir = Path(sweep_dir)
        trials = [record for trial in summary["trials"]
                  if (record := _read_record(Path(trial["run_dir"]) / WANDB_RUN_FILE)) is not None]
        if not trials:
            raise RuntimeError(f"no trial of {sweep_dir} logged to W&B (no trial folder holds {WANDB_RUN_FILE}); "
                               f"run the sweep with the wandb logger, e.g. logger=[tensorboard,wandb]")
        settings = trials[0]
        record = _read_record(sweep_dir / WANDB_RUN_FILE)
        run_id = record["id"] if record is not None else uuid.uuid4().hex[:16]
        with _store_errors(f"W&B ({settings['mode']}) in {sweep_dir / 'wandb'}", "check that the sweep folder "
                           "can be written, or set WANDB_MODE=offline"):
            run = _start_wandb(wandb, settings["mode"], project=settings["project"], entity=settings["entity"],
                               id=run_id, name=summary["name"], group=summary["name"], job_type="sweep",
                               dir=str(sweep_dir))
            run.config.update(summary["params"], allow_val_change=True)
            data = {"ranking": wandb.Table(columns=summary["table"]["columns"], data=summary["table"]["rows"])}
            data.update({Path(path).stem: wandb.Image(path) for path in summary["files"] if path.endswith(".png")})
            run.log(data)
            best = summary["best"]
            run.summary.update({f"trials/{status}": count for status, count in summary["counts"].items()})
            if best is not None:
                run.summary.update({f"best/{summary['metric']}": best["value"], "best/epoch": best["epoch"],
                                    "best_trial": best["name"]})
            run.finish()
        _write_record(sweep_dir / WANDB_RUN_FILE, {**settings, "id": run_id})
        return f"W&B run {run_id} ({settings['mode']}) in {sweep_dir / 'wandb'}"


def _import_wandb():
    # runs go unattended: no banner, and no crash reports sent to W&B's servers
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    import wandb

    return wandb


def _start_wandb(wandb, mode: str, **init):
    """wandb.init that never prompts: online mode without a login is an error, not a question."""
    if mode == "online" and not wandb.login(prompt=False):
        raise TrackerError("W&B online mode needs a login and none is set up: run `wandb login` once or set "
                           "WANDB_API_KEY; or log offline (logger.wandb.mode=offline) and `wandb sync` later")
    settings = wandb.Settings(mode=mode, silent=True, console="off")
    # create_new: each logger holds its own run and never touches the global wandb.run of another
    return wandb.init(**init, resume="allow", reinit="create_new", settings=settings)
