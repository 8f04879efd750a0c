"""The benchmark report's Markdown: tables, the summary, the set-up and the sparse-data section.

A configuration run with several seeds is one row (``report_results.merge_seeds``): its metrics
are mean ± std over the seeds, with their count; its other measurements, means.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.common import hardware_line
from benchmarks.report_results import (
    NA,
    SPARSE_PLOT,
    backbone_name,
    by_fraction,
    cold_items,
    display_name,
    fmt_bytes,
    fmt_fraction,
    fmt_int,
    fmt_percent,
    fmt_runs,
    fmt_seconds,
    fmt_si,
    group_phrase,
    group_title,
    has_cold_items,
    headline,
    label_of,
    metrics_of,
    ranking_k,
    relative_link,
    run_name,
    seeded,
    several_fractions,
    sparse_groups,
    table,
    train_fraction,
)

# -- the report's parts ------------------------------------------------------------------------


def task_table(members: list[dict[str, Any]]) -> str:
    """One row per configuration (its seeds merged), best first; the best headline value in
    bold. A backbone column only when the table holds several backbones (else the section title
    names it), a train fraction column (and the best of each fraction in bold) only when the
    runs differ in it, a seeds column when a row merges several."""
    task, k = members[0]["task"], ranking_k(members[0])
    metrics = metrics_of(task, k)
    several = len({r["backbone"] for r in members}) > 1
    fractions = several_fractions(members)
    seeds = seeded(members)
    arrow = "↓" if metrics[0].lower_is_better else "↑"
    header = [
        "method",
        *(["backbone"] if several else []),
        *(["train fraction"] if fractions else []),
        *(["seeds"] if seeds else []),
        f"{metrics[0].title} {arrow}",
        *(m.title for m in metrics[1:]),
        "on",
        f"valid {metrics[0].title}",
        "trainable params",
        "% of all",
        "adapter + head",
        "train ratings/s",
        "serving scores/s",
        "peak memory",
        "wall time",
    ]
    rows = []
    for rank, r in enumerate(members):
        split, _ = headline(r)
        best = fmt_runs(r, split, metrics[0].key, count=False)  # the seeds column counts them
        first = rank == 0 or train_fraction(members[rank - 1]) != train_fraction(
            r
        )  # sorted by fraction first
        rows.append(
            [
                label_of(r),
                *([backbone_name(r)] if several else []),
                *([fmt_fraction(train_fraction(r))] if fractions else []),
                *([str(len(r.get("runs", [r])))] if seeds else []),
                f"**{best}**" if first else best,
                *(fmt_runs(r, split, m.key, count=False) for m in metrics[1:]),
                split,
                fmt_runs(r, "valid", metrics[0].key, count=False),
                fmt_int(r["parameters"]["trainable"]),
                fmt_percent(r["parameters"]["trainable_percent"]),
                fmt_bytes(r["adapter_bytes"]),
                fmt_si(r["train"]["ratings_per_second"]),
                fmt_si(r["inference"]["scores_per_second"]),
                fmt_bytes(r["peak_memory_mib"] * 2**20),
                fmt_seconds(r["wall_seconds"]),
            ]
        )
    align = "l" + "l" * several + "r" * (fractions + seeds + len(metrics)) + "l" + "r" * 8
    return table(header, rows, align)


def section_title(key: tuple[str, str, str], members: list[dict[str, Any]]) -> str:
    backbones = sorted({backbone_name(r) for r in members})
    return group_title(key) + (f" ({backbones[0]})" if len(backbones) == 1 else "")


def warm_cold_table(groups: dict[tuple[str, str, str], list[dict[str, Any]]]) -> str | None:
    """Test RMSE on P1 (warm items) next to P2 (cold-start items), per dataset and method (its
    best configuration, seeds merged)."""
    sections = []
    for dataset in sorted({d for (task, d, _) in groups if task == "rating"}):
        warm, cold = (
            groups.get(("rating", dataset, "p1"), []),
            groups.get(("rating", dataset, "p2"), []),
        )
        if not (warm and cold):
            continue
        by_label: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for protocol, members in (("p1", warm), ("p2", cold)):
            for r in members:  # best first: a label's best configuration
                name = (run_name(r, warm + cold, label_of(r)), backbone_name(r))
                by_label.setdefault(name, {}).setdefault(protocol, r)
        rows = []
        for (label, backbone), found in sorted(
            by_label.items(),
            key=lambda kv: headline(kv[1]["p1"])[1] if "p1" in kv[1] else math.inf,
        ):
            cells = [warm_cold_cell(found[p]) if p in found else NA for p in ("p1", "p2")]
            rows.append([label, backbone, *cells])
        sections.append(
            f"**{dataset}**\n\n"
            + table(
                ["method", "backbone", "P1 RMSE (warm items)", "P2 RMSE (cold-start items)"],
                rows,
                "llrr",
            )
        )
    return "\n\n".join(sections) or None


def warm_cold_cell(record: dict[str, Any]) -> str:
    split = headline(record)[0]
    return f"{fmt_runs(record, split, metrics_of('rating')[0].key)} ({split})"


def summary(
    groups: dict[tuple[str, str, str], list[dict[str, Any]]], records: list[dict[str, Any]]
) -> str:
    """One paragraph: the best method per table, what it costs, and the caveats."""
    ok = [r for r in records if r["status"] == "ok"]
    sentences = []
    if ok and all(r.get("synthetic") for r in ok):
        sentences.append(
            "These runs use tiny models and toy data (the quick suite): they check that every "
            "method trains, saves, loads and is measured; their numbers say nothing about the "
            "methods."
        )
    for key, members in groups.items():
        metric = metrics_of(key[0], ranking_k(members[0]))[0]
        best = members[0]
        split = headline(best)[0]
        most = (
            f" with {fmt_fraction(train_fraction(best))} of the training ratings"
            if several_fractions(members)
            else ""
        )
        text = (
            f"On {group_phrase(key)}{most}, {label_of(best)} ({backbone_name(best)}) has the best "
            f"{split} {metric.title}, {fmt_runs(best, split, metric.key)}, training "
            f"{fmt_int(best['parameters']['trainable'])} parameters "
            f"({fmt_percent(best['parameters']['trainable_percent'])} of the model)"
        )
        fewest = min(
            (r for r in members if train_fraction(r) == train_fraction(best)),
            key=lambda r: r["parameters"]["trainable"],
        )
        if fewest is not best:
            text += (
                f"; {label_of(fewest)}, with the fewest "
                f"({fmt_int(fewest['parameters']['trainable'])}), scores "
                f"{fmt_runs(fewest, headline(fewest)[0], metric.key)}"
            )
        sentences.append(text + ".")
    rates = [r for r in ok if r["train"]["ratings_per_second"]]
    if len(rates) > 1:
        slow = min(rates, key=lambda r: r["train"]["ratings_per_second"])
        fast = max(rates, key=lambda r: r["train"]["ratings_per_second"])
        sentences.append(
            "Training throughput ranges from "
            f"{fmt_si(slow['train']['ratings_per_second'])} ratings/s ({label_of(slow)}, "
            f"{slow['task']}) to {fmt_si(fast['train']['ratings_per_second'])} "
            f"({label_of(fast)}, {fast['task']})."
        )
    seeds = ", ".join(map(str, sorted({r["seed"] for r in ok})))
    if ok and any(seeded(members) for members in groups.values()):
        sentences.append(
            "Runs of one configuration that differ only in their seeds (`train.seed`, "
            "`data.seed`) are one row: mean ± std over the seeds, with their count; any other "
            f"number comes from one run (seeds {seeds} in all), so small differences between "
            "methods may be noise."
        )
    elif ok:
        sentences.append(
            f"Every number comes from one run with seed {seeds}, so small differences between "
            "methods may be noise."
        )
    failed = [r["name"] for r in records if r["status"] != "ok"]
    if failed:
        sentences.append(
            f"{len(failed)} experiment(s) failed and are listed at the end: {', '.join(failed)}."
        )
    return " ".join(sentences)


def setup(records: list[dict[str, Any]]) -> str:
    """Hardware, software, commit, seeds and what the columns mean."""
    first = records[0]
    hw, versions = first["hardware"], first["versions"]
    commits = sorted({(r["git"]["commit"] or "unknown")[:10] for r in records})
    dirty = any(r["git"]["dirty"] for r in records)
    threads = sorted({r["hardware"]["torch_threads"] for r in records})
    loads = [
        r["load_average"][w] for r in records if "load_average" in r for w in ("before", "after")
    ]
    processes = sorted({r["train"]["num_processes"] for r in records if r["status"] == "ok"})
    seeds = sorted({r["seed"] for r in records if r["status"] == "ok"})
    cpu = first.get("peak_memory_kind", "cpu_max_rss") == "cpu_max_rss"
    peak = "maximum RSS" if cpu else "peak GPU memory"
    lines = [
        f"- **Hardware**: {hardware_line(hw, threads=', '.join(map(str, threads)))}; "
        f"{', '.join(map(str, processes))} training process(es) per run, fp32.",
        f"- **Software**: Python {versions['python']}, "
        + ", ".join(
            f"{name} {versions.get(name)}"
            for name in ("torch", "transformers", "peft", "accelerate", "datasets")
        ),
        f"- **Code**: commit {', '.join(commits)}"
        + (" with uncommitted changes (see `git.changed` in the JSON)" if dirty else "")
        + f"; seed {', '.join(map(str, seeds))}.",
        "- **Metrics**: each run keeps the weights of its best validation epoch and scores the "
        "test split once; the *on* column says which split the headline number is from.",
        "- **Columns**: *trainable params* are every parameter that trains (adapter, "
        "prompt/prefix, towers and head); *% of all* is of every parameter of the loaded model; "
        "*adapter + head* is the size of `model/adapter/` and `model/head.safetensors`; "
        "*train ratings/s* is training ratings per epoch over the median epoch time; "
        "*serving scores/s* is user-item scores per second of `Recommender.score_all()` with the "
        "catalogue encoded (median of repeats); *peak memory* is the training process's "
        f"{peak}; *wall time* is the whole recipe run, start-up and saving included.",
    ]
    if loads and max(loads) > hw["usable_cores"]:
        lines.append(
            "- **Load**: the machine was shared (load average "
            f"{min(loads):.1f} to {max(loads):.1f} on {hw['usable_cores']} cores), so times and "
            "throughputs are pessimistic and noisy."
        )
    return "\n".join(lines)


# -- sparse data -------------------------------------------------------------------------------


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
        row = [
            fmt_fraction(fraction),
            " / ".join(
                fmt_int(n) for n in sorted({r["train"]["ratings_per_epoch"] for r in row_runs})
            ),
        ]
        if cold:
            row.append(
                " / ".join(
                    sorted(
                        {
                            fmt_int(n)
                            for r in row_runs
                            if (n := cold_items(r, metric)[1]) is not None
                        }
                    )
                )
                or NA
            )
        for model in models:
            cells = []
            for r in found.get(model, []):
                split, value = headline(r)
                text = fmt_runs(r, split, metric.key) + ("" if split == "test" else " (valid)")
                text = f"**{text}**" if value == best and len(row_runs) > 1 else text
                if cold and cold_items(r, metric)[0] is not None:
                    text += f" (cold {fmt_runs(r, 'test', f'{metric.key}_cold_items')})"
                cells.append(text)
            row.append(" / ".join(cells) or NA)
        rows.append(row)
    header = [
        "train fraction",
        "training ratings",
        *(["test ratings of cold items"] if cold else []),
        *models,
    ]
    return table(header, rows, "r" * len(header))


def sparse_section(
    groups: dict[tuple[str, str, str], list[dict[str, Any]]],
    records: list[dict[str, Any]],
    plot: Path | None,
    base: Path,
) -> str:
    """What a model gains from more training ratings: a paragraph, a table per group and
    the plot."""
    ok = [r for r in records if r["status"] == "ok"]
    parts = []
    for key, members in sparse_groups(groups).items():
        metric = metrics_of(key[0], ranking_k(members[0]))[0]
        _, runs = by_fraction(members, ok)
        pick = min if metric.lower_is_better else max
        better = "lower" if metric.lower_is_better else "higher"
        about = [
            f"**{group_title(key)}.** Each run trains on a random subset of the training "
            "ratings (`data.train_fraction`, drawn with `data.seed`) and is scored on the full "
            f"validation and test splits. Cells: {headline(members[0])[0]} {metric.title} "
            f"({better} is better), the best of each row in bold"
        ]
        if has_cold_items(members, metric):
            about.append(
                f"; *cold*: the {metric.title} on the test ratings of items without a training "
                "rating at that fraction"
            )
        for fraction in (min(runs), max(runs)):
            best = pick(
                (r for rs in runs[fraction].values() for r in rs), key=lambda r: headline(r)[1]
            )
            about.append(
                f". With {fmt_fraction(fraction)} of the training ratings "
                f"({fmt_int(best['train']['ratings_per_epoch'])}) {display_name(best, ok)} is "
                f"best, {fmt_runs(best, headline(best)[0], metric.key)}"
            )
        parts += ["".join(about) + ".", sparse_table(members, ok)]
    if plot is not None:
        parts.append(f"![{SPARSE_PLOT}]({relative_link(plot, base)})")
    return "\n\n".join(parts)
