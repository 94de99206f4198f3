"""The stopping rules: the objective's threshold, early stopping, the time budget, and the sweep's pruner."""

from __future__ import annotations

from runner.run.callbacks.base import Callback, Stop


class ObjectiveThreshold(Callback):
    """Stop once the objective reaches `threshold` in its goal's direction (Ray Tune's `stop`)."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def on_epoch_end(self, fit, metrics):
        if fit.evaluated:
            value = metrics[fit.objective.metric]
            if fit.objective.reached(value, self.threshold):
                return Stop(f"{fit.objective.metric}={value:.4g} reached trainer.stop.objective_threshold={self.threshold}")
        return None


class EarlyStopping(Callback):
    """Stop when the objective has not improved by more than `min_delta` for `patience` evaluations."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta
        self.reference: float | None = None  # the last value that counted as an improvement
        self.evals_without_improvement = 0

    def on_epoch_end(self, fit, metrics):
        if not fit.evaluated:
            return None
        value = metrics[fit.objective.metric]
        if fit.objective.better(value, self.reference, self.min_delta):
            self.reference, self.evals_without_improvement = value, 0
        else:
            self.evals_without_improvement += 1
        if self.evals_without_improvement >= self.patience:
            return Stop(f"early stopping: {fit.objective.metric} did not improve for {self.patience} evaluations")
        return None

    def state_dict(self):
        return {"reference": self.reference, "evals_without_improvement": self.evals_without_improvement}

    def load_state_dict(self, state):
        self.reference, self.evals_without_improvement = state["reference"], state["evals_without_improvement"]


class TimeBudget(Callback):
    """Stop once training has taken `seconds` (summed over resumed attempts)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_epoch_end(self, fit, metrics):
        if fit.progress.train_seconds >= self.seconds:
            return Stop(f"time budget trainer.stop.time_budget_s={self.seconds} used up")
        return None


class Pruning(Callback):
    """Report the objective to the sweep's pruner (runner.sweep.pruning) after every evaluation; stop if it says so."""

    def __init__(self, pruner):
        self.pruner = pruner

    def on_epoch_end(self, fit, metrics):
        # a run already stopping records no rung: its value is no sign of how it would go on
        if not fit.evaluated or fit.stop is not None:
            return None
        decision = self.pruner.report(fit.progress.epoch, metrics[fit.objective.metric])
        return Stop(decision.reason, "pruned") if decision.stop else None
