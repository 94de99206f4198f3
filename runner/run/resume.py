"""Resuming a run whose schedule changed length: the scheduler rebuilt for the new length continues
where the saved one had got to (runner.config.resume says which changes a resume allows)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def continue_scheduler(scheduler, state: dict[str, Any]) -> None:
    """Put a scheduler built for the new length where the saved one had got to.

    The step count (epochs or optimizer steps) carries over; the learning rate becomes the new
    schedule's value at that count. One-cycle over more epochs: the cycle is stretched to the new
    total, so the rate jumps to the stretched curve's value at the steps done (a longer warm-up is
    already past, the annealing is slower). Cosine with T_max = max_epochs: the rate continues
    from the new cosine's value at the epochs done, decaying to eta_min at the new end.
    """
    scheduler.last_epoch = state["last_epoch"]
    scheduler._step_count = state["_step_count"]
    if hasattr(scheduler, "_get_closed_form_lr"):
        rates = scheduler._get_closed_form_lr()
    else:
        # get_lr() warns when called outside step(); here it is the step's own computation
        scheduler._get_lr_called_within_step = True
        try:
            rates = scheduler.get_lr()
        finally:
            scheduler._get_lr_called_within_step = False
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    log.info("scheduler rebuilt for the new length, continuing at step %d: lr %s", scheduler.last_epoch,
             ", ".join(f"{r:.4g}" for r in scheduler._last_lr))
