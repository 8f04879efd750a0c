"""``peftrec serve --workers N``: N processes over one served state (:mod:`peftrec.app.state`),
each with the model loaded; a request first applies what the others wrote
(:meth:`~peftrec.app.recommender.Recommender.sync`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from peftrec.app.recommender import Recommender
from peftrec.app.server import create_app
from peftrec.app.state import ServedState
from peftrec.artifact.vectors import CUT_FILE, folder_digest

WORKER_SETTINGS = "PEFTREC_SERVE_WORKER"
"""The environment variable that tells each worker process what to load (JSON)."""


def serve_workers(
    settings: dict[str, Any],
    workers: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
) -> None:
    """Run ``workers`` processes that share one state (``settings``: ``model``, ``state``,
    ``exact``, ``index_above``) until interrupted; the state is checked (and an update's writes
    carried over) once, here."""
    import uvicorn

    state, model = settings["state"], Path(settings["model"])
    if state is None:
        raise ValueError(
            "--workers shares the served writes through --state; with --state none each "
            "worker would keep its own"
        )
    if (model / CUT_FILE).is_file():  # an update of a served model: its writes carried once
        Recommender.from_pretrained(model, state=state).carry_over()
    else:
        ServedState(state, folder_digest(model)).close()  # this model's log, or refused
    if token is not None:
        os.environ["PEFTREC_TOKEN"] = token  # the workers' environment, not the command line
    os.environ[WORKER_SETTINGS] = json.dumps({**settings, "state": str(state)})
    print(f"{workers} workers; writes are kept in {state} and shared")
    uvicorn.run(
        "peftrec.app.workers:worker_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="info",
    )


def worker_app() -> FastAPI:
    """One worker of :func:`serve_workers`: the model loaded, attached to the shared state."""
    settings = json.loads(os.environ[WORKER_SETTINGS])
    recommender = Recommender.from_pretrained(settings["model"], exact=settings["exact"])
    recommender.attach_state(settings["state"], shared=True)
    if settings.get("index_above") is not None:
        recommender.use_index(above=settings["index_above"])
    return create_app(recommender, os.environ.get("PEFTREC_TOKEN") or None)
