"""Turn a folder of benchmark results (``run.py``'s JSON files) into a Markdown report with plots.

    python benchmarks/report.py benchmarks/results/ml100k --out benchmarks/results/ml100k/REPORT.md

The report has one table per task, dataset and protocol (best first), warm (P1) against cold-start
(P2) rating side by side, and three PNG plots next to it: accuracy against trainable parameters,
throughput per method, and learning curves. Runs of one task, dataset and protocol that differ in
``data.train_fraction`` (the sparse suite) also get a "Sparse data" section: the headline metric
per fraction of the training ratings and model, and a plot of it (``<report>_sparse.png``). A
``speed_*.json`` of ``benchmarks/speed.py`` in the results folder or its parent (the seed-style
baseline) gets its own section.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftrec.tasks import BENCHMARK_SCHEMA, TASKS

SCHEMA = BENCHMARK_SCHEMA
PROTOCOLS = {"p1": "P1, random split", "p2": "P2, cold-start items", "p3": "P3, leave-one-out, full ranking"}
NA = "\u2013"  # an en dash: a value that was not measured
TASK_TITLES = {name: task.title for name, task in TASKS.items()}


@dataclass(frozen=True)
class Metric:
    """A column of a task's table: the key in the results, its title, and which way is better."""

    key: str
    title: str
    lower_is_better: bool


def metrics_of(task: str, k: int = 10) -> list[Metric]:
    """The task's metrics (``peftrec.tasks``), headline first."""
    return [Metric(m.key.format(k=k), m.label.format(k=k), not m.higher_is_better) for m in TASKS[task].reported]


# -- reading results ---------------------------------------------------------------------------


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every ``run.py`` record in ``folder`` (other JSON files are ignored), by name."""
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if isinstance(record, dict) and record.get("schema") == SCHEMA:
            records.append(record)
    return records


def speed_files(folder: Path) -> list[Path]:
    """Seed-style baseline results of ``benchmarks/speed.py`` in ``folder`` or its parent."""
    return sorted({p.resolve() for d in (folder, folder.parent) for p in d.glob("speed_*.json")})


def dataset_name(record: dict[str, Any]) -> str:
    data = record["config"]["data"]
    if data["dataset"] == "files":
        return Path(data["interactions"]).parent.name or "files"
    return data["dataset"]


def backbone_name(record: dict[str, Any]) -> str:
    name = record["backbone"]
    return Path(name).name if "/" in name and Path(name).is_absolute() else name


def ranking_k(record: dict[str, Any]) -> int:
    return record["config"].get("ranking", {}).get("k", 10)


def headline(record: dict[str, Any]) -> tuple[str, float]:
    """``(split, value)`` of the headline metric: test when the run has it, else validation."""
    key = metrics_of(record["task"], ranking_k(record))[0].key
    if key in record["test"]:
        return "test", record["test"][key]
    return "valid", record["valid"][key]


def group_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return record["task"], dataset_name(record), record["protocol"]


def group_title(key: tuple[str, str, str]) -> str:
    task, dataset, protocol = key
    return f"{TASK_TITLES[task]}: {dataset}, {PROTOCOLS.get(protocol, protocol)}"


def group_phrase(key: tuple[str, str, str]) -> str:
    """The group inside a sentence: "rating on ml-100k P1 (random split)"."""
    task, dataset, protocol = key
    name, _, detail = PROTOCOLS.get(protocol, protocol).partition(", ")
    return f"{task} on {dataset} {name}" + (f" ({detail})" if detail else "")


def label_of(record: dict[str, Any]) -> str:
    """The run's label, which says "random init" when the backbone's weights were not the
    pretrained ones (``backbone.init: random``)."""
    label = record["label"]
    random = record["config"].get("backbone", {}).get("init") == "random"
    return f"{label}, random init" if random and "random" not in label.lower() else label


def display_name(record: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The method's label, with the backbone when the results hold several backbones."""
    if len({r["backbone"] for r in records if r["status"] == "ok"}) > 1:
        return f"{label_of(record)} ({backbone_name(record)})"
    return label_of(record)


