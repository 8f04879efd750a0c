"""``peftrec serve``: the app API over HTTP, for apps in any language (FastAPI on uvicorn).

JSON in and out; OpenAPI docs at ``/docs`` (served offline: no CDN). A request with a missing,
mistyped or unknown field gets a 422 whose ``error`` names the field, an unknown user or item id
a 404, a request the model cannot serve (``fold_in`` on a ranking model, ``k`` larger than the
catalogue ...) a 400, a body over the size limit a 413, a write the state did not keep a 503;
with a token, a request without it a 401. Handlers run in a thread pool; the
:class:`~peftrec.app.recommender.Recommender` holds one lock, so concurrent reads and writes
(``POST /items`` while others ``/recommend``) are safe. With ``--workers N`` each of N processes
loads the model and serves one shared state; a request first applies the writes the others
committed (:meth:`~peftrec.app.recommender.Recommender.sync`), so a write acknowledged by one
process is served by all.

    peftrec serve runs/minilm_lora_rating/model --port 8000
    curl -s localhost:8000/recommend -H 'Content-Type: application/json' -d '{"user": "196"}'
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from peftrec import __version__
from peftrec.app.recommender import Recommender
from peftrec.app.state import StateError
from peftrec.app.swap import Serving, swap_to

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]  # as given: no stripping
Text = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
K = Annotated[int, Field(ge=1, le=10_000, description="how many items")]
MAX_BATCH = 10_000
"""The most pairs, items, users or interactions one request may carry."""
MAX_BODY_BYTES = 8 << 20
"""The largest request body taken (8 MiB); larger ones get a 413."""


class Request_(BaseModel):
    """A request body: fields it does not know are refused (a 422), not ignored."""

    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    error: str


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]
"""The bearer token a request sends, if any."""

OPEN = ("/health", "/docs", "/docs/oauth2-redirect", "/redoc")
"""What answers without the token: liveness and the API's documentation."""


class RecommendRequest(Request_):
    user: Id
    k: K = 10
    exclude_seen: bool = True
    candidates: list[Id] | None = Field(
        None, max_length=100 * MAX_BATCH, description="rank only these items"
    )


class HistoryRequest(Request_):
    items: list[Id] = Field(
        min_length=1, max_length=MAX_BATCH, description="an anonymous session's items, in order"
    )
    k: K = 10
    exclude_seen: bool = True


class Recommendation(BaseModel):
    item: str
    score: float
    title: str | None = None


class Recommendations(BaseModel):
    user: str | None
    score: str = Field(description="'rating' (predicted ratings) or 'score' (orders one user)")
    items: list[Recommendation]


class PredictRequest(Request_):
    users: list[Id] = Field(min_length=1, max_length=MAX_BATCH)
    items: list[Id] = Field(min_length=1, max_length=MAX_BATCH, description="aligned with users")


class Scores(BaseModel):
    score: str
    scores: list[float]


class AddItemsRequest(Request_):
    items: dict[Id, Text] = Field(min_length=1, max_length=MAX_BATCH)
    fields: dict[Id, dict[str, str]] | None = Field(None, max_length=MAX_BATCH)


class AddUsersRequest(Request_):
    users: dict[Id, Text] = Field(min_length=1, max_length=MAX_BATCH)


class InteractionsRequest(Request_):
    interactions: dict[Id, Annotated[list[Id], Field(max_length=MAX_BATCH)]] = Field(
        min_length=1, max_length=MAX_BATCH
    )


class RatingsRequest(Request_):
    user: Id
    ratings: dict[Id, float] = Field(min_length=1, max_length=MAX_BATCH)


class ExplainRequest(Request_):
    user: Id
    item: Id
    steps: Annotated[int, Field(ge=2, le=512, description="integration steps")] = 32


class Counts(BaseModel):
    items: int
    users: int


class SwapRequest(Request_):
    model: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    state: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None


ERRORS = {
    status: {"model": Error, "description": what}
    for status, what in (
        (400, "a request the model cannot serve, and why"),
        (401, "no or a wrong bearer token (when the service has one)"),
        (404, "an unknown user or item id, and how to add it"),
        (413, "a body over the size limit"),
        (422, "a missing, mistyped or unknown field, named in `error`"),
        (503, "a write the durable state did not keep"),
    )
}


