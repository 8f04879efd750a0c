"""What the library runs, it ships: ``pip install`` (not editable) into a fresh venv, then, from a
folder outside the repository, ``peftrec train`` runs a shipped recipe with a shipped config by
name and ``peftrec update`` continues the model it saved.

Offline: the wheel is built with this interpreter's setuptools (no build isolation) from a copy of
the sources (the checkout gets no ``build/``), installed without dependencies into a venv that
sees this interpreter's site-packages (torch and the rest) through a ``.pth`` file written after
the install, so pip sees an empty environment and no peftrec but the wheel's is importable.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from .recipes.test_train_rating import tiny_overrides
from .recipes.test_update import NEW_USERS, grown

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "peftrec", "recipes")  # what a build reads


def run(command: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with peftrec installed from its wheel, and this interpreter's packages."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    ok(run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source], tmp))
    (wheel,) = (tmp / "dist").glob("peftrec-*.whl")
    venv = tmp / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    if made.returncode != 0:
        pytest.skip(f"this Python cannot create a venv: {made.stderr.strip()[-500:]}")
    python = venv / "bin" / "python"
    ok(run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], tmp))
    purelib = ok(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp))
    dependencies = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return venv


def test_installed_peftrec_trains_by_name_and_updates(venv, tmp_path, toy_files, tiny_bert):
    work = tmp_path / "elsewhere"  # outside the repository: nothing of the checkout is found
    work.mkdir()
    peftrec, python = venv / "bin" / "peftrec", venv / "bin" / "python"
    where = ok(
        run(
            [
                python,
                "-c",
                "import peftrec, peftrec_recipes, peftrec.shipped as s; "
                "print(peftrec.__file__, peftrec_recipes.__file__, s.RECIPES, sep='\\n')",
            ],
            work,
        )
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    assert Path(where[2]).name == "peftrec_recipes"

    listed = ok(run([peftrec, "configs", "sequential"], work)).stdout
    assert "  minilm_frozen_sequential\n" in listed and "rating" not in listed

    # one process: the recipe's main, in the peftrec process
    out = work / "runs" / "tiny"
    tiny = [*tiny_overrides(toy_files, tiny_bert, out), "train.epochs=1"]
    trained = ok(run([peftrec, "train", "rating", "--config", "minilm_lora_rating", *tiny], work))
    assert f"model saved to {out / 'model'}" in trained.stdout and "test RMSE" in trained.stdout
    assert "adapter:\n  method: lora" in (out / "config.yaml").read_text()  # the shipped config

    # several processes: Accelerate launches the installed recipe as a module
    accelerate = [python, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    defaults = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    recipe = ["-m", "peftrec_recipes.train_rating", "--help"]
    launched = ok(run([*accelerate, *defaults, *recipe], work))
    assert "--config FILE" in launched.stdout

    data = grown(work, toy_files, NEW_USERS)
    today = work / "today"
    command = [peftrec, "update", out / "model", "--data", data, "--out", today, "--epochs", "1"]
    updated = ok(run(command, work))
    assert f"model saved to {today}" in updated.stdout
    spec = json.loads((today / "peftrec.json").read_text())["spec"]
    assert spec["parent"]["mode"] == "continue" and spec["head"]["num_users"] == 32
