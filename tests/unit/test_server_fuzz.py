"""The HTTP API fuzzed from its own OpenAPI schema (Schemathesis): whatever a client sends, no
request gets a 500, and the limits, the token and the offline docs hold."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from peftrec.app.recommender import Recommender
from peftrec.app.server import MAX_BATCH, create_app

from .test_server import folder  # noqa: F401 (the served model fixture)


@pytest.fixture(scope="module")
def app(folder):  # noqa: F811
    return create_app(Recommender.from_pretrained(folder))


@pytest.fixture(scope="module")
def api(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.filterwarnings("ignore:add_items")
def test_no_request_gets_a_server_error(api):
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10  # every endpoint, writes included

    for operation in operations:

        @settings(
            max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy())
        def no_server_error(case):
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)

        no_server_error()


def test_every_error_status_is_documented_with_its_body(app):
    spec = TestClient(app).get("/openapi.json").json()
    responses = spec["paths"]["/recommend"]["post"]["responses"]
    assert {"400", "401", "404", "413", "422", "503"} <= set(responses)
    assert responses["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")


def test_unknown_fields_and_oversized_requests_are_refused(app):
    client = TestClient(app)
    status = client.post("/recommend", json={"user": "u0", "k": 3, "exlude_seen": False})
    assert status.status_code == 422 and "exlude_seen" in status.json()["error"]
    pairs = [f"u{k % 3}" for k in range(MAX_BATCH + 1)]
    too_many = client.post("/predict", json={"users": pairs, "items": ["i1"] * len(pairs)})
    assert too_many.status_code == 422
    huge = client.post("/items", content=b'{"items": {"x": "' + b"a" * (9 << 20) + b'"}}')
    assert huge.status_code == 413 and "over" in huge.json()["error"]


def test_a_token_guards_everything_but_health_and_docs(folder):  # noqa: F811
    client = TestClient(create_app(Recommender.from_pretrained(folder), token="s3cret"))
    assert client.get("/health").status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    script = next(p for p in docs.text.split('"') if p.endswith("swagger-ui-bundle.js"))
    assert client.get(script).status_code == 200  # the docs' assets are served locally
    body = {"user": "u0", "k": 2}
    refused = client.post("/recommend", json=body)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    wrong = client.post("/recommend", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = client.post("/recommend", json=body, headers={"Authorization": "Bearer s3cret"})
    assert right.status_code == 200 and len(right.json()["items"]) == 2
