"""The callback protocol: the hooks a callback may have, and `Stop`, a callback's decision to end the run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stop:
    """A callback's decision to end the run after this epoch: `completed` (a stopping rule) or `pruned`."""

    reason: str
    status: str = "completed"


class Callback:
    """The hooks, each doing nothing; subclass and override what you need."""

    def on_fit_start(self, fit) -> None: ...

    def on_log_step(self, fit, scalars: dict[str, float]) -> None: ...

    def on_eval_batch(self, fit, split: str, inputs: Any, output: Any, target: Any) -> None: ...

    def on_epoch_end(self, fit, metrics: dict[str, float]) -> Stop | str | None: ...

    def on_interrupt(self, fit) -> None: ...

    def on_exception(self, fit, error: BaseException) -> None: ...

    def on_fit_end(self, fit, outcome) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))
