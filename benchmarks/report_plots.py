"""The benchmark report's PNG plots (matplotlib, imported only when plots are drawn). A
configuration run with several seeds is one point (their mean, with their std as an error bar)
and one line per seed in the learning curves."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import save_figure
from benchmarks.report_results import (
    SPARSE_PLOT,
    by_fraction,
    cold_items,
    display_name,
    fmt_fraction,
    fmt_si,
    group_title,
    has_cold_items,
    headline,
    metrics_of,
    ranking_k,
    run_name,
    sparse_groups,
    values_of,
)


def plot_all(
    groups: dict[tuple[str, str, str], list[dict[str, Any]]],
    records: list[dict[str, Any]],
    stem: Path,
) -> dict[str, Path]:
    """The three PNG plots (four with a sparse-data study), named ``<stem>_<plot>.png``; their
    paths by title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    names = sorted({display_name(r, ok) for r in ok})
    colors = {
        name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)
    }  # one colour per method
    plots = {
        "Accuracy against trainable parameters": (accuracy_plot, "accuracy_vs_params"),
        "Throughput per method": (throughput_plot, "throughput"),
        "Learning curves (validation, per epoch)": (curves_plot, "learning_curves"),
    }
    if sparse_groups(groups):
        plots[SPARSE_PLOT] = (sparse_plot, "sparse")
    written = {}
    for title, (draw, name) in plots.items():
        path = stem.with_name(f"{stem.name}_{name}.png")
        written[title] = save_figure(draw(plt, groups, ok, colors), path, 110, bbox_inches="tight")
    return written


