"""How the loop calls its callbacks: in order, each hook under its own stage of the rank
(runner.run.distributed.Ranks.enter), a failure named by the callback, the first Stop kept."""

from __future__ import annotations

import logging
from typing import Any

from runner.errors import RunnerError
from runner.run.callbacks.base import Callback, Stop

log = logging.getLogger(__name__)


class CallbackFailed(RunnerError):
    """A callback raised: the run fails with the callback's name in the reason."""


class CallbackDispatch:
    """Calls the hooks of `callbacks` (by name, in order) with the running `fit`."""

    def __init__(self, fit, callbacks: dict[str, Any]):
        self.fit, self.callbacks = fit, callbacks
        self.eval_batch_hooks = self.hooked("on_eval_batch")

    def call(self, hook: str, *args) -> None:
        for name, callback in self.callbacks.items():
            self.call_one(name, callback, hook, *args)

    def call_one(self, name: str, callback: Any, hook: str, *args):
        method = getattr(callback, hook, None)
        if method is None:
            return None
        ranks = self.fit.ranks
        stage = ranks.stage
        ranks.enter(f"callback {name} ({hook})")
        try:
            decision = method(self.fit, *args)
        except Exception as error:  # the stage stays the callback's, for the message of a failed collective
            detail = error if isinstance(error, RunnerError) else f"{type(error).__name__}: {error}"
            raise CallbackFailed(f"callback {name} failed in {hook}: {detail}") from error
        ranks.enter(stage)
        return decision

    def call_quietly(self, hook: str, *args) -> None:
        """For hooks that run while the run is already failing: their own errors are logged, not raised."""
        for name, callback in self.callbacks.items():
            method = getattr(callback, hook, None)
            if method is not None:
                try:
                    method(self.fit, *args)
                except Exception:
                    log.exception("callback %s failed in %s", name, hook)

    def epoch_end(self, row: dict[str, Any]) -> None:
        """Ask every callback after an epoch: the first Stop (or reason string) becomes `fit.stop`, which the
        callbacks after it see."""
        fit = self.fit
        for name, callback in self.callbacks.items():
            decision = self.call_one(name, callback, "on_epoch_end", row)
            if fit.stop is None and decision:
                fit.stop = decision if isinstance(decision, Stop) else Stop(str(decision))

    def eval_batch(self, split: str):
        """What the evaluation of `split` calls with each batch, or None when no callback looks at batches."""
        hooked, call_one = self.eval_batch_hooks, self.call_one
        if not hooked:
            return None

        def on_batch(inputs, output, target):
            for name, callback in hooked:
                call_one(name, callback, "on_eval_batch", split, inputs, output, target)

        return on_batch

    def hooked(self, hook: str) -> list:
        """The callbacks that do something in `hook` (called in the hot loop: skip the ones that do not)."""
        return [(name, callback) for name, callback in self.callbacks.items()
                if getattr(type(callback), hook, None) not in (None, getattr(Callback, hook))]
