"""The report's part of Population Based Training: the sweep's perturbation records, the best trial's
schedule and ancestry, and the command that replays it."""

from __future__ import annotations

import shlex
from pathlib import Path

from runner.report.cells import cell_text
from runner.report.ranking import Sweep
from runner.report.trials import Trial


def pbt_records(sweep: Sweep) -> list[dict]:
    """The sweep's PBT records (runner.sweep.pbt's global log), [] for a sweep without PBT."""
    from runner.sweep.pbt.records import read_records

    return read_records(sweep.path)


def pbt_lineage(trial: Trial) -> dict | None:
    """A PBT trial's schedule and ancestry from its policy file, and the command that replays it;
    None for a trial without PBT."""
    from runner.sweep.pbt.policy import POLICY_FILE, read_policy, schedule

    path = trial.path / POLICY_FILE
    if not path.is_file():
        return None
    segments = schedule(read_policy(path))
    return {
        "policy": str(path),
        "schedule": [{"epochs": _epochs_text(s.first, s.last if s.last is not None else trial.epochs),
                      "trained_by": s.trial, "values": s.values} for s in segments],
        "ancestry": [s.trial for s in segments],
        "replay": replay_command(trial, path),
    }


def replay_command(trial: Trial, policy: Path) -> str:
    """The trial's rerun command with its PBT overrides swapped for `pbt=replay pbt.policy=<policy>`,
    run with one intra-op thread."""
    overrides = list(trial.overrides)
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] != "pbt"]
    # quoted for Hydra too: trial folders hold '=' and ','
    quoted = '"' + str(policy).replace('\\', '\\\\').replace('"', '\\"') + '"'
    tail = shlex.join([*kept, "pbt=replay", f"pbt.policy={quoted}"])
    command, given = trial.command, shlex.join(overrides)
    if command and overrides and command.endswith(given):
        replay = command[: len(command) - len(given)] + tail
    elif command and not overrides:
        replay = f"{command} {tail}"
    else:
        replay = f"python -m runner {tail}"
    # the replay reproduces the lineage to the digit only on one thread: more threads sum in another order
    return f"OMP_NUM_THREADS=1 {replay}"


def format_pbt(sweep: Sweep) -> str | None:
    """The PBT part of the printed report: exploits counted, and the best trial's schedule over
    epochs, its ancestry and the replay command. None for a sweep without PBT."""
    records = pbt_records(sweep)
    if not records:
        return None
    exploits = sum(r.get("decision") == "exploit" for r in records)
    lines = [f"PBT: {len(records)} perturbation points recorded, {exploits} exploits (pbt_global.jsonl)"]
    lineage = pbt_lineage(sweep.best) if sweep.best else None
    if lineage is None:
        return "\n".join(lines)
    numbers = {t.name: f"#{t.number}" if t.number is not None else t.name for t in sweep.trials}
    keys = list(lineage["schedule"][0]["values"])
    header = ["epochs", *keys, "trained by"]
    body = [[segment["epochs"], *(_value_text(segment["values"].get(k)) for k in keys),
             numbers.get(segment["trained_by"], segment["trained_by"])] for segment in lineage["schedule"]]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines.append(f"Schedule of the best trial #{sweep.best.number} ({lineage['policy']}):")
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *body]]
    ancestry = [numbers.get(lineage["schedule"][0]["trained_by"], lineage["schedule"][0]["trained_by"])]
    for segment in lineage["schedule"][1:]:
        copied_at = int(segment["epochs"].split("-")[0]) - 1
        ancestry.append(f"{numbers.get(segment['trained_by'], segment['trained_by'])} (copied at epoch {copied_at})")
    lines.append("Ancestry: " + " -> ".join(ancestry))
    lines.append(f"Replay: {lineage['replay']}")
    return "\n".join(lines)


def _epochs_text(first: int, last: int | None) -> str:
    if last is None:
        return f"{first}-"
    return f"{first}-{last}" if last > first else str(first)


def _value_text(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else cell_text(value)
