"""Run benchmark experiments: train with a recipe, measure the saved model, write one JSON each.

    python -m benchmarks.run benchmarks/suites/ml100k/p1_lora.yaml --out benchmarks/results/ml100k
    python -m benchmarks.run --suite quick --out benchmarks/results/quick --threads 1

An experiment is a small YAML; its name is the file name:

    task: rating                          # the recipe: recipes/train_<task>.py
    config: recipes/configs/minilm_lora_rating.yaml
    defaults: _toy.yaml                   # optional: shared overrides, relative to this file
    label: ID-only MF                     # optional: its name in the report (default: the method)
    overrides:                            # key.sub: value, as on the recipe's command line
      adapter.method: frozen

``${tiny_bert}``, ``${tiny_gpt2}`` and ``${toy}`` in an override stand for the tiny models and
toy data of ``benchmarks/tiny.py``, built on first use. A suite (``--suite quick`` or a folder)
runs every ``*.yaml`` of ``benchmarks/suites/<suite>/`` not starting with ``_``, in name order,
then writes ``REPORT.md`` next to the JSON files.

Each recipe runs as a subprocess (``benchmarks.common.launch_recipe``), the same command a user
types, with its output streamed live and kept in ``<runs>/<name>/log.txt``: the recipe's peak
memory (the process's maximum RSS) then belongs to that experiment alone, and a crash fails that
experiment, not the suite. What is measured of the saved model, and the record's fields, come
from ``benchmarks/run_measure.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Any

import yaml

from benchmarks import report
from benchmarks.common import (
    REPO,
    hardware,
    launch_recipe,
    recipe_command,
    versions,
    write_atomic,
)
from benchmarks.run_measure import finished_record
from benchmarks.tiny import ASSETS, build_assets
from peftrec.tasks import BENCHMARK_SCHEMA, TASKS

SUITES = REPO / "benchmarks" / "suites"
EXPERIMENT_KEYS = {"task", "config", "defaults", "label", "overrides"}
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


class ExperimentError(ValueError):
    """An experiment file that cannot be run: unknown keys, a missing config, a bad placeholder."""


@dataclass
class Experiment:
    """One experiment file, with its shared defaults merged under its own overrides."""

    name: str
    path: Path
    task: str
    config: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    """What the recipe gets: the shared defaults, then the experiment's own overrides."""
    own: dict[str, Any] = field(default_factory=dict)
    """The experiment's own overrides."""
    defaults: Path | None = None
    label: str | None = None

    def override_args(self, assets: dict[str, str]) -> list[str]:
        """The overrides as the recipe's ``key.sub=value`` arguments, placeholders filled in."""
        args = []
        for key, value in self.overrides.items():
            if isinstance(value, str):
                value = Template(value).substitute(assets)
            args.append(
                f"{key}={json.dumps(value)}"
            )  # JSON is YAML, which is how the recipe reads values
        return args

    def argv(self, assets: dict[str, str], output_dir: Path) -> list[str]:
        """The recipe's command line."""
        return recipe_command(self.task, self.config, output_dir, self.override_args(assets))

    def needs_assets(self) -> bool:
        """Whether it runs on the tiny models or toy data of ``benchmarks/tiny.py``."""
        return any(isinstance(v, str) and PLACEHOLDER.search(v) for v in self.overrides.values())


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ExperimentError(f"{path}: {error}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping at the top level")
    return raw


def load_experiment(path: Path) -> Experiment:
    """Read and check an experiment file (see the module docstring for its keys)."""
    raw = read_yaml(path)
    unknown = set(raw) - EXPERIMENT_KEYS
    if unknown:
        raise ExperimentError(
            f"{path}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(EXPERIMENT_KEYS)}"
        )
    if raw.get("task") not in TASKS:
        raise ExperimentError(
            f"{path}: task must be one of {tuple(TASKS)}, got {raw.get('task')!r}"
        )
    config = REPO / str(raw.get("config", ""))
    if not raw.get("config") or not config.is_file():
        raise ExperimentError(
            f"{path}: config {raw.get('config')!r} is not a file (paths are relative to {REPO})"
        )
    defaults = path.parent / raw["defaults"] if raw.get("defaults") else None
    own = raw.get("overrides") or {}
    if not isinstance(own, dict):
        raise ExperimentError(f"{path}: overrides must be a mapping of key.sub: value")
    overrides = {**(read_yaml(defaults) if defaults else {}), **own}
    for key, value in overrides.items():
        unknown = set(PLACEHOLDER.findall(value)) - set(ASSETS) if isinstance(value, str) else set()
        if unknown:
            raise ExperimentError(
                f"{path}: override {key}: unknown placeholder(s) {sorted(unknown)}; "
                f"known: {', '.join('${' + a + '}' for a in ASSETS)}"
            )
    if "output_dir" in overrides:
        raise ExperimentError(
            f"{path}: output_dir is set by run.py (--runs); remove it from the overrides"
        )
    return Experiment(
        name=path.stem,
        path=path,
        task=raw["task"],
        config=config,
        overrides=overrides,
        own=own,
        defaults=defaults,
        label=raw.get("label"),
    )


def suite_files(suite: str) -> list[Path]:
    folder = Path(suite) if Path(suite).is_dir() else SUITES / suite
    files = sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("_"))
    if not files:
        raise ExperimentError(f"suite {suite!r}: no experiment files in {folder}")
    return files


