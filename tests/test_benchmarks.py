"""The benchmark harness: the quick suite end to end (~2 min), the report on hand-made results,
and every shipped experiment resolving against its recipe's config schema."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import report
from benchmarks.run import ExperimentError, load_experiment, suite_files
from peftrec.config import load_config
from peftrec.tasks import TASKS

from .unit.test_data_ml100k import ml100k  # noqa: F401 (the real data, or a skip)

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
MINILM = 22_713_216  # parameters of the loaded model, made up
SCHEMAS = {name: task.config for name, task in TASKS.items()}


# -- the quick suite, for real -------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--suite",
            "quick",
            "--out",
            str(tmp / "out"),
            "--runs",
            str(tmp / "runs"),
            "--threads",
            "1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return tmp / "out", result


def test_quick_suite_writes_a_complete_json_per_experiment(quick):
    out, result = quick
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    names = [p.stem for p in suite_files("quick")]
    assert f"[1/{len(names)}] {names[0]}" in result.stdout  # progress is printed
    records = {name: json.loads((out / f"{name}.json").read_text()) for name in names}
    for name, r in records.items():
        assert r["status"] == "ok" and r["schema"] == report.SCHEMA, name
        assert r["config"]["output_dir"].endswith(name) and r["config"]["train"]["seed"] == 0
        assert len(r["git"]["commit"]) == 40 and isinstance(r["git"]["dirty"], bool)
        assert all(
            r["versions"][p] for p in ("torch", "transformers", "peft", "accelerate", "datasets")
        )
        assert (
            r["hardware"]["cpu"]
            and r["hardware"]["usable_cores"] >= 1
            and r["hardware"]["torch_threads"] == 1
        )
        params = r["parameters"]
        assert params["trainable_in_artifact"] == params["trainable"], (
            name
        )  # one count for every method
        assert 0 < params["trainable"] <= params["total"]
        assert r["adapter_bytes"] >= 4 * params["trainable"]  # every trained fp32 element is saved
        train = r["train"]
        assert train["ratings_per_second"] == pytest.approx(
            train["ratings_per_epoch"] / train["median_epoch_seconds"]
        )
        if r["task"] == "rating":  # the recipe's own count agrees with the training-set size
            assert train["ratings_trained"] == train["ratings_per_epoch"] * train["epochs_trained"]
            assert r["test"]["rmse"] == pytest.approx(math.sqrt(r["test"]["mse"]))
        inference = r["inference"]
        assert (inference["users"], inference["items"]) == (30, 60) and inference[
            "scores_per_second"
        ] > 0
        assert r["peak_memory_mib"] > 0 and r["wall_seconds"] > train["recipe_wall_seconds"] > 0
        headline = report.metrics_of(r["task"])[0].key
        assert len(r["history"]) >= 2 and all(f"valid_{headline}" in h for h in r["history"])
        assert headline in r["valid"] and headline in r["test"]

    # parameter counts against their formulas (tiny BERT: hidden 64, 2 layers)
    head = records["rating_frozen"]["parameters"]["trainable"]
    lora, prefix = records["rating_lora"]["parameters"], records["rating_prefix"]["parameters"]
    assert lora["backbone_trainable"] == 2 * 2 * 8 * (64 + 64)  # r=8 on query and value, 2 layers
    assert (
        prefix["backbone_trainable"] == 4 * 2 * 2 * 64
    )  # 4 virtual tokens x (key, value) x 2 layers
    assert lora["trainable"] == head + lora["backbone_trainable"]
    assert (
        records["rating_full"]["parameters"]["trainable"]
        == records["rating_full"]["parameters"]["total"]
    )
    assert records["rating_frozen"]["parameters"]["backbone_trainable"] == 0
    assert records["rating_idonly"]["label"] == "ID-only MF"
    assert records["rating_idonly"]["parameters"]["trainable"] < head  # no text projection
    assert (
        records["rating_p2_lora"]["protocol"] == "p2"
        and records["ranking_lora"]["protocol"] == "p3"
    )


def test_quick_suite_writes_the_report_and_its_plots(quick):
    out, result = quick
    assert result.returncode == 0
    text = (out / "REPORT.md").read_text()
    for name in (p.stem for p in suite_files("quick")):
        assert f"`{name}`" in text
    for title in (
        "Rating prediction: toy, P1",
        "Rating prediction: toy, P2",
        "Top-K ranking: toy, P3",
        "Warm (P1) against cold-start items (P2)",
        "Sparse data",
        "tiny models and toy data",
    ):
        assert title in text
    pngs = sorted(out.glob("REPORT_*.png"))
    assert len(pngs) == 4
    for png in pngs:
        assert png.read_bytes().startswith(PNG) and f"]({png.name})" in text


def test_quick_suite_report_compares_models_on_part_of_the_training_ratings(quick):
    """rating_lora and rating_idonly on 100% and 10% of the toy training ratings: the sparse
    table has a row per fraction whose numbers are the JSON's, and the plot is linked in it."""
    out, result = quick
    assert result.returncode == 0
    runs = {
        name: json.loads((out / f"{name}.json").read_text())
        for name in ("rating_lora", "rating_lora_10pct", "rating_idonly", "rating_idonly_10pct")
    }
    assert [runs[n]["config"]["data"]["train_fraction"] for n in runs] == [1.0, 0.1, 1.0, 0.1]
    full, tenth = (
        runs["rating_lora"]["train"]["ratings_per_epoch"],
        runs["rating_lora_10pct"]["train"]["ratings_per_epoch"],
    )
    assert (
        0 < tenth < 0.25 * full
        and runs["rating_idonly_10pct"]["train"]["ratings_per_epoch"] == tenth
    )
    text = (out / "REPORT.md").read_text()
    section = "## Sparse data" + text.split("## Sparse data", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("|"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    rows = {
        row[0]: dict(zip(columns, row, strict=True)) for row in table_rows(text, "## Sparse data")
    }
    assert list(rows) == ["10%", "100%"]  # fewest ratings first
    assert (
        rows["10%"]["training ratings"] == f"{tenth:,}"
        and rows["100%"]["training ratings"] == f"{full:,}"
    )
    for label, names in {
        "lora": ("rating_lora_10pct", "rating_lora"),
        "ID-only MF": ("rating_idonly_10pct", "rating_idonly"),
    }.items():
        for fraction, name in zip(("10%", "100%"), names, strict=True):
            test = runs[name]["test"]
            cell = rows[fraction][label].replace("**", "")
            assert cell.startswith(f"{test['rmse']:.4f}"), (label, fraction, cell)
            if test.get("rmse_cold_items") is not None:  # the recipe reports the cold-item part
                assert f"(cold {test['rmse_cold_items']:.4f})" in cell
    assert rows["10%"]["frozen"] == report.NA  # a method run on all ratings only has no 10% cell
    best = min(
        ("lora", "ID-only MF"),
        key=lambda label: runs[
            {"lora": "rating_lora_10pct", "ID-only MF": "rating_idonly_10pct"}[label]
        ]["test"]["rmse"],
    )
    assert rows["10%"][best].startswith("**")
    assert "](REPORT_sparse.png)" in section and (
        out / "REPORT_sparse.png"
    ).read_bytes().startswith(PNG)


def test_a_crash_fails_its_experiment_not_the_suite(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "a_crash.yaml").write_text(
        "task: rating\nconfig: recipes/configs/minilm_lora_rating.yaml\n"
        "overrides: {train.epochs: 0}\n"
    )  # refused by the recipe at start-up
    (suite / "b_done.yaml").write_text(
        "task: rating\nconfig: recipes/configs/minilm_lora_rating.yaml\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_done.json").write_text(json.dumps({"status": "ok"}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--suite",
            str(suite),
            "--out",
            str(out),
            "--runs",
            str(tmp_path / "runs"),
            "--skip-done",
            "--no-report",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "b_done: done before, skipped" in result.stdout and "failed: a_crash" in result.stdout
    record = json.loads((out / "a_crash.json").read_text())
    assert record["status"] == "failed" and record["returncode"] == 2
    assert any("train.epochs" in line for line in record["log_tail"])
    assert not (out / "REPORT.md").exists()


def test_common_endings_report_reuse_and_failure(tmp_path, capsys, monkeypatch):
    """benchmarks.common: a report printed and written with its JSON (no temporary file left), a
    finished recipe run reused with its wall time, a failed one raising with the end of its log,
    the hardware line and a seeds cell."""
    from benchmarks import common

    out = tmp_path / "study" / "result.md"
    assert common.write_report(out, "# study", {"auc": 0.7}) == [out.with_suffix(".json"), out]
    assert out.read_text() == "# study\n" and "# study" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".json").read_text()) == {"auc": 0.7}
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.json", "result.md"]

    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text(json.dumps({"test_auc": 0.7}))
    (done / "process.json").write_text(json.dumps({"seconds": 12.5}))
    config = REPO / "recipes/configs/minilm_frozen_preference.yaml"
    run = common.launch_recipe("preference", config, done, ["train.epochs=1"])
    assert run.skipped and run.results() == {"test_auc": 0.7, "process_seconds": 12.5}
    assert run.command[1] == str(TASKS["preference"].recipe_path())
    assert run.command[2:] == ["--config", str(config), "train.epochs=1", f"output_dir={done}"]

    crash = "import sys; print('loading', flush=True); print('boom', file=sys.stderr); sys.exit(3)"
    monkeypatch.setattr(common, "recipe_command", lambda *_: [sys.executable, "-c", crash])
    with pytest.raises(common.RecipeFailed, match=r"exit status 3(.|\n)*loading\nboom"):
        common.launch_recipe("preference", config, tmp_path / "crash")
    failed = common.launch_recipe("preference", config, tmp_path / "crash", check=False)
    assert not failed.ok and failed.tail == ["loading", "boom"] and failed.seconds > 0
    assert not (tmp_path / "crash" / "process.json").exists()

    hw = {"cpu": "Test CPU", "machine": "x86_64", "logical_cores": 4, "usable_cores": 2}
    hw |= {"torch_threads": 1, "memory_gib": 8, "gpus": []}
    assert common.hardware_line(hw) == (
        "Test CPU (x86_64), 2 usable of 4 logical cores, 1 torch thread(s), 8 GiB RAM, no GPU"
    )
    assert common.hardware_line({**hw, "gpus": ["H100"]}, threads="1, 2").endswith(
        "1, 2 torch thread(s), 8 GiB RAM, H100"
    )
    assert common.fmt_seeds([0.5]) == "0.5000" and common.fmt_seeds([0.5], [3]) == "0.5000 (seed 3)"
    assert common.fmt_seeds([0.1, 0.3]) == "0.2000 ± 0.1000 (2 seeds)"


# -- experiment files ----------------------------------------------------------------------------


SPARSE_FRACTIONS = {"001": 0.01, "005": 0.05, "010": 0.1, "050": 0.5, "100": 1.0}
SPARSE_MODELS = ("lora", "lora_random", "idonly")


@pytest.mark.parametrize(
    "path",
    [*suite_files("quick"), *suite_files("ml100k"), *suite_files("sparse")],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_every_shipped_experiment_resolves_against_its_recipe(path):
    experiment = load_experiment(path)
    assets = {"tiny_bert": "/x/tiny-bert", "tiny_gpt2": "/x/tiny-gpt2", "toy": "/x/toy"}
    cfg = load_config(SCHEMAS[experiment.task], experiment.config, experiment.override_args(assets))
    if path.parent.name == "ml100k":
        assert cfg.data.dataset == "ml-100k" and cfg.backbone.name == "minilm"
        assert cfg.data.protocol == {"p1": "p1", "p2": "p2", "p3": "p3"}[path.stem[:2]]
        assert cfg.adapter.method == ("frozen" if path.stem.endswith("idonly") else path.stem[3:])
        assert cfg.model.item_text == (not path.stem.endswith("idonly"))
    elif (
        path.parent.name == "sparse"
    ):  # frac<percent>_<model>: P1 of MovieLens-100K, as p1_lora / p1_idonly
        fraction, model = path.stem.removeprefix("frac").split("_", 1)
        assert (
            cfg.data.dataset == "ml-100k"
            and cfg.data.protocol == "p1"
            and cfg.backbone.name == "minilm"
        )
        assert cfg.data.train_fraction == SPARSE_FRACTIONS[fraction] and cfg.data.seed == 0
        assert cfg.backbone.init == ("random" if model == "lora_random" else "pretrained")
        assert cfg.adapter.method == ("frozen" if model == "idonly" else "lora")
        assert cfg.model.item_text == (model != "idonly")
    else:
        assert cfg.data.dataset == "files" and cfg.backbone.name.startswith("/x/")


def test_sparse_suite_runs_every_model_on_every_fraction_under_one_label_each():
    experiments = [load_experiment(p) for p in suite_files("sparse")]
    assert {e.name for e in experiments} == {
        f"frac{f}_{m}" for f in SPARSE_FRACTIONS for m in SPARSE_MODELS
    }
    labels = {
        m: {e.label for e in experiments if e.name.split("_", 1)[1] == m} for m in SPARSE_MODELS
    }
    assert all(
        len(found) == 1 and None not in found for found in labels.values()
    )  # one line per model
    assert len({next(iter(found)) for found in labels.values()}) == len(SPARSE_MODELS)


def test_ml100k_suite_covers_every_method_and_protocol():
    names = {p.stem for p in suite_files("ml100k")}
    methods = ("lora", "prefix", "top_layers", "full", "frozen", "idonly")
    assert names == {f"{p}_{m}" for p in ("p1", "p2", "p3") for m in methods}


def test_an_experiment_with_a_typo_or_an_unknown_placeholder_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: rating\nconfig: recipes/configs/minilm_lora_rating.yaml\noverides: {}\n")
    with pytest.raises(ExperimentError, match="overides"):
        load_experiment(bad)
    bad.write_text(
        "task: rating\nconfig: recipes/configs/minilm_lora_rating.yaml\n"
        "overrides: {backbone.name: '${tiny_bret}'}\n"
    )
    with pytest.raises(ExperimentError, match="tiny_bret"):
        load_experiment(bad)
    bad.write_text("task: rating\nconfig: recipes/configs/nope.yaml\n")
    with pytest.raises(ExperimentError, match=r"nope\.yaml"):
        load_experiment(bad)


# -- the report on hand-made results -------------------------------------------------------------


def make_record(
    name: str,
    task: str = "rating",
    protocol: str = "p1",
    label: str = "lora",
    headline: float = 0.9,
    trainable: int = 1000,
    **changes: Any,
) -> dict[str, Any]:
    key = "rmse" if task == "rating" else "ndcg@10"
    metrics = (
        {"rmse": headline, "mse": headline**2, "mae": 0.7}
        if task == "rating"
        else {"ndcg@10": headline, "hr@10": 0.2, "mrr": 0.05}
    )
    record = {
        "schema": report.SCHEMA,
        "name": name,
        "task": task,
        "status": "ok",
        "synthetic": False,
        "label": label,
        "method": label,
        "backbone": "minilm",
        "dataset": "ml-100k",
        "protocol": protocol,
        "seed": 0,
        "experiment": {
            "file": f"benchmarks/suites/ml100k/{name}.yaml",
            "config": "recipes/configs/x.yaml",
            "defaults": None,
            "overrides": {"adapter.method": label},
            "label": None,
        },
        "command": ["python", f"recipes/train_{task}.py"],
        "log": f"runs/{name}/log.txt",
        "config": {"data": {"dataset": "ml-100k", "protocol": protocol}, "ranking": {"k": 10}},
        "git": {"commit": "a" * 40, "dirty": False, "changed": []},
        "versions": {
            "python": "3.11",
            "torch": "2.13",
            "transformers": "5.24",
            "peft": "0.21",
            "accelerate": "1.15",
            "datasets": "5.2",
        },
        "hardware": {
            "cpu": "Test CPU",
            "logical_cores": 2,
            "usable_cores": 2,
            "torch_threads": 2,
            "memory_gib": 8,
            "gpus": [],
        },
        "parameters": {
            "trainable": trainable,
            "backbone_trainable": 0,
            "trainable_in_artifact": trainable,
            "total": MINILM,
            "trainable_percent": 100 * trainable / MINILM,
        },
        "adapter_bytes": 4 * trainable,
        "train": {
            "ratings_per_epoch": 80000,
            "median_epoch_seconds": 16.0,
            "ratings_per_second": 5000.0,
            "epochs_trained": 2,
            "best_epoch": 2,
            "num_processes": 1,
            "recipe_wall_seconds": 60.0,
        },
        "inference": {"scores_per_second": 2.0e7},
        "peak_memory_mib": 2048.0,
        "peak_memory_kind": "cpu_max_rss",
        "wall_seconds": 75.0,
        "load_average": {"before": 0.5, "after": 1.5},
        "valid": {key: headline + 0.01},
        "test": metrics,
        "history": [{"epoch": e, f"valid_{key}": headline + 0.1 / (e + 1)} for e in range(3)],
    }
    for dotted, value in changes.items():  # e.g. train__ratings_per_second=...
        target = record
        *parents, leaf = dotted.split("__")
        for part in parents:
            target = target[part]
        target[leaf] = value
    return record


def write_records(folder: Path, records: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        (folder / f"{record['name']}.json").write_text(json.dumps(record))
    return folder


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading``, as lists of cells."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


HAND_MADE = [
    make_record("p1_lora", label="lora", headline=0.912, trainable=269_315),
    make_record(
        "p1_full", label="full", headline=0.905, trainable=MINILM, train__ratings_per_second=800.0
    ),
    make_record("p1_idonly", label="ID-only MF", headline=0.940, trainable=140_000),
    make_record("p2_lora", protocol="p2", label="lora", headline=1.010),
    make_record("p3_lora", task="ranking", protocol="p3", label="lora", headline=0.080),
    make_record(
        "p3_frozen",
        task="ranking",
        protocol="p3",
        label="frozen",
        headline=0.085,
        trainable=120_000,
    ),
]


def test_report_tables_are_sorted_best_first_with_units(tmp_path):
    results = write_records(tmp_path / "results", HAND_MADE)
    text = report.write_report(results, tmp_path / "REPORT.md").read_text()
    p1 = table_rows(text, "## Rating prediction: ml-100k, P1")
    assert [row[0] for row in p1] == ["full", "lora", "ID-only MF"]  # lowest RMSE first
    assert p1[0][1] == "**0.9050**" and p1[1][1] == "0.9120"
    assert (
        p1[1][6] == "269,315" and p1[0][7] == "100.0%"
    )  # trainable params; % of all (capped by total)
    assert "2 GiB" in p1[0] and "1 min 15 s" in p1[0] and "800" in p1[0] and "20M" in p1[0]
    p3 = table_rows(text, "## Top-K ranking: ml-100k, P3")
    assert [row[0] for row in p3] == ["frozen", "lora"]  # highest NDCG first
    assert all(row[4] == "test" for row in p1 + p3)
    warm_cold = table_rows(text, "## Warm (P1) against cold-start items (P2)")
    assert ["lora", "minilm", "0.9120 (test)", "1.0100 (test)"] in warm_cold
    assert (
        "Test CPU, 2 usable of 2 logical cores" in text
        and "commit aaaaaaaaaa;" in text
        and "seed 0" in text
    )
    assert "full (minilm) has the best test RMSE, 0.9050" in text
    for name in ("p1_lora", "p1_full", "p1_idonly", "p2_lora", "p3_lora", "p3_frozen"):
        assert f"`{name}`" in text
    assert len(list(tmp_path.glob("REPORT_*.png"))) == 3
    assert (
        "Sparse data" not in text and "train fraction" not in text
    )  # every run on all training ratings


def sparse_record(
    model: str,
    fraction: float,
    rmse: float,
    ratings: int,
    init: str = "pretrained",
    label: str = "lora",
    cold: tuple[float, int] | None = None,
) -> dict[str, Any]:
    record = make_record(
        f"frac{round(100 * fraction):03d}_{model}",
        label=label,
        headline=rmse,
        train__ratings_per_epoch=ratings,
    )
    record["config"]["data"]["train_fraction"] = fraction
    record["config"]["backbone"] = {"init": init}
    if (
        cold is not None
    ):  # as the rating recipe reports the test ratings of items without training ratings
        record["test"]["rmse_cold_items"], record["test"]["count_cold_items"] = cold
    return record


def test_report_has_a_sparse_data_section_when_runs_differ_in_train_fraction(tmp_path):
    records = [
        sparse_record("lora", 0.01, 1.05, 797, cold=(1.21, 2400)),
        sparse_record(
            "lora_random", 0.01, 1.02, 797, init="random", cold=(1.19, 2400)
        ),  # same label
        sparse_record("idonly", 0.01, 1.10, 797, label="ID-only MF", cold=(1.30, 2400)),
        sparse_record("lora", 0.1, 0.99, 8001, cold=(1.10, 900)),
        sparse_record(
            "idonly", 0.1, 1.01, 8001, label="ID-only MF", cold=(1.20, 900)
        ),  # no lora_random at 10%
        sparse_record("lora", 1.0, 0.912, 80000, cold=(None, 0)),
        sparse_record("lora_random", 1.0, 0.930, 80000, init="random", cold=(None, 0)),
        sparse_record("idonly", 1.0, 0.913, 80000, label="ID-only MF", cold=(None, 0)),
    ]
    results = write_records(tmp_path / "results", records)
    text = report.write_report(results, tmp_path / "REPORT.md").read_text()
    header = [
        "train fraction",
        "training ratings",
        "test ratings of cold items",
        "lora",
        "ID-only MF",
        "lora, random init",
    ]  # models in the order of the most training ratings, best first
    assert "| " + " | ".join(header) + " |" in text
    assert table_rows(text, "## Sparse data") == [
        [
            "1%",
            "797",
            "2,400",
            "1.0500 (cold 1.2100)",
            "1.1000 (cold 1.3000)",
            "**1.0200** (cold 1.1900)",
        ],
        ["10%", "8,001", "900", "**0.9900** (cold 1.1000)", "1.0100 (cold 1.2000)", report.NA],
        ["100%", "80,000", "0", "**0.9120**", "0.9130", "0.9300"],
    ]
    assert "With 1% of the training ratings (797) lora, random init is best, 1.0200" in text
    assert "![Accuracy against the fraction of training ratings](REPORT_sparse.png)" in text
    assert (tmp_path / "REPORT_sparse.png").read_bytes().startswith(PNG)
    p1 = table_rows(
        text, "## Rating prediction: ml-100k, P1"
    )  # a fraction column; most ratings first
    assert [(row[0], row[1], row[2]) for row in p1[:3]] == [
        ("lora", "100%", "**0.9120**"),
        ("ID-only MF", "100%", "0.9130"),
        ("lora, random init", "100%", "0.9300"),
    ]
    assert [row[1] for row in p1] == ["100%"] * 3 + ["10%"] * 2 + ["1%"] * 3 and p1[-3][
        2
    ] == "**1.0200**"
    assert "with 100% of the training ratings, lora (minilm) has the best test RMSE, 0.9120" in text

    for record in records:  # a recipe without the cold-item split: no cold column, nothing fails
        for key in ("rmse_cold_items", "count_cold_items"):
            record["test"].pop(key)
    text = report.write_report(
        write_records(tmp_path / "older", records), tmp_path / "OLDER.md", plots=False
    ).read_text()
    assert table_rows(text, "## Sparse data")[0] == ["1%", "797", "1.0500", "1.1000", "**1.0200**"]
    assert "cold" not in text.split("## Sparse data", 1)[1].split("\n## ", 1)[0]


def seed_record(
    name: str, seed: int, rmse: float, protocol: str = "p1", label: str = "lora", **train: Any
) -> dict[str, Any]:
    """A rating run of ``train.seed=seed`` (``train``: other settings of the configuration)."""
    record = make_record(
        name, protocol=protocol, label=label, headline=rmse, seed=seed,
        train__ratings_per_second=1000.0 * (seed + 1),
    )  # fmt: skip
    record["config"]["train"] = {"seed": seed, "lr": 1e-3, **train}
    return record


def test_report_merges_the_seeds_of_one_configuration(tmp_path):
    """Runs that differ only in their seed are one row, in every table: mean ± std over the seeds
    (numpy's std) and their count; a run that differs in anything else keeps its own row."""
    import numpy as np

    records = [
        seed_record("p1_lora_s0", 0, 0.90),
        seed_record("p1_lora_s1", 1, 0.91),
        seed_record("p1_lora_s2", 2, 0.92),
        seed_record("p1_lora_lr", 0, 0.95, lr=1e-2),  # the same label, another configuration
        seed_record("p1_full", 0, 0.905, label="full"),
        seed_record("p2_lora_s0", 0, 1.01, protocol="p2"),
        seed_record("p2_lora_s1", 1, 1.02, protocol="p2"),
    ]
    results = write_records(tmp_path / "results", records)
    text = report.write_report(results, tmp_path / "REPORT.md").read_text()

    def cell(values: list[float], count: bool = True) -> str:
        counted = f" ({len(values)} seeds)" if count else ""  # not where a column counts them
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}{counted}"

    p1 = table_rows(text, "## Rating prediction: ml-100k, P1")
    assert "| method | seeds | RMSE ↓ | MSE | MAE | on | valid RMSE |" in text
    assert [row[:3] for row in p1] == [
        ["full", "1", "**0.9050**"],
        ["lora", "3", "0.9100 ± 0.0082"],
        ["lora", "1", "0.9500"],
    ]
    assert p1[1][3:7] == [
        cell([0.90**2, 0.91**2, 0.92**2], count=False),
        cell([0.7] * 3, count=False),
        "test",
        cell([0.91, 0.92, 0.93], count=False),
    ]
    assert p1[1][10] == "2k"  # the mean of the seeds' 1k, 2k and 3k training ratings/s
    warm_cold = table_rows(text, "## Warm (P1) against cold-start items (P2)")
    assert warm_cold == [
        ["full", "minilm", "0.9050 (test)", report.NA],
        ["lora", "minilm", f"{cell([0.90, 0.91, 0.92])} (test)", f"{cell([1.01, 1.02])} (test)"],
    ]
    assert "lora (minilm) has the best test RMSE, 1.0150 ± 0.0050 (2 seeds)" in text
    assert "are one row: mean ± std over the seeds, with their count" in text
    for name in (r["name"] for r in records):  # every run is still listed
        assert f"`{name}`" in text
    assert len(list(tmp_path.glob("REPORT_*.png"))) == 3

    sparse = [  # two seeds at 10%: one cell
        sparse_record("lora", 1.0, 0.912, 80000),
        sparse_record("lora", 0.1, 1.00, 8001),
        {**sparse_record("lora", 0.1, 1.02, 8001), "name": "frac010_lora_s1", "seed": 1},
    ]
    for record in sparse:
        record["config"]["train"] = {"seed": record["seed"]}
    text = report.write_report(
        write_records(tmp_path / "sparse", sparse), tmp_path / "SPARSE.md", plots=False
    ).read_text()
    assert table_rows(text, "## Sparse data") == [
        ["10%", "8,001", cell([1.00, 1.02])],
        ["100%", "80,000", "0.9120"],
    ]


def test_report_flags_failures_dirty_trees_load_and_validation_only_numbers(tmp_path):
    failed = {
        **make_record("p1_prefix"),
        "status": "failed",
        "returncode": 1,
        "log_tail": ["RuntimeError: boom"],
    }
    dirty = make_record(
        "p1_lora",
        git={"commit": "b" * 40, "dirty": True, "changed": ["peftrec/models/network.py"]},
        load_average={"before": 3.9, "after": 4.2},
    )
    valid_only = make_record("p1_top", label="top_layers", headline=0.95, test={})
    results = write_records(tmp_path / "results", [failed, dirty, valid_only])
    text = report.write_report(results, tmp_path / "REPORT.md", plots=False).read_text()
    assert (
        "## Failed experiments" in text and "`p1_prefix`" in text and "RuntimeError: boom" in text
    )
    assert "1 experiment(s) failed" in text
    assert "with uncommitted changes" in text and "load average 0.5 to 4.2 on 2 cores" in text
    rows = {row[0]: row for row in table_rows(text, "## Rating prediction: ml-100k, P1")}
    assert rows["top_layers"][1] == "0.9600" and rows["top_layers"][4] == "valid"
    assert "![" not in text and not list(tmp_path.glob("*.png"))


def test_report_has_a_slot_for_the_seed_style_baseline(tmp_path):
    results = write_records(tmp_path / "results", HAND_MADE[:1])
    text = report.write_report(results, tmp_path / "REPORT.md", plots=False).read_text()
    assert "## Seed-style baseline (benchmarks/speed.py)" in text and "Not measured here" in text
    speed = {
        "environment": {
            "model": "MiniLM",
            "data": "ml-100k P1",
        },  # in the results' parent, as speed.py writes
        "methods": {
            "lora": {
                "seed_style": {"ratings_per_second": 90.0},
                "peftrec": {"ratings_per_second": 5691.0},
                "ratios": {"ratings_per_second": 63.23},
            }
        },
    }
    (tmp_path / "speed_ml100k.json").write_text(json.dumps(speed))
    (tmp_path / "speed_ml100k.md").write_text("# speed\n")
    text = report.write_report(results, tmp_path / "REPORT.md", plots=False).read_text()
    assert "[`speed_ml100k.md`](speed_ml100k.md) (MiniLM, ml-100k P1)" in text
    assert ["lora", "90", "5.69k", "63.2x"] in table_rows(text, "## Seed-style baseline")
    (tmp_path / "speed_ml100k.json").write_text(json.dumps({"other": {"layout": 1.5}}))
    text = report.write_report(results, tmp_path / "REPORT.md", plots=False).read_text()
    assert ["`other.layout`", "1.5"] in table_rows(text, "## Seed-style baseline")


def test_report_ignores_other_json_and_refuses_an_empty_folder(tmp_path):
    (tmp_path / "notes.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="no benchmark results"):
        report.write_report(tmp_path, tmp_path / "REPORT.md")
    write_records(tmp_path, [copy.deepcopy(HAND_MADE[0])])
    assert [r["name"] for r in report.load_results(tmp_path)] == ["p1_lora"]


def test_number_formats():
    assert (
        report.fmt_si(1_234_567) == "1.23M"
        and report.fmt_si(950) == "950"
        and report.fmt_si(None) == report.NA
    )
    assert report.fmt_bytes(1536) == "1.5 KiB" and report.fmt_bytes(3 * 2**30) == "3 GiB"
    assert report.fmt_seconds(12.34) == "12.3 s" and report.fmt_seconds(125) == "2 min 05 s"
    assert report.fmt_seconds(3 * 3600 + 600) == "3 h 10 min"
    assert report.fmt_percent(0.0123) == "0.012%" and report.fmt_percent(1.2) == "1.20%"


def test_cold_items_bootstrap_resamples_whole_items_and_pairs_the_methods():
    import numpy as np

    from benchmarks.cold_items import interval, item_bootstrap

    rng = np.random.default_rng(1)
    items = rng.integers(0, 40, 2000)
    errors = rng.normal(0, 0.6, 40)[items] + rng.normal(
        0, 1, 2000
    )  # an item effect: ratings correlate
    boot = item_bootstrap(np.stack([errors, errors, 0.5 * errors]), items, resamples=300)
    point = np.sqrt(np.mean(errors**2))
    low, high = interval(boot[0])
    assert boot.shape == (3, 300) and low < point < high
    assert np.all(boot[1] == boot[0])  # an identical model: a zero-width paired difference
    assert np.all(boot[2] < boot[0])  # the same resampled items for every method
    assert np.allclose(
        item_bootstrap(errors, np.zeros(2000), resamples=20), point
    )  # one item: no spread
    per_rating = interval(item_bootstrap(errors, np.arange(2000), resamples=300)[0])
    assert high - low > 1.5 * (per_rating[1] - per_rating[0])  # items, not ratings, are the unit
    assert np.array_equal(
        item_bootstrap(errors, items, resamples=50), item_bootstrap(errors, items, resamples=50)
    )


def test_the_transfer_study_counts_auc_ties_as_the_metric_module_does():
    from types import SimpleNamespace

    from benchmarks.transfer import auc, paired
    from peftrec.metrics import load_metric

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(0.7 * rng.random(300) + 0.3 * labels, 1)  # probabilities, many ties
    expected = load_metric("preference").compute(predictions=scores, references=labels)["auc"]
    assert auc(scores, labels) == pytest.approx(expected, abs=1e-12)
    test = SimpleNamespace(labels=labels)
    same = paired(test, [scores], [scores], rng)
    assert same == (0.0, 0.0, 0.0)
    gap, low, high = paired(test, [scores], [rng.random(300)], rng)
    assert low < gap < high and gap > 0.05


def test_the_scale_benchmark_runs_and_reports_each_operation(tmp_path):
    """benchmarks/scale.py --quick: one small catalogue per kind of user, measured in-process."""
    from benchmarks import scale

    scale.main(["--quick", "--out", str(tmp_path / "scale.md")])
    data = json.loads((tmp_path / "scale.json").read_text())
    assert [r["task"] for r in data["results"]] == list(scale.MODELS) and data["quick"]
    for r in data["results"]:
        assert r["items"] == scale.QUICK["sizes"][0] and r["users"] == scale.QUICK["users"]
        for key in ("add_item", "change_item", "interaction", "recommend"):
            assert r[key]["count"] == scale.QUICK["repeats"] and r[key]["median_ms"] > 0
        assert r["all_users_s"] > 0 and r["peak_rss_mib"] >= r["rss_after_load_mib"] > 0
    text = (tmp_path / "scale.md").read_text()
    assert "| 2,000 |" in text and "users are their histories" in text and "Machine: " in text
    if scale.index_available():  # the approximate index, timed and checked against exact
        for r in data["results"]:
            index = r["index"]
            assert 1 <= index["probes"] <= index["lists"] and index["recommend"]["median_ms"] > 0
            assert 0.5 < index["recall_at_10"] <= 1.0
        assert "With the approximate index" in text


def test_the_ml1m_study_runs_resolve_and_its_report_says_what_has_not_run(tmp_path, monkeypatch):
    from benchmarks import ml1m

    runs = ml1m.study_runs()
    assert {f"{m}_s{s}" for m in ("idonly", "frozen") for s in ml1m.SEEDS} <= set(runs)
    for name, run in runs.items():
        cfg = load_config(SCHEMAS[run.task], run.config_path, list(run.overrides))
        dataset = "ml-100k" if name.endswith("ml100k") else "ml-1m"
        assert cfg.data.dataset == dataset and cfg.data.protocol == (
            "p1" if run.task == "rating" else "p3"
        )
        if run.task == "sequential":
            assert cfg.sequence.max_history == 200 and cfg.sequence.loss == "softmax"
            assert cfg.model.item_text == name.startswith(("frozen", "cost"))
    monkeypatch.setattr(ml1m, "RUNS", tmp_path / "runs")
    done = tmp_path / "runs" / "idonly_s0"
    done.mkdir(parents=True)
    metrics = {
        "test_ndcg@10": 0.1712, "test_hr@10": 0.3011, "test_mrr": 0.15, "valid_ndcg@10": 0.18,
        "best_epoch": 40, "trainable_parameters": 304250, "median_epoch_seconds": 36.0,
        "wall_seconds": 3000.0, "peak_memory_mib": 2000.0, "history": [],
    }  # fmt: skip
    (done / "metrics.json").write_text(json.dumps(metrics))
    text = ml1m.report(runs, "a machine")
    assert "| ID-only SASRec-CE | 0.1712 | 0.3011 |" in text and "0.1712 (1 seed)" in text
    assert "| MiniLM frozen, text + ID | not run |" in text and "No seed has both rows" in text
    assert "*0.1780*" in text  # the published row


def test_the_recency_study_scores_the_written_down_rule_as_the_continual_study_does(ml100k):  # noqa: F811
    """benchmarks.recency pairs the model with the rule per target; its per-target rule gives
    the continual study's mean (0.2371 on ml-100k)."""
    import torch

    from benchmarks.continual import UPDATES, next_rows, popularity
    from benchmarks.recency import ndcg, paired, rule_scores
    from peftrec.tasks.ranking.step import seen_mask

    inter = ml100k.interactions
    shape = len(ml100k.user_ids), len(ml100k.item_ids)
    means = []
    for t in UPDATES:
        test, before = next_rows(ml100k, "sequential", t)
        mask = seen_mask(inter.users[before], inter.items[before], *shape)[inter.users[test]]
        assert isinstance(mask, torch.Tensor)
        means.append(ndcg(rule_scores(ml100k, t, test, before), inter.items[test], mask).mean())
    assert np.mean(means) == pytest.approx(popularity(ml100k, "new", True), abs=1e-9)
    same = np.array([0.5, 0.0, 1.0, 0.25])
    assert paired(same, same, np.array([1, 1, 2, 3])) == (0.0, 0.0, 0.0)