def train_fraction(record: dict[str, Any]) -> float:
    """The fraction of the training ratings the run trained on (``data.train_fraction``)."""
    return record["config"]["data"].get("train_fraction", 1.0)


def fmt_fraction(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def several_fractions(records: list[dict[str, Any]]) -> bool:
    return len({train_fraction(r) for r in records if r["status"] == "ok"}) > 1


def run_name(record: dict[str, Any], records: list[dict[str, Any]], name: str | None = None) -> str:
    """``name`` (default: ``display_name``), with the fraction of the training ratings when the
    runs differ in it."""
    name = name or display_name(record, records)
    return f"{name}, {fmt_fraction(train_fraction(record))}" if several_fractions(records) else name


def grouped(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Successful records by (task, dataset, protocol), each group sorted best first (the runs on
    the most training ratings first, when they differ in ``data.train_fraction``)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in records:
        if record["status"] == "ok":
            groups.setdefault(group_key(record), []).append(record)
    for key, members in groups.items():
        lower = metrics_of(key[0])[0].lower_is_better
        members.sort(key=lambda r: (-train_fraction(r), headline(r)[1] if lower else -headline(r)[1]))
    return dict(sorted(groups.items(), key=lambda item: (item[0][0] != "rating", item[0][1], item[0][2])))


# -- formatting --------------------------------------------------------------------------------


def fmt_int(n: float | None) -> str:
    return NA if n is None else f"{round(n):,}"


def fmt_si(n: float | None, unit: str = "") -> str:
    """1234567 -> 1.23M: for quantities whose size matters more than their last digit."""
    if n is None or not math.isfinite(n):
        return NA
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return NA
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            value = n / scale
            return f"{value:.3g} {suffix}" if value < 1000 else f"{value:.0f} {suffix}"  # not 1.01e+03
    return f"{n:.0f} B"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return NA
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {round(s % 60):02d} s"
    return f"{int(s // 3600)} h {round(s % 3600 / 60):02d} min"


def fmt_percent(x: float) -> str:
    return f"{x:.1f}%" if x >= 10 else f"{x:.2f}%" if x >= 1 else f"{x:.2g}%"


def fmt_metric(value: float | None) -> str:
    return NA if value is None else f"{value:.4f}"


def table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A Markdown table; ``align`` holds one of ``l``/``r`` per column."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


# -- the report's parts ------------------------------------------------------------------------


def task_table(members: list[dict[str, Any]]) -> str:
    """One row per experiment, best first; the best headline value in bold. A backbone column
    only when the table holds several backbones (else the section title names it), a train
    fraction column (and the best of each fraction in bold) only when the runs differ in it."""
    task, k = members[0]["task"], ranking_k(members[0])
    metrics = metrics_of(task, k)
    several = len({r["backbone"] for r in members}) > 1
    fractions = several_fractions(members)
    arrow = "↓" if metrics[0].lower_is_better else "↑"
    header = ["method", *(["backbone"] if several else []), *(["train fraction"] if fractions else []),
              f"{metrics[0].title} {arrow}",
              *(m.title for m in metrics[1:]), "on", f"valid {metrics[0].title}", "trainable params", "% of all",
              "adapter + head", "train ratings/s", "serving scores/s", "peak memory", "wall time"]
    rows = []
    for rank, r in enumerate(members):
        split, value = headline(r)
        best = fmt_metric(value)
        first = rank == 0 or train_fraction(members[rank - 1]) != train_fraction(r)  # sorted by fraction first
        rows.append([
            label_of(r), *([backbone_name(r)] if several else []),
            *([fmt_fraction(train_fraction(r))] if fractions else []), f"**{best}**" if first else best,
            *(fmt_metric(r[split].get(m.key)) for m in metrics[1:]), split,
            fmt_metric(r["valid"].get(metrics[0].key)), fmt_int(r["parameters"]["trainable"]),
            fmt_percent(r["parameters"]["trainable_percent"]), fmt_bytes(r["adapter_bytes"]),
            fmt_si(r["train"]["ratings_per_second"]), fmt_si(r["inference"]["scores_per_second"]),
            fmt_bytes(r["peak_memory_mib"] * 2**20), fmt_seconds(r["wall_seconds"]),
        ])
    return table(header, rows, "l" + "l" * several + "r" * fractions + "r" * len(metrics) + "l" + "r" * 8)


def section_title(key: tuple[str, str, str], members: list[dict[str, Any]]) -> str:
    backbones = sorted({backbone_name(r) for r in members})
    return group_title(key) + (f" ({backbones[0]})" if len(backbones) == 1 else "")


def warm_cold_table(groups: dict[tuple[str, str, str], list[dict[str, Any]]]) -> str | None:
    """Test RMSE on P1 (warm items) next to P2 (cold-start items), per dataset and method."""
    sections = []
    for dataset in sorted({d for (task, d, _) in groups if task == "rating"}):
        warm, cold = groups.get(("rating", dataset, "p1"), []), groups.get(("rating", dataset, "p2"), [])
        if not (warm and cold):
            continue
        by_label = {(run_name(r, warm + cold, label_of(r)), backbone_name(r)): {"p1": headline(r)} for r in warm}
        for r in cold:
            by_label.setdefault((run_name(r, warm + cold, label_of(r)), backbone_name(r)), {})["p2"] = headline(r)
        rows = []
        for (label, backbone), found in sorted(by_label.items(), key=lambda kv: kv[1].get("p1", ("", math.inf))[1]):
            cells = [f"{found[p][1]:.4f} ({found[p][0]})" if p in found else NA for p in ("p1", "p2")]
            rows.append([label, backbone, *cells])
        sections.append(f"**{dataset}**\n\n" + table(["method", "backbone", "P1 RMSE (warm items)",
                                                      "P2 RMSE (cold-start items)"], rows, "llrr"))
    return "\n\n".join(sections) or None


def summary(groups: dict[tuple[str, str, str], list[dict[str, Any]]], records: list[dict[str, Any]]) -> str:
    """One paragraph: the best method per table, what it costs, and the caveats."""
    ok = [r for r in records if r["status"] == "ok"]
    sentences = []
    if ok and all(r.get("synthetic") for r in ok):
        sentences.append("These runs use tiny models and toy data (the quick suite): they check that every "
                         "method trains, saves, loads and is measured; their numbers say nothing about the "
                         "methods.")
    for key, members in groups.items():
        metric = metrics_of(key[0], ranking_k(members[0]))[0]
        best = members[0]
        split, value = headline(best)
        most = f" with {fmt_fraction(train_fraction(best))} of the training ratings" if several_fractions(members) else ""
        text = (f"On {group_phrase(key)}{most}, {label_of(best)} ({backbone_name(best)}) has the best {split} "
                f"{metric.title}, {value:.4f}, training {fmt_int(best['parameters']['trainable'])} parameters "
                f"({fmt_percent(best['parameters']['trainable_percent'])} of the model)")
        fewest = min((r for r in members if train_fraction(r) == train_fraction(best)),
                     key=lambda r: r["parameters"]["trainable"])
        if fewest is not best:
            text += (f"; {label_of(fewest)}, with the fewest ({fmt_int(fewest['parameters']['trainable'])}), "
                     f"scores {headline(fewest)[1]:.4f}")
        sentences.append(text + ".")
    rates = [r for r in ok if r["train"]["ratings_per_second"]]
    if len(rates) > 1:
        slow = min(rates, key=lambda r: r["train"]["ratings_per_second"])
        fast = max(rates, key=lambda r: r["train"]["ratings_per_second"])
        sentences.append(f"Training throughput ranges from {fmt_si(slow['train']['ratings_per_second'])} ratings/s "
                         f"({label_of(slow)}, {slow['task']}) to {fmt_si(fast['train']['ratings_per_second'])} "
                         f"({label_of(fast)}, {fast['task']}).")
    if ok:
        seeds = sorted({r["seed"] for r in ok})
        sentences.append(f"Every number comes from one run with seed {', '.join(map(str, seeds))}, so small "
                         "differences between methods may be noise.")
    failed = [r["name"] for r in records if r["status"] != "ok"]
    if failed:
        sentences.append(f"{len(failed)} experiment(s) failed and are listed at the end: {', '.join(failed)}.")
    return " ".join(sentences)


def setup(records: list[dict[str, Any]]) -> str:
    """Hardware, software, commit, seeds and what the columns mean."""
    first = records[0]
    hw, versions = first["hardware"], first["versions"]
    commits = sorted({(r["git"]["commit"] or "unknown")[:10] for r in records})
    dirty = any(r["git"]["dirty"] for r in records)
    gpus = ", ".join(hw["gpus"]) or "no GPU"
    threads = sorted({r["hardware"]["torch_threads"] for r in records})
    loads = [r["load_average"][w] for r in records if "load_average" in r for w in ("before", "after")]
    processes = sorted({r["train"]["num_processes"] for r in records if r["status"] == "ok"})
    seeds = sorted({r["seed"] for r in records if r["status"] == "ok"})
    lines = [
        f"- **Hardware**: {hw['cpu']}, {hw['usable_cores']} usable of {hw['logical_cores']} logical cores, "
        f"{', '.join(map(str, threads))} torch thread(s), {hw['memory_gib']} GiB RAM, {gpus}; "
        f"{', '.join(map(str, processes))} training process(es) per run, fp32.",
        f"- **Software**: Python {versions['python']}, " + ", ".join(
            f"{name} {versions.get(name)}" for name in ("torch", "transformers", "peft", "accelerate", "datasets")),
        f"- **Code**: commit {', '.join(commits)}" + (" with uncommitted changes (see `git.changed` in the JSON)"
                                                      if dirty else "") + f"; seed {', '.join(map(str, seeds))}.",
        "- **Metrics**: each run keeps the weights of its best validation epoch and scores the test split "
        "once; the *on* column says which split the headline number is from.",
        "- **Columns**: *trainable params* are every parameter that trains (adapter, prompt/prefix, towers "
        "and head); *% of all* is of every parameter of the loaded model; *adapter + head* is the size of "
        "`model/adapter/` and `model/head.safetensors`; *train ratings/s* is training ratings per epoch over "
        "the median epoch time; *serving scores/s* is user-item scores per second of `Recommender.score_all()` "
        "with the catalogue encoded (median of repeats); *peak memory* is the training process's "
        f"{'maximum RSS' if first.get('peak_memory_kind', 'cpu_max_rss') == 'cpu_max_rss' else 'peak GPU memory'}"
        "; *wall time* is the whole recipe run, start-up and saving included.",
    ]
    if loads and max(loads) > hw["usable_cores"]:
        lines.append(f"- **Load**: the machine was shared (load average {min(loads):.1f} to {max(loads):.1f} on "
                     f"{hw['usable_cores']} cores), so times and throughputs are pessimistic and noisy.")
    return "\n".join(lines)


def speed_section(files: list[Path], base: Path) -> str:
    """The seed-style baseline of ``benchmarks/speed.py``: ratings/s of one LM pass per rating
    against peftrec's, per method, with a link to its own report (any other JSON: its values)."""
    if not files:
        return ("Not measured here: `benchmarks/speed.py` compares seed-style training (one LM pass per "
                "rating) with peftrec's; its `speed_*.json` in this folder or its parent appears here.")
    parts = []
    for path in files:
        results = json.loads(path.read_text())
        own = path.with_suffix(".md")
        source = f"[`{own.name}`]({relative_link(own, base)})" if own.is_file() else \
            f"[`{path.name}`]({relative_link(path, base)})"
        methods = results.get("methods") if isinstance(results, dict) else None
        try:
            rows = [[m, fmt_si(r["seed_style"]["ratings_per_second"]), fmt_si(r["peftrec"]["ratings_per_second"]),
                     f"{r['ratios']['ratings_per_second']:.1f}x"] for m, r in methods.items()]
            body = table(["method", "seed-style ratings/s", "peftrec ratings/s", "speed-up"], rows, "lrrr")
        except (AttributeError, KeyError, TypeError):  # another layout: its values as they are
            body = table(["measure", "value"], [[f"`{k}`", v] for k, v in flatten(results)][:40], "lr")
        env = results.get("environment", {}) if isinstance(results, dict) else {}
        about = ", ".join(str(env[k]) for k in ("model", "data") if env.get(k))
        parts.append(f"From {source}" + (f" ({about})" if about else "") + ":\n\n" + body)
    return "\n\n".join(parts)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Numeric and text leaves of a JSON value as ``(dotted.key, text)``."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in flatten(v, f"{prefix}[{i}]")]
    if isinstance(value, float):
        return [(prefix, f"{value:.4g}")]
    return [(prefix, str(value))]


def relative_link(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return "../" + path.name if path.parent.resolve() == base.resolve().parent else str(path)


# -- sparse data -------------------------------------------------------------------------------


SPARSE_PLOT = "Accuracy against the fraction of training ratings"


def sparse_groups(groups: dict[tuple[str, str, str], list[dict[str, Any]]]) -> dict[tuple[str, str, str], list]:
    """The groups whose runs differ in ``data.train_fraction``."""
    return {key: members for key, members in groups.items() if several_fractions(members)}


def by_fraction(members: list[dict[str, Any]], records: list[dict[str, Any]]
                ) -> tuple[list[str], dict[float, dict[str, list[dict[str, Any]]]]]:
    """The models (those run on the most fractions first, then the best on the most training
    ratings) and, per fraction (smallest first), each model's runs (several when, say, seeds differ)."""
    runs: dict[float, dict[str, list[dict[str, Any]]]] = {}
    for r in sorted(members, key=train_fraction):
        runs.setdefault(train_fraction(r), {}).setdefault(display_name(r, records), []).append(r)
    models = list(dict.fromkeys(display_name(r, records) for r in members))  # members are sorted best first
    models.sort(key=lambda model: -sum(model in found for found in runs.values()))  # a stable sort
    return models, runs


def cold_items(record: dict[str, Any], metric: Metric) -> tuple[float | None, int | None]:
    """The headline metric on the test ratings of items without a training rating, and their
    number (None when the recipe did not report them or there were none)."""
    test = record["test"]
    return test.get(f"{metric.key}_cold_items"), test.get("count_cold_items", test.get("n_cold_items"))


def has_cold_items(members: list[dict[str, Any]], metric: Metric) -> bool:
    return any(cold_items(r, metric)[0] is not None for r in members)


def sparse_table(members: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """Rows: fractions of the training ratings (and how many ratings that is); columns: models;
    cells: the headline metric, the best of each row in bold, and the cold-item part if known."""
    metric = metrics_of(members[0]["task"], ranking_k(members[0]))[0]
    cold = has_cold_items(members, metric)
    models, runs = by_fraction(members, records)
    pick = min if metric.lower_is_better else max
    rows = []
    for fraction, found in runs.items():
        row_runs = [r for rs in found.values() for r in rs]
        best = pick(headline(r)[1] for r in row_runs)
        row = [fmt_fraction(fraction), " / ".join(fmt_int(n) for n in sorted(
            {r["train"]["ratings_per_epoch"] for r in row_runs}))]
        if cold:
            row.append(" / ".join(sorted({fmt_int(n) for r in row_runs if (n := cold_items(r, metric)[1]) is not None}))
                       or NA)
        for model in models:
            cells = []
            for r in found.get(model, []):
                split, value = headline(r)
                text = fmt_metric(value) + ("" if split == "test" else " (valid)")
                text = f"**{text}**" if value == best and len(row_runs) > 1 else text
                if cold and (cold_value := cold_items(r, metric)[0]) is not None:
                    text += f" (cold {fmt_metric(cold_value)})"
                cells.append(text)
            row.append(" / ".join(cells) or NA)
        rows.append(row)
    header = ["train fraction", "training ratings", *(["test ratings of cold items"] if cold else []), *models]
    return table(header, rows, "r" * len(header))


def sparse_section(groups: dict[tuple[str, str, str], list[dict[str, Any]]], records: list[dict[str, Any]],
                   plot: Path | None, base: Path) -> str:
    """What a model gains from more training ratings: a paragraph, a table per group and the plot."""
    ok = [r for r in records if r["status"] == "ok"]
    parts = []
    for key, members in sparse_groups(groups).items():
        metric = metrics_of(key[0], ranking_k(members[0]))[0]
        _, runs = by_fraction(members, ok)
        pick = min if metric.lower_is_better else max
        about = [f"**{group_title(key)}.** Each run trains on a random subset of the training ratings "
                 "(`data.train_fraction`, drawn with `data.seed`) and is scored on the full validation and "
                 f"test splits. Cells: {headline(members[0])[0]} {metric.title} "
                 f"({'lower' if metric.lower_is_better else 'higher'} is better), the best of each row in bold"]
        if has_cold_items(members, metric):
            about.append(f"; *cold*: the {metric.title} on the test ratings of items without a training rating "
                         "at that fraction")
        for fraction in (min(runs), max(runs)):
            best = pick((r for rs in runs[fraction].values() for r in rs), key=lambda r: headline(r)[1])
            about.append(f". With {fmt_fraction(fraction)} of the training ratings "
                         f"({fmt_int(best['train']['ratings_per_epoch'])}) {display_name(best, ok)} is best, "
                         f"{headline(best)[1]:.4f}")
        parts += ["".join(about) + ".", sparse_table(members, ok)]
    if plot is not None:
        parts.append(f"![{SPARSE_PLOT}]({relative_link(plot, base)})")
    return "\n\n".join(parts)


def sparse_plot(plt, groups, records, colors):
    """The headline metric against the fraction of training ratings (log x), one line per model;
    a second panel with the cold-item part where the runs report it."""
    sparse = sparse_groups(groups)
    panels_of = [(key, members, metric, part) for key, members in sparse.items()
                 for metric in [metrics_of(key[0], ranking_k(members[0]))[0]]
                 for part in ("all", "cold")[:1 + has_cold_items(members, metric)]]
    fig, axes = panels(plt, len(panels_of))
    for ax, (key, members, metric, part) in zip(axes, panels_of, strict=False):
        models, runs = by_fraction(members, records)
        palette = {model: plt.get_cmap("tab10")(i % 10) for i, model in enumerate(models)}
        for model in models:
            points = []
            for fraction, found in runs.items():
                values = [headline(r)[1] if part == "all" else cold_items(r, metric)[0] for r in found.get(model, [])]
                values = [v for v in values if v is not None]
                if values:
                    points.append((fraction, sum(values) / len(values)))  # several runs: their mean
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=5, label=model, color=palette[model])
        ax.set_xscale("log")
        ticks = list(runs)
        ratings = [min(r["train"]["ratings_per_epoch"] for rs in runs[f].values() for r in rs) for f in ticks]
        ax.set_xticks(ticks, [f"{fmt_fraction(f)}\n{fmt_si(n)}" for f, n in zip(ticks, ratings, strict=True)])
        ax.minorticks_off()
        ax.set_xlim(min(ticks) / 1.4, max(ticks) * 1.4)  # the same in both panels, even with one point
        ax.set_xlabel("fraction of the training ratings (log scale), and their number")
        split = headline(members[0])[0]
        ax.set_ylabel(f"{split} {metric.title}" + (", cold items" if part == "cold" else "")
                      + f" ({'lower' if metric.lower_is_better else 'higher'} is better)")
        ax.set_title(group_title(key) + (": items without training ratings" if part == "cold" else ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# -- plots -------------------------------------------------------------------------------------


def plot_all(groups: dict[tuple[str, str, str], list[dict[str, Any]]], records: list[dict[str, Any]],
             stem: Path) -> dict[str, Path]:
    """The three PNG plots (four with a sparse-data study), named ``<stem>_<plot>.png``; their
    paths by title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    names = sorted({display_name(r, ok) for r in ok})
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}  # one colour per method
    plots = {"Accuracy against trainable parameters": (accuracy_plot, "accuracy_vs_params"),
             "Throughput per method": (throughput_plot, "throughput"),
             "Learning curves (validation, per epoch)": (curves_plot, "learning_curves")}
    if sparse_groups(groups):
        plots[SPARSE_PLOT] = (sparse_plot, "sparse")
    written = {}
    for title, (draw, name) in plots.items():
        fig = draw(plt, groups, ok, colors)
        path = stem.with_name(f"{stem.name}_{name}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written[title] = path
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
        for r in members:
            x, y = r["parameters"]["trainable"], headline(r)[1]
            ax.scatter(x, y, s=40, color=colors[display_name(r, records)], zorder=3)
            ax.annotate(run_name(r, records), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
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
        ("serving user-item scores/s (score_all)", lambda r: r["inference"]["scores_per_second"])]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(rows) + 1.4), sharey=True, squeeze=False)
    for ax, (title, value) in zip(axes.flat, measures, strict=True):
        for y, r in enumerate(rows):
            v = value(r)
            if v:
                ax.scatter(v, y, s=40, color=colors[display_name(r, records)], zorder=3)
                ax.annotate(fmt_si(v), (v, y), textcoords="offset points", xytext=(6, -3), fontsize=7)
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
        for r in members:
            points = [(h["epoch"], h[f"valid_{metric.key}"]) for h in r["history"] if f"valid_{metric.key}" in h]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=run_name(r, records),
                        color=colors[display_name(r, records)])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (0: after the head warm-up)")
        ax.set_ylabel(f"validation {metric.title} ({'lower' if metric.lower_is_better else 'higher'} is better)")
        ax.set_title(group_title(key), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# -- the report --------------------------------------------------------------------------------


def render(records: list[dict[str, Any]], plots: dict[str, Path], speed: list[Path], base: Path) -> str:
    groups = grouped(records)
    parts = ["# peftrec benchmark report", summary(groups, records), "## Setup", setup(records)]
    for key, members in groups.items():
        parts += [f"## {section_title(key, members)}", task_table(members)]
    warm_cold = warm_cold_table(groups)
    if warm_cold:
        parts += ["## Warm (P1) against cold-start items (P2)", warm_cold]
    if sparse_groups(groups):
        parts += ["## Sparse data", sparse_section(groups, records, plots.get(SPARSE_PLOT), base)]
    others = {title: path for title, path in plots.items() if title != SPARSE_PLOT}
    if others:
        parts.append("## Plots")
        parts += [f"![{title}]({relative_link(path, base)})" for title, path in others.items()]
    parts += ["## Seed-style baseline (benchmarks/speed.py)", speed_section(speed, base)]
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        parts.append("## Failed experiments")
        parts.append("\n".join(f"- `{r['name']}` ({r['experiment']['file']}): exit status {r.get('returncode')}, "
                               f"log `{r['log']}`; last line: `{(r.get('log_tail') or [''])[-1].strip()}`"
                               for r in failed))
    parts += ["## Experiments", "Each JSON holds the full command, the resolved config and the per-epoch history.",
              table(["experiment", "file", "recipe", "base config", "overrides"],
                    [experiment_row(r) for r in records], "lllll")]
    return "\n\n".join(parts) + "\n"


def experiment_row(record: dict[str, Any]) -> list[str]:
    spec = record["experiment"]
    overrides = [f"`{k}={json.dumps(v)}`" for k, v in spec["overrides"].items()]
    if spec.get("defaults"):
        overrides.insert(0, f"shared: `{spec['defaults']}`")
    return [f"`{record['name']}`", f"`{spec['file']}`", f"`recipes/train_{record['task']}.py`",
            f"`{spec['config']}`", ", ".join(overrides) or NA]


def write_report(results: Path, out: Path, plots: bool = True) -> Path:
    """Write the Markdown report of the results in ``results`` to ``out``, plots next to it."""
    records = load_results(results)
    if not records:
        raise ValueError(f"{results}: no benchmark results (run.py's *.json) found")
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent
    pngs = plot_all(grouped(records), records, out.with_suffix("")) if plots and grouped(records) else {}
    speed = speed_files(results) if not all(r.get("synthetic") for r in records) else []
    out.write_text(render(records, pngs, speed, base))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="folder of run.py's JSON results")
    parser.add_argument("--out", type=Path, help="the Markdown file (default: RESULTS/REPORT.md)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.results, args.out or args.results / "REPORT.md", plots=not args.no_plots)
    except ValueError as error:
        parser.error(str(error))
    print(f"report: {written}")


if __name__ == "__main__":
    main()
