"""What every benchmark ends with: the machine it ran on, its report written, recipes launched.

- the machine: :func:`hardware` (the record: CPU, cores, torch threads, memory, GPUs),
  :func:`versions` (python and the packages) and :func:`hardware_line` (the sentence a report
  prints);
- seeds: :func:`fmt_seeds`, the cell of a configuration run with several seeds (mean ± std over
  them, and how many);
- the report: :func:`write_report` prints the Markdown and writes it with its JSON and plot, each
  file atomically (:func:`write_atomic`, :func:`save_figure`), so an interrupted study never
  leaves half a file where the last good one was;
- a recipe run: :func:`launch_recipe` runs ``recipes/train_<task>.py`` as a subprocess (the
  command a user types), keeps its output in ``<out>/log.txt`` and its wall time in
  ``<out>/process.json``, skips a run whose ``metrics.json`` exists, and on failure says so with
  the end of the log.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "numpy", "peftrec")
TAIL_LINES = 40  # of a failed recipe's log, in its error and its benchmark record


# -- the machine -------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    """Python's version and each package's in :data:`PACKAGES` (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def hardware() -> dict[str, Any]:
    """The machine: CPU model, cores (all, and those this process may use), torch's threads,
    memory and GPUs."""
    import torch

    cpu = platform.processor() or platform.machine()
    memory_gib = None
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in info.splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
        meminfo = Path("/proc/meminfo").read_text().split()
        memory_gib = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "platform": platform.platform(),
    }


def hardware_line(
    hw: dict[str, Any] | None = None, *, threads: str | int | None = None, load: bool = False
) -> str:
    """The machine in one phrase: "AMD EPYC 7B13 (x86_64), 2 usable of 2 logical cores, 1 torch
    thread(s), 23.5 GiB RAM, no GPU". ``hw``: a :func:`hardware` record (default: this machine's
    now); ``threads``: what to say instead of its torch threads (several runs' threads, say);
    ``load``: add the 1-minute load average (a shared machine slows everything)."""
    hw = hardware() if hw is None else hw
    machine = hw.get("machine")
    cpu = hw["cpu"] + (f" ({machine})" if machine and machine not in hw["cpu"] else "")
    parts = [
        cpu,
        f"{hw['usable_cores']} usable of {hw['logical_cores']} logical cores",
        f"{hw['torch_threads'] if threads is None else threads} torch thread(s)",
        *([f"{hw['memory_gib']} GiB RAM"] if hw.get("memory_gib") else []),
        ", ".join(hw.get("gpus") or []) or "no GPU",
    ]
    if load:
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    return ", ".join(parts)


# -- seeds -------------------------------------------------------------------------------------