# -- the environment ---------------------------------------------------------------------------


def relative(path: Path) -> str:
    """A path relative to the repository when it is inside it, so results read the same anywhere."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def git_state(exclude: Path) -> dict[str, Any]:
    """Commit, and whether the working tree differs from it (ignoring ``exclude``: our
    own output)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        pathspec = ["--", "."]
        if exclude.resolve().is_relative_to(REPO):
            pathspec.append(f":(exclude){relative(exclude)}")
        changed = [line[3:] for line in git("status", "--porcelain", *pathspec).splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "changed": []}
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:50]}


# -- one experiment ----------------------------------------------------------------------------


def run_experiment(
    experiment: Experiment,
    runs: Path,
    assets_dir: Path,
    context: dict[str, Any],
    threads: int | None,
) -> dict[str, Any]:
    """Train, measure, and return the experiment's JSON record (``status`` ok or failed)."""
    run_dir = runs / experiment.name
    assets = build_assets(assets_dir) if experiment.needs_assets() else {}
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started, load_before = (
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
        os.getloadavg()[0],
    )
    # never reused: a stale metrics.json is removed first, so it cannot pass for this run's
    run = launch_recipe(
        experiment.task,
        experiment.config,
        run_dir,
        experiment.override_args(assets),
        reuse=False,
        echo=True,
        env=env,
        check=False,
    )
    record: dict[str, Any] = {
        "schema": BENCHMARK_SCHEMA,
        "name": experiment.name,
        "task": experiment.task,
        "status": "ok",
        "started": started,
        "synthetic": experiment.needs_assets(),
        "experiment": {
            "file": relative(experiment.path),
            "config": relative(experiment.config),
            "defaults": relative(experiment.defaults) if experiment.defaults else None,
            "overrides": experiment.own,
            "label": experiment.label,
        },
        "command": [
            "python",
            *(a.replace(f"{REPO}/", "") for a in run.command[1:]),
        ],  # paths relative to the repo
        "log": relative(run.log),
        "wall_seconds": run.seconds,
        **context,
    }
    if not run.ok:
        return {**record, "status": "failed", "returncode": run.returncode, "log_tail": run.tail}

    return {**record, **finished_record(run_dir, experiment.label, load_before)}


def summary(record: dict[str, Any]) -> str:
    """One line on a finished experiment, for the progress output."""
    if record["status"] != "ok":
        return f"FAILED (exit {record['returncode']}); log: {record['log']}"
    split, value = report.headline(record)
    metric = report.metrics_of(record["task"], report.ranking_k(record))[0]
    rate = record["train"]["ratings_per_second"]
    return (
        f"{split} {metric.title} {value:.4f}, {record['parameters']['trainable']:,} trainable "
        f"parameters, {report.fmt_si(rate)} training ratings/s, {record['wall_seconds']:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="*", type=Path, help="experiment YAML files")
    parser.add_argument(
        "--suite",
        help="a suite under benchmarks/suites (quick, ml100k, sparse) or a folder of experiments",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for the JSON results (and REPORT.md)"
    )
    parser.add_argument(
        "--runs",
        type=Path,
        help="folder for the recipes' outputs (default: runs/benchmarks/<out name>)",
    )
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for training and inference (default: torch's)"
    )
    parser.add_argument(
        "--skip-done", action="store_true", help="skip experiments whose JSON says ok"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="do not write REPORT.md after a suite"
    )
    args = parser.parse_args(argv)
    if bool(args.experiments) == bool(args.suite):
        parser.error("give experiment files or --suite, not both or neither")
    try:
        experiments = [
            load_experiment(p)
            for p in (suite_files(args.suite) if args.suite else args.experiments)
        ]
    except ExperimentError as error:
        parser.error(str(error))
    if args.threads is not None:  # for the recipes' processes, and for this one's measurements
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    runs = args.runs or REPO / "runs" / "benchmarks" / args.out.resolve().name
    args.out.mkdir(parents=True, exist_ok=True)
    context = {"git": git_state(exclude=args.out), "versions": versions(), "hardware": hardware()}
    failed, started = [], time.perf_counter()
    for k, experiment in enumerate(experiments, 1):
        target = args.out / f"{experiment.name}.json"
        if (
            args.skip_done
            and target.is_file()
            and json.loads(target.read_text()).get("status") == "ok"
        ):
            print(f"[{k}/{len(experiments)}] {experiment.name}: done before, skipped", flush=True)
            continue
        print(
            f"[{k}/{len(experiments)}] {experiment.name}: {experiment.task}, "
            f"{relative(experiment.config)} ({time.perf_counter() - started:.0f} s elapsed)",
            flush=True,
        )
        record = run_experiment(experiment, runs, runs / ".assets", context, args.threads)
        write_atomic(target, json.dumps(record, indent=2, default=str))
        print(f"[{k}/{len(experiments)}] {experiment.name}: {summary(record)}", flush=True)
        if record["status"] != "ok":
            failed.append(experiment.name)
    if args.suite and not args.no_report:
        written = report.write_report(args.out, args.out / "REPORT.md")
        print(f"report: {relative(written)}", flush=True)
    print(
        f"{len(experiments) - len(failed)} of {len(experiments)} experiments ok in "
        f"{time.perf_counter() - started:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
