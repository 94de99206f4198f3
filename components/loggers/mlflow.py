"""MLflow: one run per run in a tracking store, a trial's run the child of its sweep's run."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from filelock import FileLock

from components.loggers.base import FreshSteps, Logger, store_errors
from components.loggers.image_grid import image_grid
from components.loggers.records import read_record, write_record

log = logging.getLogger(__name__)

MLFLOW_RUN_FILE = "mlflow_run.json"
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
        with store_errors(f"the MLflow store {self.uri}", "set logger.mlflow.tracking_uri (or MLFLOW_TRACKING_URI) "
                           "to a store you can write, or leave the logger out with ~logger.mlflow"):
            self.client, experiment_id = _open_mlflow(self.uri, experiment_name)
            self.run_id = self._continue(start_step) or self._create(experiment_id, sweep_dir, choices or {})
            _log_params_once(self.client, self.run_id, hparams or {})

    def _continue(self, start_step: int) -> str | None:
        """The run's id if this resumes the run recorded in the run folder; else None, and the recorded run,
        if it was left running, is marked killed: its attempt never saved a checkpoint to go on from."""
        from mlflow.exceptions import MlflowException

        record = read_record(self.run_dir / MLFLOW_RUN_FILE)
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
        write_record(self.run_dir / MLFLOW_RUN_FILE,
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
        self.log_figure(tag, image_grid(images, captions), step)

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
        record = read_record(sweep_dir / MLFLOW_RUN_FILE)
        if record is None:
            raise RuntimeError(f"no trial of {sweep_dir} logged to MLflow (no {MLFLOW_RUN_FILE} in the sweep folder); "
                               f"run the sweep with the mlflow logger, e.g. logger=[tensorboard,mlflow]")
        uri, run_id = record["tracking_uri"], record["run_id"]
        with store_errors(f"the MLflow store {uri}", "check that the store can be written, or set "
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
                child = read_record(Path(trial["run_dir"]) / MLFLOW_RUN_FILE)
                if child is not None and child["tracking_uri"] == uri and trial["rank"] is not None:
                    client.log_batch(child["run_id"], metrics=[Metric("rank", trial["rank"], now, 0)])
            counts = summary["counts"]
            if counts["running"]:
                client.update_run(run_id, status="RUNNING")
            else:
                client.set_terminated(run_id, "KILLED" if counts["interrupted"] else "FINISHED")
        return f"MLflow run {run_id} in {uri}"


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
        record = read_record(sweep_dir / MLFLOW_RUN_FILE)
        if record is not None and record["tracking_uri"] == uri:
            return record["run_id"]
        run = client.create_run(experiment_id, run_name=sweep_dir.name, tags={"sweep_dir": str(sweep_dir)})
        write_record(sweep_dir / MLFLOW_RUN_FILE,
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
