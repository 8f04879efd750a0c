"""The shipped recipes and configs: found beside the package, by name; ``peftrec train`` and
``peftrec configs`` on them. A whole ``peftrec train`` run, installed, is in test_install.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftrec import cli
from peftrec.shipped import (
    CONFIGS,
    RECIPES,
    config_names,
    config_task,
    find_config,
    load_recipe,
    recipe_tasks,
)
from peftrec.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]


def test_a_checkout_runs_its_own_recipes():
    assert RECIPES == ROOT / "recipes" and CONFIGS == ROOT / "recipes" / "configs"
    assert recipe_tasks() == sorted(TASKS)
    assert all((RECIPES / task.recipe).is_file() for task in TASKS.values())
    assert set(config_names()) == {p.stem for p in CONFIGS.glob("*.yaml")}
    assert {config_task(name) for name in config_names()} == set(TASKS)
    assert "minilm_frozen_sequential" in config_names("sequential")
    assert not [name for name in config_names("rating") if not name.endswith("_rating")]


def test_a_config_is_a_file_or_a_shipped_name(tmp_path, monkeypatch):
    shipped = CONFIGS / "minilm_frozen_sequential.yaml"
    assert find_config("minilm_frozen_sequential") == shipped
    assert find_config("minilm_frozen_sequential.yaml") == shipped
    mine = tmp_path / "minilm_frozen_sequential.yaml"
    mine.write_text("train:\n  epochs: 1\n")
    assert find_config(mine) == mine
    monkeypatch.chdir(tmp_path)  # a file of that name here is the user's, not the shipped one
    assert find_config("minilm_frozen_sequential.yaml") == Path("minilm_frozen_sequential.yaml")
    with pytest.raises(FileNotFoundError, match="did you mean minilm_frozen_sequential"):
        find_config("minilm_frozen_sequentail")
    with pytest.raises(FileNotFoundError, match="no such file, nor a shipped config"):
        find_config("configs/minilm_frozen_sequential")  # a path is never looked up by name


def test_a_recipe_loads_as_a_module_with_its_main():
    recipe = load_recipe(TASKS["rating"].recipe)
    assert recipe.__name__ == "peftrec_recipes.train_rating" and callable(recipe.main)
    with pytest.raises(FileNotFoundError, match="no such recipe"):
        load_recipe("train_nothing.py")


def test_configs_lists_the_shipped_configs_by_task(capsys):
    assert cli.main(["configs"]) == 0
    out = capsys.readouterr().out
    assert str(CONFIGS) in out and all(f"\n{task}:\n" in out for task in TASKS)
    assert all(f"  {name}\n" in out for name in config_names())
    assert cli.main(["configs", "preference"]) == 0
    out = capsys.readouterr().out
    assert "  minilm_frozen_preference\n" in out and "rating" not in out


def test_train_reports_the_recipes_refusal_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "rating",
        "--config",
        "minilm_lora_rating",
        "train.lr=-1e-3",
        f"output_dir={out}",
    ]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "peftrec train rating: error: train.lr=-0.001: must be a positive number\n"
    )
    with pytest.raises(SystemExit) as stop:  # the recipe's argument parser, named as the command
        cli.main(["train", "rating", "--config", "minilm_lora_ratin", f"output_dir={out}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "usage: peftrec train rating " in err and "did you mean minilm_lora_rating" in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        cli.main(["train", "nothing"])
    assert "invalid choice: 'nothing'" in capsys.readouterr().err
