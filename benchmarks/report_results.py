"""The benchmark report's groundwork: ``run.py``'s records read, named and grouped (the seeds of
one configuration merged into one record); numbers, Markdown tables and links formatted.

``benchmarks/report.py`` builds the report from these, with the tables and sections of
``report_tables.py`` and the plots of ``report_plots.py``.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import fmt_seeds
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
    """Successful records by (task, dataset, protocol), the seeds of one configuration merged
    into one record (:func:`merge_seeds`), each group sorted best first (the runs on the most
    training ratings first, when they differ in ``data.train_fraction``)."""
    groups: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = {}
    for record in records:
        if record["status"] == "ok":
            configurations = groups.setdefault(group_key(record), {})
            configurations.setdefault(configuration(record), []).append(record)
    merged = {key: [merge_seeds(runs) for runs in c.values()] for key, c in groups.items()}
    for key, members in merged.items():
        lower = metrics_of(key[0])[0].lower_is_better
        members.sort(
            key=lambda r: (-train_fraction(r), headline(r)[1] if lower else -headline(r)[1])
        )
    return dict(
        sorted(merged.items(), key=lambda item: (item[0][0] != "rating", item[0][1], item[0][2]))
    )


# -- the seeds of one configuration ------------------------------------------------------------


SEED_KEYS = (("train", "seed"), ("data", "seed"))
"""Config keys that only draw randomness: runs that differ in nothing else are seeds of one
configuration."""
AVERAGED = (
    "parameters", "adapter_bytes", "train", "inference", "peak_memory_mib", "wall_seconds",
    "valid", "test",
)  # fmt: skip
"""The record's measurements: a merged record holds their means over the seeds."""


def configuration(record: dict[str, Any]) -> str:
    """What a run trained, less its seeds (:data:`SEED_KEYS`) and output folder, with its label
    and backbone: equal for the seeds of one configuration."""
    config = copy.deepcopy(record["config"])
    config.pop("output_dir", None)
    for section, key in SEED_KEYS:
        config.get(section, {}).pop(key, None)
    return json.dumps(
        [record["task"], label_of(record), record["backbone"], config], sort_keys=True, default=str
    )


def merge_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds of one configuration as one record: the first run's description, the mean over
    the runs of every measurement (:data:`AVERAGED`), the runs themselves (``runs``, for the
    learning curves), their ``seeds`` and each run's validation and test metrics
    (``per_seed``, for mean ± std). A single run is returned as it is."""
    if len(runs) == 1:
        return runs[0]
    merged = {
        **runs[0],
        "name": ", ".join(r["name"] for r in runs),
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
    }
    for key in AVERAGED:
        merged[key] = mean_of([r.get(key) for r in runs])
    merged["per_seed"] = {
        split: {key: [r[split][key] for r in runs] for key in merged[split]}
        for split in ("valid", "test")
    }
    return merged


def mean_of(values: list[Any]) -> Any:
    """The mean of numbers; of mappings, the mean of each key all of them have; of anything else
    (text, None, a mix), the first value."""
    if all(isinstance(v, dict) for v in values):
        keys = [k for k in values[0] if all(k in v for v in values)]
        return {k: mean_of([v[k] for v in values]) for k in keys}
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return float(np.mean(values))
    return values[0]


def values_of(record: dict[str, Any], split: str, key: str) -> list[float]:
    """The metric ``key`` of ``split`` in each seed of the record (none: not measured)."""
    if "per_seed" in record and key in record["per_seed"][split]:
        return [v for v in record["per_seed"][split][key] if v is not None]
    value = record[split].get(key)
    return [] if value is None else [value]


def fmt_runs(record: dict[str, Any], split: str, key: str, count: bool = True) -> str:
    """The metric of one run, or mean ± std over the seeds of a merged record (and, ``count``,
    how many)."""
    values = values_of(record, split, key)
    if len(values) > 1:
        return fmt_seeds(values, count=count)
    return fmt_metric(values[0] if values else None)


def seeded(records: list[dict[str, Any]]) -> bool:
    """Whether any of the (merged) records holds several seeds."""
    return any("runs" in r for r in records)


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