def panels(plt, count: int, width: float = 5.2, height: float = 3.8):
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def si_axis(axis, values: list[float]) -> None:
    """Tick labels such as 10k, 1M on a log axis; minor ticks labelled too when the values span
    less than about a decade (else there may be no labelled tick at all)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    label = FuncFormatter(lambda x, _: fmt_si(x))
    axis.set_major_formatter(label)
    if values and max(values) < 20 * min(values):
        axis.set_minor_locator(LogLocator(base=10, subs=(2, 3, 5)))
        axis.set_minor_formatter(label)
        axis.set_tick_params(which="minor", labelsize=7)
    else:
        axis.set_minor_formatter(NullFormatter())


def accuracy_plot(plt, groups, records, colors):
    fig, axes = panels(plt, len(groups))
    for ax, (key, members) in zip(axes, groups.items(), strict=False):
        metric = metrics_of(key[0], ranking_k(members[0]))[0]
        for r in members:  # a configuration run with several seeds: their mean, ± their std
            x, (split, y) = r["parameters"]["trainable"], headline(r)
            color = colors[display_name(r, records)]
            ax.scatter(x, y, s=40, color=color, zorder=3)
            if len(values := values_of(r, split, metric.key)) > 1:
                ax.errorbar(x, y, yerr=np.std(values), color=color, capsize=3, zorder=2)
            ax.annotate(
                run_name(r, records), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
        ax.set_xscale("log")
        si_axis(ax.xaxis, [r["parameters"]["trainable"] for r in members])
        ax.margins(x=0.15, y=0.12)
        ax.set_xlabel("trainable parameters (log scale)")
        better = "lower" if metric.lower_is_better else "higher"
        ax.set_ylabel(f"{headline(members[0])[0]} {metric.title} ({better} is better)")
        ax.set_title(group_title(key), fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def throughput_plot(plt, groups, records, colors):
    """Dots on a log axis (bars would start at an arbitrary point), each labelled with its value."""
    rows = [r for members in groups.values() for r in members]
    names = [f"{run_name(r, records)} · {r['task']} {r['protocol'].upper()}" for r in rows]
    measures: list[tuple[str, Callable[[dict[str, Any]], float | None]]] = [
        ("training ratings/s", lambda r: r["train"]["ratings_per_second"]),
        ("serving user-item scores/s (score_all)", lambda r: r["inference"]["scores_per_second"]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(rows) + 1.4), sharey=True, squeeze=False)
    for ax, (title, value) in zip(axes.flat, measures, strict=True):
        for y, r in enumerate(rows):
            v = value(r)
            if v:
                ax.scatter(v, y, s=40, color=colors[display_name(r, records)], zorder=3)
                ax.annotate(
                    fmt_si(v), (v, y), textcoords="offset points", xytext=(6, -3), fontsize=7
                )
        ax.set_yticks(range(len(rows)), names, fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xscale("log")
        si_axis(ax.xaxis, [v for r in rows if (v := value(r))])
        ax.margins(x=0.2)
        ax.set_xlabel(f"{title} (log scale)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def curves_plot(plt, groups, records, colors):
    from matplotlib.ticker import MaxNLocator

    fig, axes = panels(plt, len(groups))
    for ax, (key, members) in zip(axes, groups.items(), strict=False):
        metric = metrics_of(key[0], ranking_k(members[0]))[0]
        for r in members:  # a configuration run with several seeds: a curve per seed
            for seed, run in enumerate(r.get("runs", [r])):
                points = [
                    (h["epoch"], h[f"valid_{metric.key}"])
                    for h in run["history"]
                    if f"valid_{metric.key}" in h
                ]
                if points:
                    ax.plot(
                        *zip(*points, strict=True),
                        marker="o",
                        markersize=3,
                        label=None if seed else run_name(r, records),
                        color=colors[display_name(r, records)],
                    )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (0: after the head warm-up)")
        better = "lower" if metric.lower_is_better else "higher"
        ax.set_ylabel(f"validation {metric.title} ({better} is better)")
        ax.set_title(group_title(key), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sparse_plot(plt, groups, records, colors):
    """The headline metric against the fraction of training ratings (log x), one line per model;
    a second panel with the cold-item part where the runs report it."""
    sparse = sparse_groups(groups)
    panels_of = [
        (key, members, metric, part)
        for key, members in sparse.items()
        for metric in [metrics_of(key[0], ranking_k(members[0]))[0]]
        for part in ("all", "cold")[: 1 + has_cold_items(members, metric)]
    ]
    fig, axes = panels(plt, len(panels_of))
    for ax, (key, members, metric, part) in zip(axes, panels_of, strict=False):
        models, runs = by_fraction(members, records)
        palette = {model: plt.get_cmap("tab10")(i % 10) for i, model in enumerate(models)}
        for model in models:
            points = []
            for fraction, found in runs.items():
                values = [
                    headline(r)[1] if part == "all" else cold_items(r, metric)[0]
                    for r in found.get(model, [])
                ]
                values = [v for v in values if v is not None]
                if values:
                    points.append((fraction, sum(values) / len(values)))  # several runs: their mean
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    marker="o",
                    markersize=5,
                    label=model,
                    color=palette[model],
                )
        ax.set_xscale("log")
        ticks = list(runs)
        ratings = [
            min(r["train"]["ratings_per_epoch"] for rs in runs[f].values() for r in rs)
            for f in ticks
        ]
        ax.set_xticks(
            ticks, [f"{fmt_fraction(f)}\n{fmt_si(n)}" for f, n in zip(ticks, ratings, strict=True)]
        )
        ax.minorticks_off()
        ax.set_xlim(
            min(ticks) / 1.4, max(ticks) * 1.4
        )  # the same in both panels, even with one point
        ax.set_xlabel("fraction of the training ratings (log scale), and their number")
        split = headline(members[0])[0]
        ax.set_ylabel(
            f"{split} {metric.title}"
            + (", cold items" if part == "cold" else "")
            + f" ({'lower' if metric.lower_is_better else 'higher'} is better)"
        )
        ax.set_title(
            group_title(key) + (": items without training ratings" if part == "cold" else ""),
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
