"""The report's plots, as PNG bytes.

They are drawn on matplotlib's object API (`Figure`, never pyplot), so no backend is chosen and no
global state is touched: it works headless, in threads, and beside other matplotlib users. Every
style setting is explicit on the axes for the same reason (rcParams are global).
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FormatStrFormatter, LogLocator, NullFormatter, StrMethodFormatter

DPI = 120
TRAIN_COLOR, VAL_COLOR, BEST_COLOR = "#1f77b4", "#d62728", "#d62728"
STATUS_COLORS = {"TERMINATED": "#1f77b4", "EARLY_STOPPED": "#ff7f0e", "ERROR": "#7f7f7f"}
OTHER_TRIAL_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
SMOOTH_FROM_POINTS = 50  # fewer logged points read fine unsmoothed
METRIC_LABELS = {"loss": "train loss (nats/token)", "val_loss": "val loss (nats/token)", "val_ppl": "val perplexity",
                 "val_bpb": "val bits/byte"}


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Steps and values of the records that logged `key`."""
    pairs = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _figure(width: float = 8.0, height: float = 4.5) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _decorate(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=13, fontweight="bold", loc="left")
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _log_y_if_wide(ax, values: list[float]) -> None:
    """A log scale once values span more than 3x (a loss falling from ~ln(vocab) to its floor), so
    the late, small improvements stay visible; plain numbers as tick labels, not powers of ten."""
    values = [v for v in values if math.isfinite(v)]  # a diverged trial logs inf or NaN
    if values and min(values) > 0 and max(values) / min(values) > 3:
        ax.set_yscale("log")
        within_a_decade = max(values) / min(values) < 10
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 4, 5, 6, 8) if within_a_decade else (1, 2, 5)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _smoothed(values: list[float]) -> np.ndarray:
    """A centred moving average over 1/25 of the points: the trend of a noisy training loss,
    without the lag (and the start-up bias) of an exponential average."""
    half = len(values) // 50
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    positions = np.arange(len(values))
    low, high = np.maximum(positions - half, 0), np.minimum(positions + half + 1, len(values))
    return (cumulative[high] - cumulative[low]) / (high - low)


def _tokens_axis(ax, records: list[dict]) -> None:
    """Tokens seen on a top axis, as a linear map of steps (tokens per step is fixed in a run):
    steps compare runs of one config, tokens compare runs with different batch sizes."""
    steps, tokens = series(records, "tokens")
    if len(steps) < 2 or steps[-1] == steps[0] or tokens[-1] <= tokens[0]:
        return
    rate = (tokens[-1] - tokens[0]) / (steps[-1] - steps[0])
    offset = tokens[0] - rate * steps[0]
    top = ax.secondary_xaxis("top", functions=(lambda s: offset + rate * s, lambda t: (t - offset) / rate))
    top.set_xlabel("tokens seen", fontsize=11)
    top.tick_params(labelsize=10)
    top.xaxis.set_major_formatter(EngFormatter(sep=""))


def loss_plot(records: list[dict]) -> bytes:
    steps, losses = series(records, "loss")
    eval_steps, val_losses = series(records, "val_loss")
    figure = _figure()
    ax = figure.add_subplot()
    _decorate(ax, "Loss", "step", "loss (nats/token)")
    if len(steps) >= SMOOTH_FROM_POINTS:
        ax.plot(steps, losses, color=TRAIN_COLOR, alpha=0.3, linewidth=1, label="train")
        ax.plot(steps, _smoothed(losses), color=TRAIN_COLOR, linewidth=2, label="train (smoothed)")
    else:
        ax.plot(steps, losses, color=TRAIN_COLOR, linewidth=1.8, label="train")
    if eval_steps:
        ax.plot(eval_steps, val_losses, "o-", color=VAL_COLOR, linewidth=1.8, markersize=5, label="val")
    _log_y_if_wide(ax, losses + val_losses)
    _tokens_axis(ax, records)
    ax.legend(fontsize=10, frameon=False)
    return _png(figure)


def _step_plot(records: list[dict], key: str, title: str, ylabel: str, formatter, color: str = TRAIN_COLOR,
               markers: bool = False, from_zero: bool = False) -> bytes:
    """One logged quantity against the step."""
    steps, values = series(records, key)
    figure = _figure(8.0, 3.6)
    ax = figure.add_subplot()
    _decorate(ax, title, "step", ylabel)
    ax.plot(steps, values, "o-" if markers else "-", color=color, linewidth=1.8, markersize=5)
    ax.yaxis.set_major_formatter(formatter)
    if from_zero:
        ax.set_ylim(bottom=0)
    return _png(figure)


def lr_plot(records: list[dict]) -> bytes:
    return _step_plot(records, "lr", "Learning rate", "learning rate", StrMethodFormatter("{x:.1e}"), from_zero=True)


def throughput_plot(records: list[dict]) -> bytes:
    return _step_plot(records, "tokens_per_s", "Training throughput", "tokens/s (all workers)", EngFormatter(sep=""),
                      from_zero=True)


