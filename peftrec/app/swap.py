"""Swapping a running service to an update of its model without a restart
(``peftrec serve --allow-swap``, ``POST /admin/swap``): the update (``peftrec update --state``)
was trained on the service's writes up to a cut; the writes after it are carried over
(:meth:`~peftrec.app.recommender.Recommender.carry_over`) before the new model takes over, and
the old one refuses later writes, so none is lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftrec.app.recommender import Recommender
from peftrec.app.state import default_state
from peftrec.artifact.vectors import CUT_FILE


class Serving:
    """The recommender a service serves now (``POST /admin/swap`` replaces it); attributes are
    the recommender's."""

    def __init__(self, recommender: Recommender):
        self.recommender = recommender

    def __getattr__(self, name: str) -> Any:
        return getattr(self.recommender, name)


def swap_to(serving: Serving, folder: str, state: str | None = None) -> Recommender:
    """Replace the served recommender by the model in ``folder``, an update of it read from its
    state (see ``POST /admin/swap``); returns the new one."""
    old = serving.recommender
    if old.state_url is None:
        raise ValueError("a swap carries this service's writes over: serve it with a --state")
    path = Path(folder)
    cut = path / CUT_FILE
    if not cut.is_file() or json.loads(cut.read_text(encoding="utf-8"))["state"] != old.state_url:
        raise ValueError(
            f"{folder} was not updated from this service's state ({old.state_url}): "
            "peftrec update <model> --state <that state> --data ... --out <folder> writes one"
        )
    new = Recommender.from_pretrained(path, state=state or default_state(path))
    if new.spec.task != old.spec.task:
        raise ValueError(
            f"{folder} is a {new.spec.task} model; this service serves {old.spec.task}"
        )
    new.carry_over()  # most of the writes, while this model still serves
    with old._lock:  # then, with reads and writes held, those written meanwhile
        old.retire(str(folder))
        new.carry_over()
        serving.recommender = new
    return new
