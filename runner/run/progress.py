"""Progress within an epoch: a tqdm bar with ETA on a terminal, nothing extra in a log file."""

from __future__ import annotations

import sys


class EpochProgress:
    def __init__(self, epoch: int, max_epochs: int, total_steps: int, done_steps: int = 0, show: bool = True):
        self.bar = None
        if show and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=done_steps, desc=f"epoch {epoch}/{max_epochs}",
                            unit="step", leave=False, dynamic_ncols=True)

    def advance(self, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
