"""The benchmark report's groundwork: ``run.py``'s records read, named and grouped; numbers,
Markdown tables and links formatted.

``benchmarks/report.py`` builds the report from these, with the tables and sections of
``report_tables.py`` and the plots of ``report_plots.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftrec.tasks import BENCHMARK_SCHEMA, TASKS

SCHEMA = BENCHMARK_SCHEMA
PROTOCOLS = {
    "p1": "P1, random split",
    "p2": "P2, cold-start items",
    "p3": "P3, leave-one-out, full ranking",
}
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
    return [
        Metric(m.key.format(k=k), m.label.format(k=k), not m.higher_is_better)
        for m in TASKS[task].reported
    ]


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
    config = record["config"]
    return config.get("ranking", config.get("sequence", {})).get("k", 10)


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
        members.sort(
            key=lambda r: (-train_fraction(r), headline(r)[1] if lower else -headline(r)[1])
        )
    return dict(
        sorted(groups.items(), key=lambda item: (item[0][0] != "rating", item[0][1], item[0][2]))
    )


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
            return (
                f"{value:.3g} {suffix}" if value < 1000 else f"{value:.0f} {suffix}"
            )  # not 1.01e+03
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


def relative_link(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return "../" + path.name if path.parent.resolve() == base.resolve().parent else str(path)


# -- sparse data -------------------------------------------------------------------------------


SPARSE_PLOT = "Accuracy against the fraction of training ratings"


def sparse_groups(
    groups: dict[tuple[str, str, str], list[dict[str, Any]]],
) -> dict[tuple[str, str, str], list]:
    """The groups whose runs differ in ``data.train_fraction``."""
    return {key: members for key, members in groups.items() if several_fractions(members)}


def by_fraction(
    members: list[dict[str, Any]], records: list[dict[str, Any]]
) -> tuple[list[str], dict[float, dict[str, list[dict[str, Any]]]]]:
    """The models (those run on the most fractions first, then the best on the most training
    ratings) and, per fraction (smallest first), each model's runs (several when, say, the
    seeds differ)."""
    runs: dict[float, dict[str, list[dict[str, Any]]]] = {}
    for r in sorted(members, key=train_fraction):
        runs.setdefault(train_fraction(r), {}).setdefault(display_name(r, records), []).append(r)
    models = list(
        dict.fromkeys(display_name(r, records) for r in members)
    )  # members are sorted best first
    models.sort(key=lambda model: -sum(model in found for found in runs.values()))  # a stable sort
    return models, runs


def cold_items(record: dict[str, Any], metric: Metric) -> tuple[float | None, int | None]:
    """The headline metric on the test ratings of items without a training rating, and their
    number (None when the recipe did not report them or there were none)."""
    test = record["test"]
    return test.get(f"{metric.key}_cold_items"), test.get(
        "count_cold_items", test.get("n_cold_items")
    )


def has_cold_items(members: list[dict[str, Any]], metric: Metric) -> bool:
    return any(cold_items(r, metric)[0] is not None for r in members)
