"""Benchmark: every task's experiment preset on its offline dataset, next to scikit-learn on the same split.

For each preset it runs `python -m runner experiment=<preset>` (the preset's own epochs and settings),
reads the metrics of the best epoch (by the preset's objective) from result.json, and fits the classic
scikit-learn model on the very same standardised training split (the runner's own dataset builders
make it), scored on the same validation split. It prints the table and writes OUT/summary.json;
it asserts nothing.

    python benchmarks/tasks.py                      # every preset
    python benchmarks/tasks.py regression digits    # some of them
    python benchmarks/tasks.py vae_mnist --seed 1   # another trainer.seed

The sequence and generative presets (ctc_digits, language_model, vae_mnist) are printed beside their
plain references instead (benchmarks/sequence_baselines.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.sequence_baselines import SEQUENCE_PRESETS, reference  # noqa: E402

# preset: (dataset builder call, [(a metric reported, what the issue asks of it, the scikit-learn model), ...]);
# a preset runs once and prints a row per metric
PRESETS = {
    "tabular_classification": ("breast_cancer", [("val/acc", ">= 0.97", "LogisticRegression"),
                                                 ("val/auroc", ">= 0.99", "LogisticRegression (predict_proba)")]),
    "digits": ("digits", [("val/acc", ">= 0.96", "LogisticRegression")]),
    "regression": ("diabetes", [("val/r2", ">= 0.30", "LinearRegression")]),
    "multioutput_regression": ("linnerud", [("val/r2", "", "LinearRegression")]),
    "multilabel": ("synthetic_multilabel", [("val/map", "", "one LogisticRegression per label")]),
    "ranking": ("diabetes", [("val/spearman", "", "LinearRegression's predictions, ranked")]),
    "metric_learning": ("digits", [("val/recall_at_1", ">= 0.95", "1-NN on the pixels (cosine, leave-one-out)")]),
}


def load(name: str):
    from components import datasets

    if name == "digits":
        return datasets.sklearn_digits(channels=1, image_size=8, num_classes=10)
    if name == "breast_cancer":
        return datasets.sklearn_classification("breast_cancer", input_dim=30, num_classes=2)
    if name == "diabetes":
        return datasets.sklearn_regression("diabetes", input_dim=10, num_outputs=1)
    if name == "linnerud":
        return datasets.sklearn_regression("linnerud", input_dim=3, num_outputs=3)
    return datasets.sklearn_multilabel(input_dim=20, num_labels=5)


def sklearn_score(name: str, metric: str) -> float:
    """The scikit-learn model of PRESETS on the runner's standardised train split, scored on its val split
    (recall@1: each validation sample's nearest other validation sample, by cosine distance on the
    standardised pixels, is of its class; the runner's metric ranks the same samples by their embeddings)."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import accuracy_score, average_precision_score, r2_score, roc_auc_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import NearestNeighbors

    data = load(name)
    x_train = data.preprocess(data.train.inputs).flatten(1).numpy()
    x_val = data.preprocess(data.val.inputs).flatten(1).numpy()
    y_train, y_val = data.train.targets.numpy(), data.val.targets.numpy()
    if metric == "val/acc":
        model = LogisticRegression(max_iter=5000).fit(x_train, y_train)
        return accuracy_score(y_val, model.predict(x_val))
    if metric == "val/auroc":
        model = LogisticRegression(max_iter=5000).fit(x_train, y_train)
        return roc_auc_score(y_val, model.predict_proba(x_val)[:, 1])
    if metric == "val/recall_at_1":
        # kneighbors() without a query: each point's neighbours other than itself
        nearest = NearestNeighbors(n_neighbors=1, metric="cosine").fit(x_val).kneighbors(return_distance=False)
        return float((y_val[nearest[:, 0]] == y_val).mean())
    if metric == "val/r2":
        return r2_score(y_val, LinearRegression().fit(x_train, y_train).predict(x_val))
    if metric == "val/spearman":
        return float(spearmanr(LinearRegression().fit(x_train, y_train).predict(x_val), y_val).statistic)
    model = OneVsRestClassifier(LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    return average_precision_score(y_val, model.predict_proba(x_val), average="macro")


def run_preset(preset: str, out: Path, seed: int = 0) -> dict:
    run_dir = out / preset
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runner", f"experiment={preset}", f"hydra.run.dir={run_dir}",
                           f"trainer.seed={seed}", "logger=none"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    if done.returncode != 0:
        raise SystemExit(f"experiment={preset} failed:\n{done.stderr[-3000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    return {"wall_s": round(time.monotonic() - started, 1), "epochs": result["epochs"],
            "objective": result["objective"], "best_metrics": result["best_metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", help=f"presets to run, of {', '.join([*PRESETS, *SEQUENCE_PRESETS])} "
                                                   f"(default: all)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs and summary.json")
    parser.add_argument("--seed", type=int, default=0, help="trainer.seed of every run (and of the plain references)")
    args = parser.parse_args()
    unknown = [p for p in args.presets if p not in PRESETS and p not in SEQUENCE_PRESETS]
    if unknown:
        parser.error(f"unknown preset {unknown[0]!r}; use some of: {', '.join([*PRESETS, *SEQUENCE_PRESETS])}")
    out = args.out or REPO / "outputs" / "benchmarks" / "tasks" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in [p for p in args.presets or PRESETS if p in PRESETS]:
        name, reported = PRESETS[preset]
        run = run_preset(preset, out, args.seed)
        for metric, target, baseline in reported:
            rows.append({"preset": preset, "dataset": name, "metric": metric, "runner": run["best_metrics"][metric],
                         "best_epoch": run["objective"]["epoch"], "objective": run["objective"]["metric"],
                         "sklearn": sklearn_score(name, metric), "baseline": baseline, "target": target,
                         "epochs": run["epochs"], "wall_s": run["wall_s"]})
        print(f"{preset}: done in {run['wall_s']} s", file=sys.stderr)
    header = "" if not rows else f"{'experiment':<24}{'metric':<16}{'runner':>8}{'sklearn':>9}  {'target':<8}{'best epoch (by)':<28}{'wall':>7}  baseline"
    if rows:
        print(header)
    for r in rows:
        print(f"{r['preset']:<24}{r['metric']:<16}{r['runner']:>8.3f}{r['sklearn']:>9.3f}  {r['target']:<8}"
              f"{str(r['best_epoch']) + ' of ' + str(r['epochs']) + ' (' + r['objective'] + ')':<28}{r['wall_s']:>6}s  {r['baseline']}")
    rows += sequence_rows([p for p in args.presets or SEQUENCE_PRESETS if p in SEQUENCE_PRESETS], out, args.seed)
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwritten to {out / 'summary.json'}")


def sequence_rows(presets: list[str], out: Path, seed: int = 0) -> list[dict]:
    """The sequence and generative presets beside their plain references (benchmarks/sequence_baselines.py)."""
    rows = []
    for preset in presets:
        metric, name = SEQUENCE_PRESETS[preset]
        run = run_preset(preset, out, seed)
        row = {"preset": preset, "metric": metric, "runner": run["best_metrics"][metric],
               "best_epoch": run["objective"]["epoch"], "epochs": run["epochs"], "wall_s": run["wall_s"],
               "baseline": name, **reference(preset, out / preset, str(REPO / "data"))}
        rows.append(row)
    if rows:
        print(f"\n{'experiment':<16}{'metric':<16}{'runner':>9}{'reference':>11}  {'epochs':<8}{'wall':>7}  reference")
    for r in rows:
        print(f"{r['preset']:<16}{r['metric']:<16}{r['runner']:>9.3f}{r['reference']:>11.3f}  {r['epochs']:<8}"
              f"{r['wall_s']:>6}s  {r['baseline']}")
        if "per_epoch" in r:
            for label, values in r["per_epoch"].items():
                print(f"  {label + ' ' + r['metric'] + ' per epoch:':<44}" + " ".join(f"{v:.1f}" for v in values))
    return rows


if __name__ == "__main__":
    main()
