"""The callback of one PBT trial (conf/pbt/async.yaml): at each perturbation point it records its
objective, decides (runner.sweep.pbt.records), and on an exploit takes over the donor's checkpoint
and trains on with the explored values, extending its lineage (runner.sweep.pbt.policy)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.config.pbt import explore, parse_mutations, settings_problems
from runner.config.problems import bullets
from runner.errors import ConfigError, TrialFailed
from runner.files import link_or_copy
from runner.results import BEST_CHECKPOINT
from runner.run.callbacks import Callback
from runner.sweep.pbt.live_values import apply_values, check_live_keys, current_values, resumed_config, value_text
from runner.sweep.pbt.policy import previous_attempt, write_policy
from runner.sweep.pbt.records import Population, checkpoint_name, digest, population_config

log = logging.getLogger(__name__)

# the trial's name among the run's callbacks: where a checkpoint holds its state, a donor's too
CALLBACK_NAME = "pbt"


class PopulationBasedTraining(Callback):
    """PBT for one trial of a sweep (conf/pbt/async.yaml): record, decide, exploit and explore."""

    needs_sweep = True

    def __init__(self, *, cfg: DictConfig, sweep_dir: Path | str, trial: str, mutations: Any,
                 perturbation_interval: int = 2, burn_in: int = 0, quantile_fraction: float = 0.25,
                 resample_probability: float = 0.25, perturbation_factors: Any = (0.8, 1.2)) -> None:
        problems = settings_problems(perturbation_interval, burn_in, quantile_fraction, resample_probability,
                                     perturbation_factors)
        if problems:
            raise ConfigError(bullets(problems))
        self.spaces = parse_mutations(mutations, cfg)
        self.keys = sorted(self.spaces)
        self.interval, self.burn_in = perturbation_interval, burn_in
        self.resample_probability = resample_probability
        self.factors = tuple(float(f) for f in perturbation_factors)
        self.metric = cfg.objective.metric
        self.run_dir = Path(sweep_dir) / trial
        self.trial = trial
        self.config = population_config(cfg, self.keys)
        self.population = Population(Path(sweep_dir), trial, cfg.objective.goal, digest(self.config),
                                     quantile_fraction, cfg.trainer.seed)
        # restored from a checkpoint, or set when a fresh run starts
        self.attempt: str | None = None
        self.values: dict[str, Any] | None = None
        self.policy: list[dict[str, Any]] | None = None

    def resumed_config(self, cfg: DictConfig, saved_yaml: str) -> DictConfig:
        return resumed_config(cfg, saved_yaml, self.keys)

    def is_point(self, epoch: int, max_epochs: int) -> bool:
        """A perturbation point: every `perturbation_interval` epochs from `burn_in` on, before the last epoch."""
        return epoch % self.interval == 0 and epoch >= self.burn_in and epoch < max_epochs

    def on_fit_start(self, fit):
        check_live_keys(fit, self.keys)
        if self.policy is not None:
            return  # resumed
        self.attempt = previous_attempt(self.run_dir, self.trial) or uuid.uuid4().hex
        self.values = current_values(fit.cfg, self.keys)
        self.policy = [{"event": "start", "epoch": 0, "trial": self.trial, "attempt": self.attempt,
                        "values": self.values, "mutations": self.keys, "config": self.config}]
        write_policy(self.run_dir, self.policy)

    def on_epoch_end(self, fit, metrics):
        epoch = fit.progress.epoch
        if fit.stop is not None or not fit.evaluated or not self.is_point(epoch, fit.trainer.max_epochs):
            return None
        record = self.population.recorded(epoch, self.attempt)
        if record is None:
            own = fit.checkpoints / checkpoint_name(epoch)
            fit.save(own.name)
            record = self.population.record(
                epoch=epoch, attempt=self.attempt, value=float(metrics[self.metric]), values=dict(self.values),
                checkpoint=own,
                choose_new=lambda values, rng: explore(values, self.spaces, rng, self.factors,
                                                       self.resample_probability))
        else:
            log.info("PBT epoch %d: decided before (%s), applying that decision", epoch, record["decision"])
        if record["decision"] == "exploit":
            self._exploit(fit, record)
        else:
            log.info("PBT epoch %d: %s=%s, %s", epoch, self.metric, value_text(record["value"]), record["reason"])
        return None

    def _exploit(self, fit, record: dict[str, Any]) -> None:
        from runner.run import checkpoint

        epoch = record["epoch"]
        if fit.is_best:
            # best.pt is this trial's own best: its weights before they are replaced (the checkpoint
            # of this perturbation point holds exactly them)
            link_or_copy(fit.checkpoints / checkpoint_name(epoch), fit.checkpoints / BEST_CHECKPOINT)
            fit.is_best = False
        path = self.population.sweep_dir / record["donor_checkpoint"]
        if not path.is_file():
            raise TrialFailed(f"PBT: the donor checkpoint {path} of the exploit recorded at epoch {epoch} is gone; "
                              f"start this trial over with trainer.resume=never")
        state = checkpoint.load(path)
        donor = state["callbacks"][CALLBACK_NAME]
        fit.take_over(state)
        apply_values(fit, record["new"], donor["values"])
        old, self.values = self.values, dict(record["new"])
        self.policy = [*donor["policy"], {
            "event": "exploit", "epoch": epoch, "trial": self.trial, "attempt": self.attempt,
            "donor": record["donor"], "value": record["value"], "donor_value": record["donor_value"],
            "old": old, "copied": donor["values"], "new": self.values}]
        write_policy(self.run_dir, self.policy)
        changes = ", ".join(f"{k} {value_text(donor['values'].get(k))} -> {value_text(v)}"
                            for k, v in self.values.items())
        log.info("PBT epoch %d: %s=%s, %s (%s=%s); now %s", epoch, self.metric, value_text(record["value"]),
                 record["reason"], self.metric, value_text(record["donor_value"]), changes)

    def state_dict(self):
        return {"attempt": self.attempt, "values": self.values, "policy": self.policy}

    def load_state_dict(self, state):
        self.attempt, self.values, self.policy = state["attempt"], state["values"], state["policy"]
