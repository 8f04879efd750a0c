"""The HTTP service, started for real on a free port on 127.0.0.1 and called over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
import uvicorn

from peftrec.app.recommender import Recommender
from peftrec.app.server import create_app
from peftrec.artifact.head_vectors import trained_vectors
from peftrec.artifact.save import save_artifact

from .test_app_api import SCALED
from .test_model import NUM_ITEMS, NUM_USERS
from .test_recommender import trained


def call(base: str, path: str, body=None, method=None) -> tuple[int, dict | str]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(
        base + path, data=data, method=method or ("POST" if data is not None else "GET")
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_bert):
    model, tokenizer = trained(tiny_bert)
    with torch.no_grad():
        model.head.global_mean.fill_(3.0)
    vectors, text = trained_vectors(model, tokenizer, SCALED)
    folder = tmp_path_factory.mktemp("served") / "model"
    return save_artifact(folder, model, tokenizer, SCALED, vectors=vectors, item_text=text)


@pytest.fixture
def service(folder):
    """A running server over a freshly loaded model: (base URL, the recommender)."""
    recommender = Recommender.from_pretrained(folder)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(recommender), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", recommender
    server.should_exit = True
    thread.join(timeout=10)


def test_recommend_predict_health_card_and_docs(service):
    base, rec = service
    status, health = call(base, "/health")
    assert status == 200 and health == {
        "status": "ok",
        "items": NUM_ITEMS,
        "users": NUM_USERS,
        "network": False,
    }
    status, card = call(base, "/model")
    assert status == 200 and card["task"] == "rating" and card["rating_scale"] == [1.0, 5.0]
    status, top = call(base, "/recommend", {"user": "u0", "k": 3})
    assert status == 200 and top["score"] == "rating"
    assert [(r["item"], r["title"]) for r in top["items"]] == [
        (i, rec.item_info(i)["title"]) for i, _ in rec.recommend("u0", k=3)
    ]
    status, scores = call(base, "/predict", {"users": ["u0", "u1"], "items": ["i1", "i2"]})
    assert status == 200 and scores["scores"] == pytest.approx(
        rec.predict(["u0", "u1"], ["i1", "i2"]).tolist()
    )
    status, docs = call(base, "/docs")
    assert status == 200 and "swagger" in docs.lower()
    status, api = call(base, "/openapi.json")
    assert {"/recommend", "/predict", "/items", "/interactions", "/explain"} <= set(api["paths"])
    assert not rec.network_loaded  # all of it served from the saved vectors


def test_bad_requests_name_the_field_and_unknown_ids_are_404(service):
    base, _ = service
    status, error = call(base, "/recommend", {"user": "u0", "k": 0})
    assert (
        status == 422 and error["field"] == "k" and "greater than or equal to 1" in error["error"]
    )
    status, error = call(base, "/recommend", {"k": 3})
    assert status == 422 and error["field"] == "user"
    status, error = call(base, "/recommend", b"{not json")
    assert status == 422 and error["detail"][0]["type"] == "json_invalid"
    request = urllib.request.Request(base + "/recommend", data=b'{"user": "u0", "k": "x"}')
    with pytest.raises(urllib.error.HTTPError) as raised:  # no content type: raw bytes
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 422 and "error" in json.loads(raised.value.read())
    status, error = call(base, "/recommend", {"user": "nobody"})
    assert status == 404 and "unknown user id 'nobody'" in error["error"]
    status, error = call(base, "/items/nothing")
    assert status == 404 and "unknown item id 'nothing'" in error["error"]
    status, error = call(base, "/predict", {"users": ["u0"], "items": ["i1", "i2"]})
    assert status == 400 and "aligned" in error["error"]
    status, error = call(base, "/ratings", {"user": "new", "ratings": {"i1": 50}})
    assert status == 400 and "outside the scale" in error["error"]
    status, error = call(base, "/recommend/history", {"items": ["i1"]})
    assert status == 400 and "history model" in error["error"]
    status, error = call(base, "/recommend", {"user": "u0", "k": 100})
    assert status == 400 and "only" in error["error"]


def test_writes_and_reads_at_once_are_safe(service):
    base, rec = service
    failures, added = [], [f"new{w}-{k}" for w in range(2) for k in range(5)]

    def read():
        for _ in range(10):
            status, _ = call(base, "/recommend", {"user": "u1", "k": 3})
            failures.extend([status] if status != 200 else [])

    def write(w: int):
        for k in range(5):
            status, _ = call(base, "/items", {"items": {f"new{w}-{k}": f"good movie {k} comedy"}})
            failures.extend([status] if status != 200 else [])

    threads = [threading.Thread(target=read) for _ in range(6)]
    threads += [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (
        failures == [] and set(added) <= set(rec.item_ids) and len(rec.item_ids) == NUM_ITEMS + 10
    )
    status, top = call(base, "/recommend", {"user": "u1", "k": 2, "candidates": added[:3]})
    assert status == 200 and {r["item"] for r in top["items"]} <= set(added[:3])
    status, scores = call(base, "/predict", {"users": ["u1"], "items": [added[0]]})
    assert scores["scores"] == pytest.approx(rec.predict_texts("u1", ["good movie 0 comedy"]))
    status, _ = call(base, "/interactions", {"interactions": {"u1": added[:2]}})
    status, top = call(base, "/recommend", {"user": "u1", "k": 5})
    assert status == 200 and not {r["item"] for r in top["items"]} & set(added[:2])


def test_explain_over_http(service):
    base, rec = service
    status, why = call(base, "/explain", {"user": "u0", "item": "i1", "steps": 16})
    assert status == 200 and [w for w, _ in why["words"]] == rec.item_info("i1")["text"].split()
    total = sum(a for _, a in why["words"])
    assert total == pytest.approx(why["score"] - why["baseline_score"], abs=1e-3)


def test_the_serve_command_starts_the_service(folder):
    """Also with the approximate index asked for: it serves what exact scoring serves."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    command = ["serve", str(folder), "--port", str(port), "--state", "none", "--index-above", "1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "peftrec.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, health = call(f"http://127.0.0.1:{port}", "/health")
                break
            except urllib.error.URLError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.2)
        assert status == 200 and health["status"] == "ok"
        status, top = call(f"http://127.0.0.1:{port}", "/recommend", {"user": "u0", "k": 3})
        items = [r["item"] for r in top["items"]]
        assert status == 200 and len(set(items)) == 3  # found by the index, scored exactly
        exact = Recommender.from_pretrained(folder).predict(["u0"] * 3, items)
        assert [r["score"] for r in top["items"]] == pytest.approx(exact.tolist(), abs=1e-5)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "approximate index" in output
