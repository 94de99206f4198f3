"""Turns SIGINT, SIGTERM and SIGUSR2 into a request that the training loop answers at a step boundary.

The loop saves a checkpoint first (`answer_signal`), then hands the signal to whoever handled it before
us: on SLURM that is submitit, which requeues the job (USR2) or ignores the signal (TERM); elsewhere
Ctrl-C becomes KeyboardInterrupt and TERM/USR2 end the process.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class RunInterrupted(BaseException):
    """Raised on every rank of a data-parallel run once the checkpoint of a signal is written: the run
    stops there. Not an Exception: nothing that handles failures treats it as one."""


class Interruption:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "Interruption":
        # signal handlers can only be installed from the main thread (not in a launcher's worker thread)
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the step to end
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the end of this step", signal.Signals(signum).name)

    def hand_over(self) -> None:
        """After the checkpoint is saved: let the previous handler act. Returns only if it chose to go on."""
        signum, self.signum = self.signum, None
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, None)
            return
        if previous == signal.SIG_IGN:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)


def answer_signal(fit, interruption: Interruption, batch_index: int, totals, generator) -> None:
    """What the loop (runner.run.fit) does at the step a signal arrived, on every rank: save the unfinished
    epoch, tell the callbacks, hand the signal on. Returns only if the run goes on."""
    from runner.run import run_state  # torch loads with the loop, not with this module (runner.run.train)

    run_state.save_mid_epoch(fit, batch_index, totals, generator)
    # called before the signal is handed on: on SLURM the job may be killed soon after the hand-over
    fit.hooks.call("on_interrupt")
    # a hand-over that returns (a signal submitit ignores) goes on with the same epoch
    fit.progress.batch_in_epoch, fit.progress.partial, fit.progress.generator_state = 0, None, None
    if fit.ranks.ddp:
        # the checkpoint is written: every rank stops; a spawned rank leaves the signal to
        # the run's own process, a SLURM task hands it to submitit (rank 0 requeues)
        if interruption.requested and not fit.ranks.spawned:
            interruption.hand_over()
        raise RunInterrupted
    interruption.hand_over()
