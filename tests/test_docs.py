"""The README and the docs show only what is real.

The quick start and the setup by hand are the commands `make` and CI run; every recipe launch line
shown is accepted by the recipe's own start-up checks; every `peftrec` command and option, every
`make` target, every `python -m benchmarks.<name>` and every `rec.<method>(...)` exists; every
recipe, config, benchmark or test path named exists. The site itself is built with
`mkdocs build --strict` by `make docs` (in CI).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# docs/benchmarks links to benchmarks/ (generated reports): only the pages written for the site
SITE_PAGES = (ROOT / "docs").rglob("*.md")
PAGES = [README, *sorted(p for p in SITE_PAGES if "benchmarks" not in p.relative_to(ROOT).parts)]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def section(path: Path, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of any level."""
    text = path.read_text()
    start = text.index(f"{heading}\n") + len(heading)
    end = re.search(r"^#+ ", text[start:], re.M)
    return text[start : start + end.start()] if end else text[start:]


def commands(text: str, lang: str = "bash") -> list[list[str]]:
    """The commands of the fenced `lang` blocks: continuation lines joined, comments dropped."""
    out = []
    for block_lang, body in FENCE.findall(text):
        if block_lang == lang:
            for line in body.replace("\\\n", " ").splitlines():
                if words := shlex.split(line, comments=True):
                    out.append(words)
    return out


