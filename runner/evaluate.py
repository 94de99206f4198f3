"""Evaluate a trained run without training it, and load one into your own code.

    python -m runner.evaluate RUN_DIR [--checkpoint best|last|PATH] [--split val|test] [key=value ...]

rebuilds the run's model from the config stored in its checkpoint, evaluates the checkpoint on a
split of the run's dataset (or of other data: `key=value` overrides change the stored config, as
`dataset.root=/new/data`), prints the metrics and writes them to RUN_DIR/evaluations/<time>.json.
The inputs go through the preprocessing stored with the run, not one recomputed from the data.

    from runner import load_run
    run = load_run("outputs/runs/2026-01-31_14-02-11-123456")   # the best checkpoint, on the CPU
    scores = run.predict(images)                                # preprocessing, then the model

A run folder copied to another machine works too: only the checkpoint is read (plain data, loaded
with weights_only=True), and the model's code must be importable there.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.checks import DEVICE_PATTERN
from runner.errors import CheckpointError, ConfigError, RunnerError
from runner.results import BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT, now, write_json_atomic

SPLITS = ("val", "test")


@dataclass
class LoadedRun:
    """A trained model with what it needs to predict: the config, the stored preprocessing, the task."""

    model: Any  # torch.nn.Module, in eval mode, its weights loaded
    cfg: DictConfig
    preprocess: Any  # raw inputs (a tensor as the dataset stores it) -> model inputs, on the model's device
    task: Any
    checkpoint: Path
    epoch: int
    class_names: list[str] = field(default_factory=list)
    stored_preprocess: Any = None  # the preprocessing object itself (Standardize), or None

    def predict(self, inputs: Any) -> Any:
        """The model's output for raw inputs (a batch), without gradients."""
        import torch

        from runner.run.data import to_device

        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        with torch.inference_mode():
            return self.task.forward(self.model, self.preprocess(to_device(inputs, device)))


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """best | last | a path; refused clearly when there is no such file."""
    path = run_dir / CHECKPOINT_DIR / {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}[which] \
        if which in ("best", "last") else Path(which)
    if not path.is_file():
        hint = ("a run writes checkpoints/best.pt once an epoch was evaluated, and last.pt after each epoch"
                if which in ("best", "last") else "give best, last or the path of a checkpoint file")
        raise CheckpointError(f"there is no checkpoint {path} ({hint})")
    return path


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`key=value`, `+key=value` and `~key` on a stored config, values parsed as on Hydra's command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ConfigError(f"cannot parse the overrides {overrides}: {error}") from error
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for override in parsed:
        key = override.key_or_group
        if override.is_sweep_override() or "/" in key:
            raise ConfigError(f"{override.input_line!r}: evaluate takes key=value overrides of the stored config "
                              f"(dataset.root=..., paths.data_dir=...), not sweeps or config group choices")
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            (OmegaConf.select(cfg, parent) if parent else cfg).pop(leaf, None)
        elif override.is_add() or OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
        else:
            raise ConfigError(f"{key} is not in the run's config: add it with +{key}=..., or check its spelling")
    return cfg


_ABSENT = object()


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu",
             overrides: list[str] = ()) -> LoadedRun:
    """The run's model with the checkpoint's weights, in eval mode, and its preprocessing."""
    import torch
    from hydra.utils import get_object

    from runner.run import checkpoint as checkpoints
    from runner.run.build import build, build_task
    from runner.run.data import Preprocess

    path = checkpoint_path(Path(run_dir), checkpoint)
    state = checkpoints.load(path, remedy="Evaluate another one: --checkpoint best, last or a checkpoint's path.")
    cfg = apply_overrides(OmegaConf.create(state["config"]), list(overrides))
    task = build_task(cfg)
    model = build(cfg.model, "model")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        detail = " ".join(line.strip() for line in str(error).splitlines()[:2])
        raise CheckpointError(f"the checkpoint {path} does not fit model {cfg.model._target_} of the config "
                              f"({detail}); did an override change the model?") from error
    target = torch.device(device)
    model.to(target).eval()
    data = state.get("data") or {}
    stored = data.get("preprocess")
    preprocess = get_object(stored["target"]).from_state_dict(stored["state"]) if stored else None
    return LoadedRun(model=model, cfg=cfg, preprocess=Preprocess.of(preprocess, target, channels_last=False),
                     task=task, checkpoint=path, epoch=state["epoch"], class_names=data.get("class_names") or [],
                     stored_preprocess=preprocess)


def evaluate_run(run_dir: Path, checkpoint: str = "best", split: str = "test", overrides: list[str] = (),
                 device: str = "auto") -> dict[str, Any]:
    """Evaluate a checkpoint of the run on a split of the (possibly overridden) dataset; the record written."""
    from runner.run.build import build
    from runner.config.checks import typed_trainer
    from runner.run.data import make_source
    from runner.run.device import AUTOCAST_DTYPES, resolve_device
    from runner.run.evaluation import evaluate

    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not allowed; use one of: {', '.join(SPLITS)}")
    resolved_device = resolve_device(device)
    run = load_run(run_dir, checkpoint, str(resolved_device), overrides)
    trainer = typed_trainer(run.cfg)
    data = build(run.cfg.dataset, "dataset")
    if getattr(data, split, None) is None:
        raise ConfigError(f"dataset {run.cfg.dataset._target_} has no {split} split; use --split "
                          f"{'val' if split == 'test' else 'test'}")
    data.preprocess = run.stored_preprocess  # new data, the run's own preprocessing
    source = make_source(getattr(data, split), data, resolved_device, trainer, channels_last=False)
    metrics = run.task.new_metrics().to(resolved_device)
    values = evaluate(run.model, run.model, run.task, source, metrics, split, trainer.eval_batch_size,
                      trainer.limit_val_batches, AUTOCAST_DTYPES.get(str(trainer.precision)))
    record = {"checkpoint": str(run.checkpoint), "epoch": run.epoch, "split": split, "overrides": list(overrides),
              "dataset": run.cfg.dataset._target_, "device": str(resolved_device), "evaluated_at": now(),
              "metrics": values}
    out = Path(run_dir) / "evaluations" / f"{datetime.now().strftime('%Y-%m-%d_%H-%M-%S-%f')}.json"
    write_json_atomic(out, record)
    record["written_to"] = str(out)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.evaluate",
        description="Evaluate a trained run's checkpoint without training; print the metrics and write them "
                    "to RUN_DIR/evaluations/<time>.json.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's folder (outputs/runs/<time>)")
    parser.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint's path")
    parser.add_argument("--split", default="test", help="val or test (default: test)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the stored config, e.g. dataset.root=/new/data")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        parser.error(f"run folder {args.run_dir} {'is a file' if args.run_dir.exists() else 'does not exist'}")
    if not DEVICE_PATTERN.match(args.device):
        parser.error(f"--device {args.device!r} is not allowed; use auto, cpu, mps, cuda or cuda:N")
    try:
        record = evaluate_run(args.run_dir, args.checkpoint, args.split, args.overrides, args.device)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{record['checkpoint']} (epoch {record['epoch']}) on the {record['split']} split:")
    for name, value in record["metrics"].items():
        print(f"  {name:<24} {value:.6g}")
    print(f"written to {record['written_to']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