def val_bpb_plot(records: list[dict]) -> bytes:
    return _step_plot(records, "val_bpb", "Validation bits per byte", "bits/byte", StrMethodFormatter("{x:.3g}"),
                      color=VAL_COLOR, markers=True)


def sweep_curves_plot(trials: list[tuple[str, list[dict]]], best: str, best_label: str, metric: str) -> bytes:
    """Every trial's `metric` (and train loss, in a second panel) against the step, the best trial
    drawn thick in red over the others and named with its params in the legend."""
    keys = [metric] if metric == "loss" else [metric, "loss"]
    figure = _figure(6.0 * len(keys), 5.0)
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        label = METRIC_LABELS.get(key, key)
        _decorate(ax, f"{label.split(' (')[0].capitalize()} per trial", "step", label)
        every_value = []
        for i, (name, records) in enumerate(sorted(trials, key=lambda t: t[0] == best)):
            steps, values = series(records, key)
            every_value += values
            if name == best:
                ax.plot(steps, values, "-", color=BEST_COLOR, linewidth=3, zorder=3, label=best_label)
            else:
                color = OTHER_TRIAL_COLORS[i % len(OTHER_TRIAL_COLORS)]
                ax.plot(steps, values, "-", color=color, linewidth=1.2, alpha=0.6, label=name)
        _log_y_if_wide(ax, every_value)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles[::-1], labels[::-1], loc="outside lower center", ncols=min(4, len(labels)),
                  fontsize=9, frameon=False)
    return _png(figure)


def sweep_final_plot(trials: list[dict], best: str, metric: str, mode: str) -> bytes:
    """Each scored trial's final `metric` as a dot, best first (at the top), coloured by how the
    trial ended. Dots, not bars: bars from zero would flatten the differences between losses."""
    scored = sorted((t for t in trials if t["metric"] is not None),
                    key=lambda t: t["metric"], reverse=mode == "max")
    figure = _figure(8.0, max(2.8, 1.6 + 0.4 * len(scored)))
    ax = figure.add_subplot()
    better = "lower" if mode == "min" else "higher"
    _decorate(ax, f"Final {metric} per trial", f"{METRIC_LABELS.get(metric, metric)}, {better} is better", "")
    positions = range(len(scored))[::-1]
    for y, trial in zip(positions, scored):
        is_best = trial["name"] == best
        ax.scatter(trial["metric"], y, s=180 if is_best else 60, marker="*" if is_best else "o", zorder=3,
                   color=BEST_COLOR if is_best else STATUS_COLORS.get(trial["status"], "#7f7f7f"))
        ax.annotate(f"{trial['metric']:.4f}", (trial["metric"], y), xytext=(9, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.set_yticks(list(positions), [t["name"] + (" (best)" if t["name"] == best else "") for t in scored])
    ax.margins(x=0.15, y=0.2)
    for status in sorted({t["status"] for t in scored} & STATUS_COLORS.keys()):
        ax.scatter([], [], s=60, color=STATUS_COLORS[status], label=status.lower().replace("_", " "))
    figure.legend(loc="outside lower center", ncols=len(STATUS_COLORS), fontsize=9, frameon=False)
    return _png(figure)


def drop_reasons_plot(dropped: dict[str, int], dropped_bytes: dict[str, int]) -> bytes:
    """Documents dropped per reason as horizontal bars, the most first, each labelled with its
    documents and megabytes."""
    reasons = sorted(dropped, key=dropped.get)
    figure = _figure(8.0, max(2.4, 1.2 + 0.38 * len(reasons)))
    ax = figure.add_subplot()
    _decorate(ax, "Documents dropped, by reason", "documents", "")
    ax.barh(reasons, [dropped[r] for r in reasons], color=VAL_COLOR, alpha=0.8)
    for y, reason in enumerate(reasons):
        ax.annotate(f"{dropped[reason]:,} ({dropped_bytes.get(reason, 0) / 1e6:.2f} MB)", (dropped[reason], y),
                    xytext=(5, 0), textcoords="offset points", va="center", fontsize=9)
    ax.margins(x=0.3)
    return _png(figure)


def document_lengths_plot(tokens: list[int], nbytes: list[int]) -> bytes:
    """Histograms of the kept documents' lengths in tokens and in UTF-8 bytes, on log-spaced bins
    (documents run from a line to a book)."""
    figure = _figure(9.0, 3.8)
    for i, (values, unit) in enumerate(((tokens, "tokens"), (nbytes, "bytes"))):
        ax = figure.add_subplot(1, 2, i + 1)
        _decorate(ax, f"Kept documents, {unit}", f"{unit} per document", "documents" if i == 0 else "")
        positive = [v for v in values if v > 0] or [1]
        bins = np.geomspace(min(positive), max(positive) + 1, 30)
        ax.hist(positive, bins=bins, color=TRAIN_COLOR, alpha=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    return _png(figure)
