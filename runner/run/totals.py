"""An epoch's totals: its loss sum, sample count and metrics, accumulated on the device, reduced over
the ranks once at the epoch's end, and kept as plain data in a mid-epoch checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from runner.run.distributed import Ranks


def batch_size_of(target: Any) -> int:
    """Samples in a batch, from its target (a tensor, or a tuple or dict of them)."""
    if isinstance(target, torch.Tensor):
        return len(target)
    first = next(iter(target.values() if isinstance(target, dict) else target))
    return batch_size_of(first)


@dataclass
class EpochTotals:
    """An epoch's loss sum, sample count and metrics, accumulated on the device so steps need not synchronise."""

    loss: torch.Tensor
    metrics: Any  # the task's MetricCollection for this split
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def zeros(cls, metrics, device: torch.device) -> "EpochTotals":
        metrics.reset()
        return cls(torch.zeros((), dtype=torch.float64, device=device), metrics)

    def add(self, task, output: Any, target: Any, loss: torch.Tensor) -> None:
        n = batch_size_of(target)
        self.loss.add_(loss.detach(), alpha=n)  # one kernel; the same float64 sum as .double() * n
        task.update_metrics(self.metrics, output, target)
        self.seen += n

    def compute(self, split: str, ranks: Ranks) -> dict[str, float]:
        """The epoch's values under `<split>/<name>`, over every rank's samples; waits for the device once.

        Also sets `seen` to the samples of every rank."""
        sums = ranks.sum(torch.stack([self.loss, torch.tensor(float(self.seen), dtype=torch.float64,
                                                                device=self.loss.device)]))
        loss, self.seen = sums.tolist()[0], int(sums[1].item())
        out = {f"{split}/loss": loss / max(self.seen, 1)}
        if self.seen:  # torchmetrics reduces the metric states across the ranks
            out.update({f"{split}/{name}": float(value) for name, value in self.metrics.compute().items()})
        return out

    def state(self) -> dict[str, Any]:
        """Plain data for a mid-epoch checkpoint: the sums, and each metric's states and update count."""
        metrics = {}
        for name, metric in self.metrics.items():
            metric.persistent(True)
            metrics[name] = {"states": metric.state_dict(), "updates": metric._update_count}
        return {"loss": self.loss.cpu(), "seen": self.seen, "seconds": self.seconds, "metrics": metrics}

    @classmethod
    def from_state(cls, state: dict[str, Any], metrics, device: torch.device) -> "EpochTotals":
        metrics.reset()
        for name, metric in metrics.items():
            metric.persistent(True)
            metric.load_state_dict(state["metrics"][name]["states"])
            # torchmetrics counts updates to warn of a compute() before any: the restored ones count
            metric._update_count = state["metrics"][name]["updates"]
        return cls(state["loss"].to(device), metrics.to(device), state["seen"], state["seconds"])
