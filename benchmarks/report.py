"""Turn a folder of benchmark results (``run.py``'s JSON files) into a Markdown report with plots.

    python -m benchmarks.report benchmarks/results/ml100k --out benchmarks/results/ml100k/REPORT.md

The report has one table per task, dataset and protocol (best first, the seeds of one
configuration in one row: mean ± std over them), warm (P1) against cold-start (P2) rating side by
side, and three PNG plots next to it: accuracy against trainable parameters, throughput per
method, and learning curves. Runs of one task, dataset and protocol that differ in
``data.train_fraction`` (the sparse suite) also get a "Sparse data" section: the headline metric
per fraction of the training ratings and model, and a plot of it (``<report>_sparse.png``). A
``speed_*.json`` of ``benchmarks/speed.py`` in the results folder or its parent (the seed-style
baseline) gets its own section.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import write_atomic
from benchmarks.report_plots import plot_all
from benchmarks.report_results import (
    NA,
    SCHEMA,
    SPARSE_PLOT,
    fmt_bytes,
    fmt_percent,
    fmt_seconds,
    fmt_si,
    grouped,
    headline,
    load_results,
    metrics_of,
    ranking_k,
    relative_link,
    sparse_groups,
    speed_files,
    table,
)
from benchmarks.report_tables import (
    section_title,
    setup,
    sparse_section,
    summary,
    task_table,
    warm_cold_table,
)
from benchmarks.speed_report import speed_section

# what run.py and the tests read as `report.<name>`; the rest lives in report_results.py
# (records, grouping, number formats), report_tables.py (Markdown) and report_plots.py (PNGs)
__all__ = [
    "NA", "SCHEMA", "fmt_bytes", "fmt_percent", "fmt_seconds", "fmt_si", "headline",
    "load_results", "main", "metrics_of", "ranking_k", "render", "write_report",
]  # fmt: skip


def render(
    records: list[dict[str, Any]], plots: dict[str, Path], speed: list[Path], base: Path
) -> str:
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
        parts.append(
            "\n".join(
                f"- `{r['name']}` ({r['experiment']['file']}): exit status {r.get('returncode')}, "
                f"log `{r['log']}`; last line: `{(r.get('log_tail') or [''])[-1].strip()}`"
                for r in failed
            )
        )
    parts += [
        "## Experiments",
        "Each JSON holds the full command, the resolved config and the per-epoch history.",
        table(
            ["experiment", "file", "recipe", "base config", "overrides"],
            [experiment_row(r) for r in records],
            "lllll",
        ),
    ]
    return "\n\n".join(parts) + "\n"


def experiment_row(record: dict[str, Any]) -> list[str]:
    spec = record["experiment"]
    overrides = [f"`{k}={json.dumps(v)}`" for k, v in spec["overrides"].items()]
    if spec.get("defaults"):
        overrides.insert(0, f"shared: `{spec['defaults']}`")
    return [
        f"`{record['name']}`",
        f"`{spec['file']}`",
        f"`recipes/train_{record['task']}.py`",
        f"`{spec['config']}`",
        ", ".join(overrides) or NA,
    ]


def write_report(results: Path, out: Path, plots: bool = True) -> Path:
    """Write the Markdown report of the results in ``results`` to ``out``, plots next to it."""
    records = load_results(results)
    if not records:
        raise ValueError(f"{results}: no benchmark results (run.py's *.json) found")
    base = out.parent
    pngs = (
        plot_all(grouped(records), records, out.with_suffix(""))
        if plots and grouped(records)
        else {}
    )
    speed = speed_files(results) if not all(r.get("synthetic") for r in records) else []
    return write_atomic(out, render(records, pngs, speed, base))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="folder of run.py's JSON results")
    parser.add_argument("--out", type=Path, help="the Markdown file (default: RESULTS/REPORT.md)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    try:
        written = write_report(
            args.results, args.out or args.results / "REPORT.md", plots=not args.no_plots
        )
    except ValueError as error:
        parser.error(str(error))
    print(f"report: {written}")


if __name__ == "__main__":
    main()
