"""parameters.png: what the swept parameters did, beside report.png. On the left, parallel coordinates:
an axis per swept parameter and one for the objective, a line per trial with a value, coloured by its
objective, the best trial in red; a key swept over decades gets a log axis, text and booleans an axis of
their labelled values, a trial that does not set a key passes the axis at `(absent)`. On the right, each
parameter's importance (runner.report.importance)."""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass

from runner.files import write_bytes_atomic
from runner.report.cells import number_text
from runner.report.importance import METHOD
from runner.report.ranking import Sweep, is_number

PARAMETERS_PLOT_FILE = "parameters.png"
# where a trial that does not set a key crosses that key's axis: below its lowest value
ABSENT_AT = -0.12
NUMBER_TICKS = 5


def spans_decades(values: list[float]) -> bool:
    """Learning rates and weight decays are swept over decades: those get a log axis."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 100


@dataclass(frozen=True)
class Axis:
    """One vertical axis: where each trial crosses it (0 to 1, ABSENT_AT when unset) and its tick labels."""

    label: str
    heights: dict[str, float]
    ticks: list[tuple[float, str]]


def axis_of(label: str, values: dict[str, object], names: list[str]) -> Axis:
    """The axis of one parameter (or the objective) over the trials `names`."""
    present = {name: values[name] for name in names if name in values}
    if all(is_number(v) for v in present.values()):
        heights, ticks = _number_axis(present)
        label += " (log)" if spans_decades(list(present.values())) else ""
    else:
        categories = sorted({str(v) for v in present.values()})
        step = 1 / (len(categories) - 1) if len(categories) > 1 else 0.0
        place = {c: i * step if len(categories) > 1 else 0.5 for i, c in enumerate(categories)}
        heights = {name: place[str(v)] for name, v in present.items()}
        ticks = [(place[c], c) for c in categories]
    if len(present) < len(names):
        heights.update({name: ABSENT_AT for name in names if name not in present})
        ticks.append((ABSENT_AT, "(absent)"))
    return Axis(label, heights, ticks)


def _number_axis(present: dict[str, float]) -> tuple[dict[str, float], list[tuple[float, str]]]:
    log = spans_decades(list(present.values()))
    scale = (lambda v: math.log10(v)) if log else (lambda v: float(v))
    low, high = min(map(scale, present.values())), max(map(scale, present.values()))
    if high == low:
        return {name: 0.5 for name in present}, [(0.5, number_text(next(iter(present.values()))))]
    heights = {name: (scale(v) - low) / (high - low) for name, v in present.items()}
    ticks = []
    for i in range(NUMBER_TICKS):
        at = low + (high - low) * i / (NUMBER_TICKS - 1)
        ticks.append((i / (NUMBER_TICKS - 1), number_text(10**at if log else at)))
    return heights, ticks


def draw_parameters_png(sweep: Sweep) -> None:
    """Parallel coordinates and the importances; no file while the sweep varies no parameter."""
    path = sweep.path / PARAMETERS_PLOT_FILE
    if not sweep.parameters:
        path.unlink(missing_ok=True)
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = 2.0 + 1.6 * (len(sweep.parameters) + 1)
    figure = Figure(figsize=(width + 4.0, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    lines_ax, importance_ax = figure.subplots(1, 2, width_ratios=[width, 4.0])
    figure.suptitle(f"{sweep.path.name}: swept parameters and {sweep.metric} ({sweep.goal})")
    _draw_parallel_coordinates(figure, lines_ax, sweep)
    _draw_importance(importance_ax, sweep)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(path, buffer.getvalue())


def _draw_parallel_coordinates(figure, ax, sweep: Sweep) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    valued = [t for t in sweep.trials if t.ranked]
    best = f", best #{sweep.best.number} in red" if sweep.best is not None else ""
    ax.set_title(f"parallel coordinates, {len(valued)} trials with a value{best}")
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    if not valued:
        ax.text(0.5, 0.5, "no objective values yet", ha="center", va="center", transform=ax.transAxes,
                color="gray")
        return
    names = [t.name for t in valued]
    axes = [axis_of(key, values, names) for key, values in sweep.parameters.items()]
    axes.append(axis_of(sweep.metric, {t.name: t.value for t in valued}, names))
    # brighter is better whichever the goal
    colours = colormaps["viridis" if sweep.goal == "maximize" else "viridis_r"]
    scale = Normalize(min(t.value for t in valued), max(t.value for t in valued))
    xs = range(len(axes))
    # the worst first, so the good trials are drawn on top of them
    for trial in reversed(valued):
        is_best = trial is sweep.best
        ax.plot(xs, [axis.heights[trial.name] for axis in axes], color="crimson" if is_best else colours(
            scale(trial.value)), linewidth=2.8 if is_best else 1.1, alpha=1.0 if is_best else 0.75,
            zorder=5 if is_best else 2)
    for x, axis in zip(xs, axes):
        ax.axvline(x, color="black", linewidth=0.8, zorder=1)
        for height, text in axis.ticks:
            ax.text(x - 0.04, height, text, ha="right", va="center", fontsize=7, zorder=6,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})
    ax.set_xticks(list(xs), [axis.label for axis in axes], fontsize=8)
    ax.set_xlim(-0.7, len(axes) - 0.8)
    ax.set_ylim(ABSENT_AT - 0.06, 1.05)
    figure.colorbar(ScalarMappable(scale, colours), ax=ax, label=sweep.metric, fraction=0.04, pad=0.01)


def _draw_importance(ax, sweep: Sweep) -> None:
    importance = sweep.importance
    ax.set_title(f"importance ({METHOD.split(',')[0]}), {importance.trials} completed trials", fontsize=10)
    if not importance.estimated:
        ax.set_axis_off()
        ax.text(0.5, 0.5, textwrap.fill(f"not estimated: {importance.note}", 36), ha="center", va="center",
                transform=ax.transAxes, color="gray")
        return
    keys = list(importance.shares)[::-1]  # most important on top
    shares = [importance.shares[k] for k in keys]
    ax.barh(keys, shares, color="tab:blue")
    for y, share in enumerate(shares):
        ax.text(share, y, f" {share:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("share of the summed permutation importance", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
