"""Every shipped recipe config parses under its recipe's schema and names its launch command."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from peftrec.config import AdapterConfig, load_config
from peftrec.tasks import TASKS

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))
SCHEMAS = {name: (task.config, f"recipes/{task.recipe}") for name, task in TASKS.items()}


def test_configs_are_shipped_for_every_task():
    assert {path.stem.rsplit("_", 1)[1] for path in CONFIGS} == set(SCHEMAS)


def test_every_method_has_a_config_for_every_task():
    methods = typing.get_args(typing.get_type_hints(AdapterConfig)["method"])
    shipped = {
        (load_config(SCHEMAS[task][0], path).adapter.method, task)
        for path in CONFIGS
        for task in [path.stem.rsplit("_", 1)[1]]
    }
    assert {(method, task) for method in methods for task in SCHEMAS} <= shipped


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_parses(path):
    schema, recipe = SCHEMAS[path.stem.rsplit("_", 1)[1]]
    cfg = load_config(schema, path)
    header = path.read_text().splitlines()[:4]
    assert any(f"{recipe} --config recipes/configs/{path.name}" in line for line in header), (
        path.name
    )
    assert cfg.output_dir.endswith(path.stem), "output_dir names the config"
    # <backbone>_<method>[_<variant>]_<task>: the variant names what else the config sets
    backbone, middle = path.stem.split("_")[0], path.stem.split("_", 1)[1].rsplit("_", 1)[0]
    assert (
        middle == "idonly"
        or (middle.startswith("idonly_") and not cfg.model.item_text)
        or middle == cfg.adapter.method
        or middle.startswith(f"{cfg.adapter.method}_")
    )
    assert backbone in cfg.backbone.name
