"""Experiment loggers: the runner hands each one scalars, hparams, images, figures, histograms and text.

One module per tracker (tensorboard, csv_logs, console, mlflow, wandb) over what they share: the
interface and the steps not logged yet (base), the files kept beside a run (records) and the picture
of an image grid (image_grid). Imports nothing of the runner's; a tracker's library is imported only
when its logger is built, so naming a logger in a config costs nothing until a run starts.

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

from components.loggers.base import FreshSteps, Logger, TrackerError
from components.loggers.console import ConsoleLogger
from components.loggers.csv_logs import CSVLogger
from components.loggers.mlflow import MLflowLogger
from components.loggers.tensorboard import TensorBoardLogger
from components.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "ConsoleLogger", "FreshSteps", "Logger", "MLflowLogger", "TensorBoardLogger", "TrackerError",
           "WandbLogger"]
