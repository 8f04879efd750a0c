"""The recipes and configs peftrec ships, found beside the package and loaded by name.

    peftrec train sequential --config minilm_frozen_sequential train.epochs=3
    peftrec configs

A wheel installs the repository's ``recipes/`` as the package ``peftrec_recipes`` (``setup.py``),
its configs as package data; a source checkout keeps ``recipes/`` beside ``peftrec/``. Either way
the recipes sit next to this package, so the ``peftrec`` that runs uses its own recipes (never
another checkout's, nor another library's ``recipes``), as torchtune's ``tune run`` does.
Nothing here imports a recipe at import time: building blocks never depend on recipes.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

_ROOT = Path(__file__).resolve().parents[1]
RECIPES = next(
    (
        _ROOT / name
        for name in ("peftrec_recipes", "recipes")  # installed, source checkout
        if (_ROOT / name / "__init__.py").is_file()
    ),
    _ROOT / "recipes",
)
"""The folder of the recipes (``train_<task>.py``) and their configs (``configs/*.yaml``)."""
CONFIGS = RECIPES / "configs"


def recipe_tasks() -> list[str]:
    """The tasks a shipped recipe trains (``train_<task>.py``), sorted."""
    return sorted(path.stem.removeprefix("train_") for path in RECIPES.glob("train_*.py"))


def config_task(name: str) -> str:
    """The task a shipped config is for: the last part of its name (``..._<task>``)."""
    return name.rsplit("_", 1)[-1]


def config_names(task: str | None = None) -> list[str]:
    """The shipped configs' names (file names without ``.yaml``), sorted; those of ``task`` only
    if given."""
    names = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
    return [name for name in names if task is None or config_task(name) == task]


def find_config(name_or_path: str | Path) -> Path:
    """``--config``: a YAML file, or else the name of a shipped config (``minilm_lora_rating``,
    with or without ``.yaml``). FileNotFoundError names the close matches."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.name == str(name_or_path):  # a bare name: no folder in it
        shipped = CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path}.yaml")
        if shipped.is_file():
            return shipped
    close = difflib.get_close_matches(path.stem, config_names(), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise FileNotFoundError(
        f"--config {name_or_path}: no such file, nor a shipped config of that name "
        f"(`peftrec configs` lists them){hint}"
    )


def load_recipe(file: str) -> ModuleType:
    """The recipe ``file`` (``train_rating.py``) as a module, for its ``main(argv)``: the same
    function ``accelerate launch`` runs, called in this process."""
    path = RECIPES / file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such recipe (is peftrec installed whole?)")
    spec = importlib.util.spec_from_file_location(f"peftrec_recipes.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