def fmt_seeds(
    values: Sequence[float],
    seeds: Sequence[int] | None = None,
    digits: int = 4,
    count: bool = True,
) -> str:
    """One configuration's number: the value of a single run (with its seed when ``seeds`` is
    given), or mean ± std over several seeds and (``count``: unless a column says it) how many,
    "0.1034 ± 0.0016 (3 seeds)". The std is the spread of the seeds' values (numpy's, ddof 0), as
    every study here reports it."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}" + (f" (seed {seeds[0]})" if seeds else "")
    mean, std = float(np.mean(values)), float(np.std(values))
    return f"{mean:.{digits}f} ± {std:.{digits}f}" + (f" ({len(values)} seeds)" if count else "")


# -- the report --------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def save_figure(figure, path: Path, dpi: int = 120, **savefig: Any) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically, and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        figure.savefig(tmp, format="png", dpi=dpi, **savefig)
        tmp.replace(path)
    finally:
        plt.close(figure)
    return path


def write_report(
    out: Path | None,
    markdown: str,
    data: Any = None,
    figure: Any = None,
    *,
    echo: bool = True,
) -> list[Path]:
    """A study's ending: print ``markdown`` (``echo``) and, when ``out`` is given, write it there,
    ``data`` as ``out`` with ``.json`` and ``figure`` (a matplotlib figure) as ``out`` with
    ``.png``; the plot and the JSON first, so the Markdown never names a file not yet written.
    Returns the paths written."""
    if echo:
        print(markdown, flush=True)
    if out is None:
        if figure is not None:
            import matplotlib.pyplot as plt

            plt.close(figure)
        return []
    written = []
    if figure is not None:
        written.append(save_figure(figure, out.with_suffix(".png")))
    if data is not None:
        text = json.dumps(data, indent=2, default=str)
        written.append(write_atomic(out.with_suffix(".json"), text))
    written.append(write_atomic(out, markdown if markdown.endswith("\n") else markdown + "\n"))
    return written


# -- a recipe run ------------------------------------------------------------------------------


class RecipeFailed(RuntimeError):
    """A recipe exited with an error, or without writing its ``metrics.json``."""


@dataclass
class RecipeRun:
    """One recipe launched (or found done) in ``out``: its command, exit status, wall time and
    ``metrics.json``."""

    out: Path
    command: list[str]
    returncode: int
    seconds: float | None
    """The whole process, start-up and saving included (None: done before and not timed)."""
    metrics: dict[str, Any] | None
    """The recipe's ``metrics.json`` (None when it failed)."""
    skipped: bool = False
    """Found done (its ``metrics.json`` existed), not run again."""
    tail: list[str] = field(default_factory=list)
    """The last lines of its log, when it failed."""

    @property
    def log(self) -> Path:
        return self.out / "log.txt"

    @property
    def ok(self) -> bool:
        return self.metrics is not None

    def results(self) -> dict[str, Any]:
        """``metrics.json`` with the process's wall time as ``process_seconds``."""
        if self.metrics is None:
            raise RecipeFailed(self.failure())
        return {**self.metrics, "process_seconds": self.seconds}

    def failure(self) -> str:
        return (
            f"{self.out}: the recipe failed (exit status {self.returncode}); the end of "
            f"{self.log}:\n" + "\n".join(self.tail)
        )


def recipe_command(
    task: str, config: Path | str, out: Path, overrides: Sequence[str] = ()
) -> list[str]:
    """The command line of ``task``'s recipe: ``python recipes/train_<task>.py --config CONFIG
    key=value ... output_dir=OUT``."""
    from peftrec.tasks import TASKS

    recipe = TASKS[task].recipe_path()
    return [sys.executable, str(recipe), "--config", str(config), *overrides, f"output_dir={out}"]


def launch_recipe(
    task: str,
    config: Path | str,
    out: Path,
    overrides: Sequence[str] = (),
    *,
    reuse: bool = True,
    echo: bool = False,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> RecipeRun:
    """Run ``task``'s recipe with ``config`` and ``overrides`` into ``out`` (its
    ``output_dir``), from the repository root, as a subprocess.

    ``reuse``: a run whose ``metrics.json`` exists is not run again (a study continues where
    it stopped); without it a stale ``metrics.json`` is removed first, so it cannot pass for this
    run's. The output goes to ``out/log.txt`` (``echo``: to our stdout too, live), the process's
    wall time to ``out/process.json``. ``check``: raise :class:`RecipeFailed`, with the end of
    the log, when the recipe fails; else return the failed run (``metrics`` None, ``tail``)."""
    out = Path(out)
    command = recipe_command(task, config, out, overrides)
    metrics_file, process_file = out / "metrics.json", out / "process.json"
    if reuse and metrics_file.is_file():
        seconds = (
            json.loads(process_file.read_text())["seconds"] if process_file.is_file() else None
        )
        metrics = json.loads(metrics_file.read_text())
        return RecipeRun(out, command, 0, seconds, metrics, skipped=True)
    metrics_file.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    returncode = _stream(command, out / "log.txt", os.environ if env is None else env, echo)
    seconds = time.perf_counter() - tick
    if returncode == 0 and metrics_file.is_file():
        write_atomic(process_file, json.dumps({"seconds": seconds}))
        return RecipeRun(out, command, 0, seconds, json.loads(metrics_file.read_text()))
    tail = (out / "log.txt").read_text(errors="replace").splitlines()[-TAIL_LINES:]
    run = RecipeRun(out, command, returncode, seconds, None, tail=tail)
    if check:
        raise RecipeFailed(run.failure())
    return run


def _stream(command: list[str], log: Path, env: dict[str, str], echo: bool) -> int:
    """Run ``command`` from the repository root, its output (stdout and stderr) into ``log``
    and, with ``echo``, live to our stdout; its exit status."""
    with (
        open(log, "wb") as f,
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc,
    ):
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            f.write(chunk)
        return proc.wait()
