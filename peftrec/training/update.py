"""``peftrec update``: a saved model continued on new interactions, written as a new model.

    peftrec update runs/yesterday/model --data interactions.csv --out runs/today/model

A warm start (``train.init_from``) of the recipe of the model's task, run with the model's own
resolved config (its ``config.yaml``) pointed at the files, trained for production
(``data.protocol=all``: every interaction but a 5% validation share) for ``epochs``. The items
are the model's catalogue (ids, fields and texts) unless ``items`` names an items file. Every
input is checked before training starts, and the new folder appears only once the run succeeded:
a refused or failed update writes nothing. The recipe is the one shipped with peftrec, found as
``peftrec train`` finds it; its ``main(argv)`` runs in this process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from peftrec.app.state import StateError
from peftrec.artifact.folder import check_folder, read_json
from peftrec.artifact.vectors import CUT_FILE
from peftrec.config import load_config
from peftrec.data.errors import DataError
from peftrec.data.text import render_texts
from peftrec.files import write_folder_atomic
from peftrec.shipped import load_recipe
from peftrec.tasks import task_of
from peftrec.training.recipe import USER_ERRORS
from peftrec.training.served_data import TEXT_FIELD, served_data

logger = logging.getLogger(__name__)


class UpdateError(ValueError):
    """An update that cannot run as asked: nothing was written."""


def check_update(
    model: Path, data: Path, out: Path, items: Path | None, users: Path | None
) -> tuple[str, dict]:
    """The model's task and resolved config, after checking every input (naming what is wrong)."""
    spec, _ = check_folder(model)  # ArtifactError: a folder that is not a complete model
    config_path = model / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    if not isinstance(config, dict) or not config:
        raise UpdateError(
            f"{config_path}: missing or empty; an update reruns the recipe with the model's own "
            "config, so the model must have been saved by a recipe"
        )
    for flag, path in (("--data", data), ("--items", items), ("--users", users)):
        if path is not None and not path.is_file():
            raise UpdateError(f"{flag} {path}: no such file")
    if out.exists():
        raise UpdateError(f"--out {out}: already exists; an update writes a new model folder")
    if out.resolve().is_relative_to(model.resolve()):
        raise UpdateError(f"--out {out}: inside the model folder {model}")
    if (config.get("model") or {}).get("user_text") and users is None:
        raise UpdateError(
            f"{model} reads user profiles (model.user_text): pass them with --users <file>"
        )
    return spec.task, config


