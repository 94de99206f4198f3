"""A trial pool that runs nothing, for sweeps whose point is the sweeper's bookkeeping, not training."""

from __future__ import annotations

import math

from hydra.core.utils import JobReturn, JobStatus

from launchers.pools import Finished, TrialPool


class ScriptedPool(TrialPool):
    """Runs nothing: a trial 'returns' a value made from its overrides (best at optimizer.lr = 10^-2.5,
    plus model.dropout where a trial has one), and trials end in the order `pick` chooses among those
    running (0: the oldest first, -1: the newest first)."""

    capacity = 2

    def __init__(self, pick: int = 0):
        self.running: list[tuple[int, list[str]]] = []
        self.pick = pick

    def describe(self) -> str:
        return "scripted"

    def submit(self, number, overrides):
        self.running.append((number, list(overrides)))

    def wait(self, timeout):
        if not self.running:
            return []
        number, overrides = self.running.pop(self.pick)
        keys = dict(override.split("=", 1) for override in overrides)
        ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
        ret.return_value = -abs(math.log10(float(keys["optimizer.lr"])) + 2.5) + float(keys.get("model.dropout", 0))
        return [Finished(number, overrides, ret)]
