"""``peftrec serve``: the app API over HTTP, for apps in any language (FastAPI on uvicorn).

JSON in and out; OpenAPI docs at ``/docs``. A request with a missing or mistyped field gets a
422 whose ``error`` names the field, an unknown user or item id a 404, a request the model
cannot serve (``fold_in`` on a ranking model, ``k`` larger than the catalogue ...) a 400.
Handlers run in a thread pool; the :class:`~peftrec.app.recommender.Recommender` holds one lock, so
concurrent reads and writes (``POST /items`` while others ``/recommend``) are safe.

    peftrec serve runs/minilm_lora_rating/model --port 8000
    curl -s localhost:8000/recommend -d '{"user": "196", "k": 5}'
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from peftrec import __version__
from peftrec.app.recommender import Recommender
from peftrec.app.state import StateError

Id = Annotated[str, StringConstraints(min_length=1)]  # as the Python API: no stripping
K = Annotated[int, Field(ge=1, le=10_000, description="how many items")]


class RecommendRequest(BaseModel):
    user: Id
    k: K = 10
    exclude_seen: bool = True
    candidates: list[Id] | None = Field(None, description="rank only these items")


class HistoryRequest(BaseModel):
    items: list[Id] = Field(min_length=1, description="an anonymous session's items, in order")
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


class PredictRequest(BaseModel):
    users: list[Id] = Field(min_length=1)
    items: list[Id] = Field(min_length=1, description="aligned with users")


class Scores(BaseModel):
    score: str
    scores: list[float]


class AddItemsRequest(BaseModel):
    items: dict[Id, Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)
    fields: dict[Id, dict[str, str]] | None = None


class AddUsersRequest(BaseModel):
    users: dict[Id, Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)


class InteractionsRequest(BaseModel):
    interactions: dict[Id, list[Id]] = Field(min_length=1)


class RatingsRequest(BaseModel):
    user: Id
    ratings: dict[Id, float] = Field(min_length=1)


class ExplainRequest(BaseModel):
    user: Id
    item: Id
    steps: Annotated[int, Field(ge=2, le=512, description="integration steps")] = 32


class Counts(BaseModel):
    items: int
    users: int


def create_app(recommender: Recommender) -> FastAPI:
    """The HTTP service over one loaded recommender."""
    app = FastAPI(
        title="peftrec",
        version=__version__,
        description=f"A peftrec {recommender.spec.task} model on {recommender.spec.backbone}.",
    )
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

    def counts() -> Counts:
        return Counts(items=len(recommender.item_ids), users=len(recommender.user_ids))

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, catalogue size, and whether the language model has been loaded."""
        return {"status": "ok", **counts().model_dump(), "network": recommender.network_loaded}

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
            **counts().model_dump(),
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
        return counts()

    @app.post("/users")
    def add_users(body: AddUsersRequest) -> Counts:
        """Add users by profile text (models trained with user profiles)."""
        recommender.add_users(body.users)
        return counts()

    @app.post("/interactions")
    def add_interactions(body: InteractionsRequest) -> Counts:
        """Record interactions {user: [items, in time order]}; unknown users are added."""
        recommender.add_interactions(body.interactions)
        return counts()

    @app.post("/ratings")
    def fold_in(body: RatingsRequest) -> Counts:
        """Fit a user to a few ratings (rating models)."""
        recommender.fold_in(body.user, body.ratings)
        return counts()

    @app.post("/explain")
    def explain(body: ExplainRequest) -> dict[str, Any]:
        """Why the item scores what it does for the user: its words (and, for history models,
        the past items) that raised or lowered the score most."""
        return recommender.explain(body.user, body.item, steps=body.steps).to_dict()

    return app


def serve(recommender: Recommender, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service until interrupted."""
    import uvicorn

    uvicorn.run(create_app(recommender), host=host, port=port, log_level="info")