def make_dry_run(target: str) -> list[list[str]]:
    """What `make <target>` runs from scratch (-B: every step, -n: print, do not run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    for name in ("PYTHON", "VENV", "BIN"):  # the Makefile's own defaults, as a fresh clone has
        env.pop(name, None)
    run = subprocess.run(
        ["make", "-n", "-B", target], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return [shlex.split(line) for line in run.stdout.splitlines() if line.strip()]


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) < 250


def test_quick_start_is_what_ci_runs():
    shown = commands(section(README, "## Quick start"))
    assert shown == [["make", "demo"], ["make", "test"]]
    assert shown == commands(section(ROOT / "docs/getting-started.md", "## Quick start"))
    ci = [line.split() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert ["make", "test"] in ci
    assert [["make", "test"], ["make", "lint"], ["make", "docs"]] == [
        c for c in ci if c[:1] == ["make"]
    ]
    assert any(
        Path(c[-3]).name == "mkdocs" and c[-2:] == ["build", "--strict"]
        for c in make_dry_run("docs")
        if len(c) >= 3
    )


def test_setup_by_hand_is_what_make_test_runs():
    """The README's commands, in order, are `make test`'s from a fresh clone (less --quiet)."""
    by_hand = commands(section(README, "### Setting up by hand"))
    assert by_hand == commands(section(ROOT / "docs/getting-started.md", "## Setting up by hand"))
    made = [
        [w for w in cmd if w != "--quiet"]
        for cmd in make_dry_run("test")
        if cmd[0] != "touch"  # make's own timestamp
    ]
    assert by_hand == made


def test_make_targets_shown_exist():
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
    shown = {cmd[1] for page in PAGES for cmd in commands(page.read_text()) if cmd[0] == "make"}
    assert shown and shown <= targets


def test_named_paths_exist():
    pattern = re.compile(r"(?<![\w./-])((?:\.ci|benchmarks|docs|peftrec|recipes|tests)/[\w./*-]*)")
    missing = []
    for page in PAGES:
        for path in pattern.findall(page.read_text()):
            path = path.rstrip(".")
            if path.endswith(("_", "/<")) or "<" in path:  # placeholders: `recipes/train_<task>.py`
                continue
            if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing


def test_benchmarks_shown_run_as_modules():
    """A benchmark runs as `python -m benchmarks.<name>` from the repository root, never by its
    path: every one shown (here and in benchmarks/README.md) is a module of the package that
    runs as a script."""
    shown = set()
    for page in [*PAGES, ROOT / "benchmarks" / "README.md"]:
        text = page.read_text()
        assert not re.search(r"python3? benchmarks/", text), page.relative_to(ROOT)
        shown |= set(re.findall(r"python3? -m benchmarks\.(\w+)", text))
    assert (ROOT / "benchmarks" / "__init__.py").is_file() and len(shown) >= 8
    for name in shown:
        module = ROOT / "benchmarks" / f"{name}.py"
        assert 'if __name__ == "__main__":' in module.read_text(), name


def test_config_names_exist():
    configs = ROOT / "recipes" / "configs"
    pattern = re.compile(r"(?<![\w./<-])((?:minilm|gpt2)_[\w*<>{},]+)")
    missing = []
    for page in PAGES:
        for name in pattern.findall(page.read_text()):
            if "<" in name or "{" in name:  # `minilm_<method>_{rating,ranking,...}`
                continue
            name = name.rstrip(",")
            if not list(configs.glob(f"{name}.yaml")):
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert not missing


def launched_recipe(cmd: list[str]) -> tuple[str, int] | None:
    """The task of a recipe launch line and where the recipe's own arguments start: a recipe's
    file (`recipes/train_<task>.py`), its module (`-m peftrec_recipes.train_<task>`) or
    `peftrec train <task>`."""
    for k, word in enumerate(cmd):
        for prefix in ("recipes/train_", "peftrec_recipes.train_"):
            if word.startswith(prefix):
                return word.removeprefix(prefix).removesuffix(".py"), k + 1
    if Path(cmd[0]).name == "peftrec" and cmd[1:2] == ["train"] and len(cmd) > 2:
        return cmd[2], 3
    return None


def test_recipe_launch_lines_pass_start_up_checks():
    """Each `python|accelerate launch|torchrun recipes/train_*.py --config ... key=value` shown,
    `accelerate launch -m peftrec_recipes.train_*` and `peftrec train <task>` alike, loads its
    config (a file, or a shipped config's name) with its overrides and passes the checks a
    recipe runs before training."""
    from peftrec.config import check_settings, load_config
    from peftrec.shipped import find_config
    from peftrec.tasks import TASKS

    checked, by_name = 0, 0
    for page in PAGES:
        for cmd in commands(page.read_text()):
            launched = launched_recipe(cmd)
            if launched is None or "--help" in cmd:
                continue
            task, start = launched
            assert task in TASKS, f"{page.name}: {cmd}"
            args = cmd[start:]
            config = args[args.index("--config") + 1] if "--config" in args else None
            if config is not None:
                by_name += not config.endswith(".yaml")
                config = ROOT / config if (ROOT / config).is_file() else find_config(config)
            overrides = [a for a in args if "=" in a and not a.startswith("-")]
            check_settings(load_config(TASKS[task].config, config, overrides))
            checked += 1
    assert checked >= 10 and by_name >= 5


def test_peftrec_commands_shown_exist():
    from peftrec.cli import parser

    main = parser()
    sub = next(a for a in main._actions if isinstance(a, argparse._SubParsersAction)).choices
    checked = 0
    for page in PAGES:
        for cmd in commands(page.read_text()):
            if Path(cmd[0]).name != "peftrec":
                continue
            command = sub.get(cmd[1], main if cmd[1].startswith("-") else None)
            assert command is not None, f"{page.name}: peftrec {cmd[1]}"
            flags = {w.split("=")[0] for w in cmd[1:] if w.startswith("-") and w != "-"}
            assert flags <= set(command._option_string_actions), f"{page.name}: {cmd}"
            checked += 1
    assert checked >= 10


def test_app_calls_shown_exist():
    import peftrec

    calls = {
        name
        for page in PAGES
        for _, body in FENCE.findall(page.read_text())
        for name in re.findall(r"\brec\.(\w+)\(", body)
    }
    assert len(calls) >= 10
    assert {name for name in calls if not hasattr(peftrec.Recommender, name)} == set()