def create_app(recommender: Recommender, token: str | None = None, swap: bool = False) -> FastAPI:
    """The HTTP service over one loaded recommender; with ``token``, every endpoint but
    ``/health`` needs ``Authorization: Bearer <token>``; with ``swap``, ``POST /admin/swap``
    replaces the model by an update of it without a restart."""
    serving = Serving(recommender)
    recommender = serving  # every handler reads the recommender served now

    def authorized(
        request: Request,
        credentials: Credentials,
    ) -> None:
        if token is None or request.url.path in OPEN:  # the docs' mounted assets take none
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise Unauthorized

    def synced() -> None:  # what the other processes serving the state wrote, first
        recommender.sync()

    app = FastAPIOffline(
        title="peftrec",
        version=__version__,
        description=f"A peftrec {recommender.spec.task} model on {recommender.spec.backbone}.",
        responses=ERRORS,
        dependencies=[Depends(authorized), Depends(synced)],
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    label = "rating" if recommender.traits.ratings else "score"

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [  # without the offending input, which may not be JSON (raw bytes)
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        field = ".".join(p for p in errors[0]["loc"] if p != "body") or "body"
        return JSONResponse(
            status_code=422,
            content={"error": f"{field}: {errors[0]['msg']}", "field": field, "detail": errors},
        )

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(
            status_code=401,
            content={"error": "this service needs Authorization: Bearer <token>"},
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(KeyError)
    async def unknown_id(request: Request, exc: KeyError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": str(exc.args[0])})

    @app.exception_handler(StateError)
    async def not_kept(request: Request, exc: StateError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"error": f"the write was not kept: {exc}"})

    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def refused(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": str(exc)})

    def listed(user: str | None, pairs: list[tuple[str, float]]) -> Recommendations:
        items = [
            Recommendation(item=i, score=s, title=recommender.item_info(i).get("title") or None)
            for i, s in pairs
        ]
        return Recommendations(user=user, score=label, items=items)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, catalogue size, and whether the language model has been loaded."""
        return {
            "status": "ok",
            **counts_of(recommender).model_dump(),
            "network": recommender.network_loaded,
        }

    @app.get("/model")
    def model_card() -> dict[str, Any]:
        """What the model is: backbone, adaptation, task, and its card (data, protocol, metrics)."""
        spec = recommender.spec
        return {
            "task": spec.task,
            "backbone": spec.backbone,
            "method": spec.adapter.method,
            "dtype": spec.dtype,
            "scores": label,
            "rating_scale": recommender.rating_scale,
            "peftrec_version": recommender.meta.get("peftrec_version", __version__),
            **counts_of(recommender).model_dump(),
            **(recommender.meta.get("card") or {}),
        }

    @app.post("/recommend")
    def recommend(body: RecommendRequest) -> Recommendations:
        """The k best items for a user, best first."""
        pairs = recommender.recommend(body.user, body.k, body.exclude_seen, body.candidates)
        return listed(body.user, pairs)

    @app.post("/recommend/history")
    def recommend_for_history(body: HistoryRequest) -> Recommendations:
        """The k best next items after an anonymous session (history models)."""
        pairs = recommender.recommend_for_history(body.items, body.k, body.exclude_seen)
        return listed(None, pairs)

    @app.post("/predict")
    def predict(body: PredictRequest) -> Scores:
        """Scores of aligned (user, item) pairs."""
        scores = recommender.predict(body.users, body.items)
        return Scores(score=label, scores=[float(s) for s in scores])

    @app.get("/items/{item_id}")
    def item(item_id: str) -> dict[str, str]:
        """An item's fields (title, ...) and text."""
        return recommender.item_info(item_id)

    @app.post("/items")
    def add_items(body: AddItemsRequest) -> Counts:
        """Add items (or change their texts) as {id: text}; scored at once, from their text."""
        recommender.add_items(body.items, body.fields)
        return counts_of(recommender)

    @app.post("/users")
    def add_users(body: AddUsersRequest) -> Counts:
        """Add users by profile text (models trained with user profiles)."""
        recommender.add_users(body.users)
        return counts_of(recommender)

    @app.post("/interactions")
    def add_interactions(body: InteractionsRequest) -> Counts:
        """Record interactions {user: [items, in time order]}; unknown users are added."""
        recommender.add_interactions(body.interactions)
        return counts_of(recommender)

    @app.post("/ratings")
    def fold_in(body: RatingsRequest) -> Counts:
        """Fit a user to a few ratings (rating models)."""
        recommender.fold_in(body.user, body.ratings)
        return counts_of(recommender)

    @app.post("/explain")
    def explain(body: ExplainRequest) -> dict[str, Any]:
        """Why the item scores what it does for the user: its words (and, for history models,
        the past items) that raised or lowered the score most."""
        return recommender.explain(body.user, body.item, steps=body.steps).to_dict()

    if swap:

        @app.post("/admin/swap")
        def swap_model(body: SwapRequest) -> Counts:
            """Serve an update of this model (``peftrec update --state``) from now on, without a
            restart: it is loaded with its state (default: beside its folder), the writes this
            service recorded after the update read its state are carried over to it, and it
            replaces this model; a write that races the swap gets a 503 and is sent again."""
            return counts_of(swap_to(serving, body.model, body.state))

    return app


class Unauthorized(Exception):
    """A request without the service's bearer token."""


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413, whether it says its length
    or streams it (chunked)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = f'{{"error": "the request body is over {self.limit} bytes"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


def counts_of(recommender: Recommender) -> Counts:
    return Counts(items=len(recommender.item_ids), users=len(recommender.user_ids))


def serve(
    recommender: Recommender,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    swap: bool = False,
) -> None:
    """Run the service until interrupted."""
    import uvicorn

    uvicorn.run(create_app(recommender, token, swap), host=host, port=port, log_level="info")
