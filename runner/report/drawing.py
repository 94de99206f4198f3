"""report.png: the objective per trial, the top trials' learning curves, the objective per swept number,
with several objectives the Pareto front, and for a PBT sweep its members over epochs with the exploits."""

from __future__ import annotations

import io

from runner.report.parallel import spans_decades
from runner.report.pbt import pbt_records
from runner.report.ranking import Sweep, by_number, describe
from runner.files import write_bytes_atomic

PLOT_FILE = "report.png"
# learning curves of more trials than this turn into an unreadable tangle
CURVES_SHOWN = 5


def draw_report_png(sweep: Sweep) -> None:
    """Objective per trial with best-so-far, the top trials' learning curves, objective per swept number."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    parameters = sweep.numeric_parameters()
    records = pbt_records(sweep)
    # with several objectives: the first against each other one
    fronts = list(range(1, len(sweep.objectives.metrics)))
    panels = 2 + len(fronts) + len(parameters) + bool(records)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    figure = Figure(figsize=(5.2 * columns, 3.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    figure.suptitle(f"{sweep.path.name}: {describe(sweep.objectives)}")
    _draw_objective_per_trial(axes[0], sweep)
    _draw_learning_curves(axes[1], sweep)
    for ax in axes[:2]:
        # trial numbers and epochs are whole
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, other in zip(axes[2:], fronts):
        _draw_front(ax, sweep, other)
    for ax, key in zip(axes[2 + len(fronts):], parameters):
        _draw_objective_against(ax, sweep, key)
    if records:
        _draw_pbt(axes[2 + len(fronts) + len(parameters)], sweep, records)
    for ax in axes[panels:]:
        ax.set_visible(False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(sweep.path / PLOT_FILE, buffer.getvalue())


def _mark_best(ax, x, y) -> None:
    ax.scatter([x], [y], s=220, marker="*", color="crimson", zorder=5, label="best")


def _say_no_values(ax) -> None:
    ax.text(0.5, 0.5, "no objective values yet", ha="center", va="center", transform=ax.transAxes, color="gray")


def _draw_objective_per_trial(ax, sweep: Sweep) -> None:
    ax.set_title("objective per trial")
    ax.set_xlabel("trial number")
    ax.set_ylabel(sweep.metric)
    valued = sorted((t for t in sweep.trials if t.ranked and t.number is not None), key=by_number)
    if not valued:
        _say_no_values(ax)
        return
    ax.scatter([t.number for t in valued], [t.value for t in valued], color="tab:blue", label="trial")
    pick = max if sweep.goal == "maximize" else min
    best_so_far = []
    for trial in valued:
        best_so_far.append(trial.value if not best_so_far else pick(best_so_far[-1], trial.value))
    ax.step([t.number for t in valued], best_so_far, where="post", color="tab:orange", label="best so far")
    if sweep.best and sweep.best.number is not None:
        _mark_best(ax, sweep.best.number, sweep.best.value)
    ax.legend(fontsize=8)


def _draw_learning_curves(ax, sweep: Sweep) -> None:
    ax.set_title(f"learning curves, top {CURVES_SHOWN}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(sweep.metric)
    top = [t for t in sweep.trials if t.ranked][:CURVES_SHOWN]
    if not top:
        _say_no_values(ax)
        return
    for trial in top:
        points = [(row["epoch"], row[sweep.metric]) for row in trial.history if row.get(sweep.metric) is not None]
        is_best = trial is sweep.best
        ax.plot(
            [epoch for epoch, _ in points],
            [value for _, value in points],
            marker="o",
            markersize=3,
            linewidth=2.5 if is_best else 1.2,
            label=f"#{trial.number}" + (" (best)" if is_best else ""),
        )
    if sweep.best.best_epoch is not None:
        _mark_best(ax, sweep.best.best_epoch, sweep.best.value)
    ax.legend(fontsize=8)


def _draw_front(ax, sweep: Sweep, other: int) -> None:
    """Every ranked trial by the first objective and another; the Pareto front's members joined, trials
    that break a constraint crossed out."""
    metrics = sweep.objectives.metrics
    ax.set_title(f"Pareto front: {metrics[0]} vs {metrics[other]}")
    ax.set_xlabel(f"{metrics[other]} ({sweep.objectives.goals[other]})")
    ax.set_ylabel(f"{metrics[0]} ({sweep.objectives.goals[0]})")
    points = {t.name: sweep.values(t) for t in sweep.trials if t.ranked}
    points = {name: (v[other], v[0]) for name, v in points.items() if v[0] is not None and v[other] is not None}
    if not points:
        _say_no_values(ax)
        return
    kept = [xy for name, xy in points.items() if name not in sweep.broken and sweep.fronts.get(name) != 1]
    broken = [xy for name, xy in points.items() if name in sweep.broken]
    front = sorted(points[t.name] for t in sweep.front if t.name in points)
    if kept:
        ax.scatter(*zip(*kept), color="tab:blue", alpha=0.7, label="trial")
    if broken:
        ax.scatter(*zip(*broken), color="gray", marker="x", label="breaks a constraint")
    if front:
        ax.plot(*zip(*front), color="crimson", marker="*", markersize=12, linewidth=1.2,
                label=f"Pareto front ({len(front)})")
    xs = [x for x, _ in points.values()]
    if min(xs) > 0 and max(xs) / min(xs) >= 100:
        ax.set_xscale("log")
    ax.legend(fontsize=8)


def _draw_objective_against(ax, sweep: Sweep, key: str) -> None:
    ax.set_title(f"objective vs {key}")
    ax.set_xlabel(key)
    ax.set_ylabel(sweep.metric)
    values = sweep.parameters[key]
    points = [(values[t.name], t.value) for t in sweep.trials if t.ranked and t.name in values]
    if not points:
        _say_no_values(ax)
        return
    xs = [x for x, _ in points]
    ax.scatter(xs, [y for _, y in points], color="tab:blue")
    if spans_decades(xs):
        ax.set_xscale("log")
    if sweep.best and sweep.best.name in values:
        _mark_best(ax, values[sweep.best.name], sweep.best.value)
        ax.legend(fontsize=8)


def _draw_pbt(ax, sweep: Sweep, records: list[dict]) -> None:
    """The objective of every member over epochs; each exploit drawn as the jump from the trial's
    value to its donor's at that epoch."""
    ax.set_title("PBT: members over epochs, exploits")
    ax.set_xlabel("epoch")
    ax.set_ylabel(sweep.metric)
    for trial in sorted(sweep.trials, key=by_number):
        points = [(row["epoch"], row[sweep.metric]) for row in trial.history if row.get(sweep.metric) is not None]
        is_best = trial is sweep.best
        ax.plot([e for e, _ in points], [v for _, v in points], linewidth=2.5 if is_best else 0.9,
                alpha=1.0 if is_best else 0.6, color="crimson" if is_best else None)
    jumps = [r for r in records if r.get("decision") == "exploit" and r.get("value") is not None
             and r.get("donor_value") is not None]
    for record in jumps:
        ax.plot([record["epoch"]] * 2, [record["value"], record["donor_value"]], color="gray", linestyle=":",
                linewidth=1)
    if jumps:
        ax.scatter([r["epoch"] for r in jumps], [r["donor_value"] for r in jumps], marker="^", color="black",
                   s=25, zorder=4, label=f"exploit ({len(jumps)})")
    if sweep.best and sweep.best.best_epoch is not None:
        _mark_best(ax, sweep.best.best_epoch, sweep.best.value)
    ax.legend(fontsize=8)
