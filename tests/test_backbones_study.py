"""The backbone study's bookkeeping (benchmarks/backbones.py): its runs, its log reading and its
paired differences, on hand-made values (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import backbones_runs as backbones
from benchmarks.backbones_runs import Run, encoding_seconds, paired, planned


def test_every_planned_run_has_a_shipped_config_and_its_own_folder():
    runs = planned()
    assert len({r.name for r in runs}) == len(runs)
    assert all(r.config.is_file() for r in runs)
    assert all(r.name.replace("_", "").isalnum() for r in runs)
    for study, spec in backbones.STUDIES.items():
        for backbone in backbones.BACKBONES:
            assert {
                r.seed for r in runs if (r.study, r.backbone, r.variant) == (study, backbone, "")
            } == set(spec.seeds)


def test_the_encoding_time_is_read_from_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "RUNS", tmp_path)
    run = Run("p3", "mpnet", 0)
    run.folder.mkdir()
    (run.folder / "log.txt").write_text(
        "23:59:50 INFO peftrec.models.backbones: loaded backbone mpnet-base (mpnet, 1 parameters)\n"
        "epoch 1: ...\n"
        "00:01:05 INFO peftrec.training.recipe: trainable parameters: 5 (backbone 0, ...)\n"
    )
    assert encoding_seconds(run) == 75.0
    assert encoding_seconds(Run("p3", "minilm", 0)) is None  # no log


def test_paired_differences_are_the_metric_differences_with_an_interval_around_them():
    rng = np.random.default_rng(0)
    base = [rng.uniform(0, 0.3, 943) for _ in range(3)]
    better = [b + 0.01 for b in base]
    point, low, high = paired("p3", better, base, np.arange(943))
    assert (
        point == pytest.approx(0.01) and low == pytest.approx(0.01) and high == pytest.approx(0.01)
    )

    items = rng.integers(0, 50, 2000)
    errors = [rng.uniform(0, 2, 2000) for _ in range(2)]
    worse = [e * 1.1 for e in errors]
    point, low, high = paired("p2", worse, errors, items)
    expected = np.mean(
        [np.sqrt(w.mean()) - np.sqrt(e.mean()) for w, e in zip(worse, errors, strict=True)]
    )
    assert point == pytest.approx(expected) and 0 < low <= point <= high