def catalogue_items(model: Path, template: str, folder: Path) -> Path:
    """The model's items as an items file (JSON Lines) in ``folder``, checked to render the
    model's item texts with its template."""
    catalog = read_json(model / "catalog.json")
    ids, texts, fields = catalog["item_ids"], catalog["item_texts"], catalog.get("item_fields")
    if not fields or render_texts(template, fields, ids, "item") != texts:
        raise UpdateError(
            f"{model}: its catalogue does not hold every item's fields (items added by text "
            "alone?), so its items cannot be read again: pass an items file with --items"
        )
    path = folder / "items.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for k, item in enumerate(ids):
            row = {"item_id": item, **{name: values[k] for name, values in fields.items()}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def check_nothing_dropped(parent: Path, child: Path, data: Path) -> None:
    """Refuse (an :class:`UpdateError`) a new model that lacks users or items of its parent."""
    before, after = read_json(parent / "catalog.json"), read_json(child / "catalog.json")
    lost = {
        kind: [i for i in before[key] if i not in set(after[key])]
        for kind, key in (("users", "user_ids"), ("items", "item_ids"))
    }
    if any(lost.values()):
        what = " and ".join(
            f"{len(ids)} of its {len(before[key])} {kind} (e.g. {ids[0]!r})"
            for (kind, ids), key in zip(lost.items(), ("user_ids", "item_ids"), strict=True)
            if ids
        )
        raise UpdateError(
            f"--data {data} names fewer users or items than the model knows: the update would "
            f"drop {what}. Pass every interaction so far (a window of recent ones drops whoever "
            "is not in it), or --allow-fewer to write the smaller model; nothing was written"
        )


def run_recipe(task: str, config: Path, overrides: list[str]) -> None:
    """The task's recipe, its ``main(argv)`` called in this process; what stops it, as an
    UpdateError. The recipe's printed summary (of a run in a temporary folder) is logged."""
    recipe = load_recipe(task_of(task).recipe)
    argv = ["--config", str(config), *overrides]
    logger.info("update: %s %s", recipe.__file__, " ".join(argv))
    printed = io.StringIO()
    try:
        # the recipe's argument parser would exit on a misspelt key: checked here, raised instead
        load_config(task_of(task).config, config, overrides)
        with contextlib.redirect_stdout(printed):
            recipe.main(argv)
    except USER_ERRORS as error:
        raise UpdateError(f"the {task} recipe stopped, nothing was written: {error}") from None
    except SystemExit as stop:
        raise UpdateError(
            f"the {task} recipe stopped (exit status {stop.code}), nothing was written"
        ) from None
    except Exception as error:  # not the user's input: the traceback is logged for a report
        logger.exception("the %s recipe failed", task)
        raise UpdateError(
            f"the {task} recipe stopped, nothing was written: {type(error).__name__}: {error}"
        ) from error
    finally:
        logger.info("the %s recipe printed:\n%s", task, printed.getvalue())


def update(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    items: str | Path | None = None,
    users: str | Path | None = None,
    epochs: int = 2,
    warm_start: str = "continue",
    settings: Sequence[str] = (),
    allow_fewer: bool = False,
    state: str | Path | None = None,
    interaction_rating: float | None = None,
) -> dict:
    """Train the update and write the new model to ``out``; its ``metrics.json`` contents.

    ``settings``: more recipe overrides (``key=value``), applied last. A model knows the users
    and items its data names, so data that leaves out some of the parent's (a window of recent
    interactions) would write a model without them: refused, writing nothing, unless
    ``allow_fewer``. With ``state`` (the served model's state), what the service was told
    trains too (:mod:`peftrec.training.served_data`; ``interaction_rating``: what a served
    interaction counts as), and the new folder records the last write it read."""
    model, data, out = Path(model), Path(data), Path(out)
    items, users = (Path(p) if p is not None else None for p in (items, users))
    task, config = check_update(model, data, out, items, users)
    if state is not None and items is not None:
        raise UpdateError(
            "--state reads the items from the model's catalogue and the service's writes "
            "(POST /items changes them); leave out --items"
        )
    with tempfile.TemporaryDirectory(prefix="peftrec-update-") as tmp:
        run = Path(tmp)
        served, texts = None, []
        if state is not None:
            try:
                served = served_data(model, state, data, task, run, interaction_rating)
            except (DataError, StateError) as err:
                raise UpdateError(f"--state {state}: {err}; nothing was written") from None
            for note in served.notes:
                logger.info("update: %s", note)
            data, items = served.interactions, served.items
            texts = [f"data.item_template={{{TEXT_FIELD}}}"]  # the texts as served
        elif items is None:
            template = (config.get("data") or {}).get("item_template", "")
            items = catalogue_items(model, template, run)
        overrides = [
            "data.dataset=files",
            f"data.interactions={data.resolve()}",
            f"data.items={items.resolve()}",
            f"data.users={users.resolve() if users else 'null'}",
            "data.protocol=all",
            f"train.init_from={model.resolve()}",
            f"train.warm_start={warm_start}",
            f"train.epochs={epochs}",
            "train.resume=false",
            "train.checkpoint_every=null",
            "train.log_with=[]",
            f"output_dir={run / 'run'}",
            *texts,
            *settings,
        ]
        run_recipe(task, model / "config.yaml", overrides)
        trained = run / "run" / "model"
        if not allow_fewer:
            check_nothing_dropped(model, trained, data)
        if served is not None:  # a service swapping to it replays only the writes after these
            (trained / CUT_FILE).write_text(json.dumps(served.cut, indent=2) + "\n")
        write_folder_atomic(
            out, lambda folder: shutil.copytree(trained, folder, dirs_exist_ok=True)
        )
        return json.loads((run / "run" / "metrics.json").read_text())
