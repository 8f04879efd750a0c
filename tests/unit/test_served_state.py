"""Durable served state: acknowledged writes survive a restart (and a SIGKILL), a failed write
changes nothing, a log belongs to one model, and saving never deletes what it did not write."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error

import numpy as np
import pytest

from peftrec.app.recommender import Recommender
from peftrec.app.state import ServedState, StateError

from .test_server import call, folder  # noqa: F401 (the served model fixture)

ITEM = {"n1": "A quiet drama about a lighthouse keeper.", "n2": "A loud comedy in space."}


def state_of(rec: Recommender) -> tuple:
    """Everything a write may change, as plain values."""
    return (
        list(rec.item_ids),
        list(rec.item_texts),
        {k: list(v) for k, v in rec.item_fields.items()},
        list(rec.user_ids),
        rec.score_all().tobytes(),
    )


def test_writes_are_replayed_from_the_state_in_order(folder, tmp_path):  # noqa: F811
    db = tmp_path / "state.sqlite"
    rec = Recommender.from_pretrained(folder, state=db)
    assert rec.state_url == f"sqlite:///{db}"
    rec.add_items(ITEM, fields={"n1": {"title": "Lighthouse"}})
    rec.add_items({"n1": "A quiet drama about a lighthouse keeper and a storm."})  # a change
    rec.add_interactions({"newcomer": ["n1", "i3"]})
    rec.fold_in("u1", {"n2": 5.0, "i4": 1.0})
    expected = state_of(rec)
    assert len(ServedState(db, _digest(folder))) == 4

    again = Recommender.from_pretrained(folder, state=db)
    assert state_of(again) == expected
    assert again.item_info("n1")["text"].endswith("and a storm.")
    assert again.item_info("n1")["title"] == "Lighthouse"
    assert {"n1", "i3"}.isdisjoint(i for i, _ in again.recommend("newcomer", k=5))
    # without the state, the folder serves the model as trained
    plain = Recommender.from_pretrained(folder)
    assert "n1" not in plain.item_ids and plain.state_url is None


def _digest(folder):  # noqa: F811
    from peftrec.artifact.vectors import folder_digest

    return folder_digest(folder)


def test_a_failed_write_changes_nothing_and_is_not_recorded(folder, tmp_path):  # noqa: F811
    db = tmp_path / "state.sqlite"
    rec = Recommender.from_pretrained(folder, state=db)
    rec.add_items({"n1": "A first item."})
    before = state_of(rec)
    with pytest.raises(KeyError, match="fields names item 'nowhere'"):
        rec.add_items({"n2": "text"}, fields={"nowhere": {"title": "x"}})
    with pytest.raises(TypeError, match="fields of item 'n2' are a mapping"):
        rec.add_items({"n2": "text"}, fields={"n2": "not a mapping"})
    with pytest.raises(KeyError):
        rec.add_interactions({"u0": ["i1", "no-such-item"]})
    with pytest.raises(ValueError):
        rec.fold_in("u0", {"i1": 99.0})  # off the 1-5 scale
    assert state_of(rec) == before
    assert len(ServedState(db, _digest(folder))) == 1
    assert state_of(Recommender.from_pretrained(folder, state=db)) == before


def test_a_state_of_another_model_is_refused(folder, tmp_path):  # noqa: F811
    db = tmp_path / "state.sqlite"
    ServedState(db, "0" * 64).append("items", {"items": {"x": "y"}})
    with pytest.raises(StateError, match="holds the writes to another model"):
        Recommender.from_pretrained(folder, state=db)
    with pytest.raises(StateError, match="is a folder"):
        Recommender.from_pretrained(folder, state=tmp_path)


def test_save_pretrained_never_deletes_what_it_did_not_write(folder, tmp_path):  # noqa: F811
    rec = Recommender.from_pretrained(folder)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ValueError, match="is a file"):
        rec.save_pretrained(a_file)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff")
    with pytest.raises(ValueError, match="holds other files"):
        rec.save_pretrained(other)
    assert a_file.read_text() == "mine" and (other / "cat.jpg").read_bytes() == b"\xff"
    saved = rec.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="pass overwrite=True"):
        rec.save_pretrained(saved)
    rec.add_items(ITEM)
    rec.save_pretrained(saved, overwrite=True)
    assert "n2" in Recommender.from_pretrained(saved).item_ids


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def start(folder, db, port, *options):  # noqa: F811
    command = [sys.executable, "-m", "peftrec.cli", "serve", str(folder), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--state", str(db), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            call(f"http://127.0.0.1:{port}", "/health")
            return process
        except urllib.error.URLError:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.2)


def test_every_acknowledged_write_survives_a_sigkill(folder, tmp_path):  # noqa: F811
    db, port = tmp_path / "state.sqlite", free_port()
    base = f"http://127.0.0.1:{port}"
    process = start(folder, db, port)
    acknowledged = []
    try:
        for k in range(6):
            status, _ = call(base, "/items", {"items": {f"k{k}": f"Killed item number {k}."}})
            assert status == 200
            acknowledged.append(f"k{k}")
            status, _ = call(base, "/interactions", {"interactions": {f"v{k}": [f"k{k}", "i2"]}})
            assert status == 200
        status, _ = call(base, "/items", {"items": {"50 ": "an id with a space is its own id"}})
        assert status == 200
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no shutdown, no flush: as a crash
        process.wait(timeout=30)
    process = start(folder, db, port)
    try:
        for k, item in enumerate(acknowledged):
            status, info = call(base, f"/items/{item}")
            assert status == 200 and info["text"] == f"Killed item number {k}."
            status, top = call(base, "/recommend", {"user": f"v{k}", "k": 3})
            assert status == 200 and {item, "i2"}.isdisjoint(r["item"] for r in top["items"])
        status, info = call(base, "/items/50%20")
        assert status == 200 and info["text"] == "an id with a space is its own id"
        status, health = call(base, "/health")
        assert health["items"] == len(Recommender.from_pretrained(folder).item_ids) + 7
    finally:
        process.terminate()
        process.wait(timeout=30)
    # what the service served is what the Python API replays
    rec = Recommender.from_pretrained(folder, state=db)
    assert np.isfinite(rec.score_all(["v0"])).all()


POSTGRES = os.environ.get("PEFTREC_TEST_POSTGRES")  # e.g. postgresql+psycopg://u:p@host/db


def empty_postgres(url: str) -> str:
    """The database at ``url`` without peftrec's tables (each test starts a new log)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.exec_driver_sql("DROP TABLE IF EXISTS peftrec_events, peftrec_state")
    engine.dispose()
    return url


WHERE = pytest.mark.parametrize(
    "where",
    [
        "sqlite",
        pytest.param(
            "postgres",
            marks=pytest.mark.skipif(not POSTGRES, reason="set PEFTREC_TEST_POSTGRES to a URL"),
        ),
    ],
)


@WHERE
def test_processes_sharing_a_state_apply_the_same_writes_in_the_same_order(
    folder,  # noqa: F811
    tmp_path,
    where,
):
    db = tmp_path / "state.sqlite" if where == "sqlite" else empty_postgres(POSTGRES)
    a, b = Recommender.from_pretrained(folder), Recommender.from_pretrained(folder)
    assert a.attach_state(db, shared=True) == 0 and b.attach_state(db, shared=True) == 0
    a.add_items({"n1": ITEM["n1"]})
    b.add_items({"n2": ITEM["n2"]})  # a's item is applied first, as the log has it
    assert b.item_ids[-2:] == ["n1", "n2"]
    b.add_interactions({"newcomer": ["n1"]})
    a.add_interactions({"newcomer": ["i3"]})  # a writes after b's writes, which it applies
    b.fold_in("u1", {"n2": 5.0, "i4": 1.0})
    assert "n2" in a.item_ids and "u1" in a.user_ids
    assert a.sync() == 1 and b.sync() == 0 and a.sync() == 0  # only b's fold_in was new to a
    expected = state_of(a)
    assert state_of(b) == expected
    assert state_of(Recommender.from_pretrained(folder, state=db)) == expected
    assert {"n1", "i3"}.isdisjoint(i for i, _ in b.recommend("newcomer", k=5))
    alone = Recommender.from_pretrained(folder, state=tmp_path / "alone.sqlite")
    alone.add_items({"n1": ITEM["n1"]})
    assert alone.sync() == 0  # not shared: nothing to apply


@WHERE
def test_workers_serve_every_write_any_of_them_acknowledged(
    folder,  # noqa: F811
    tmp_path,
    capsys,
    where,
):
    db = tmp_path / "state.sqlite" if where == "sqlite" else empty_postgres(POSTGRES)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start(folder, db, port, "--workers", "2")
    try:
        for k in range(4):
            status, _ = call(base, "/items", {"items": {f"w{k}": f"Shared item number {k}."}})
            assert status == 200
            for _ in range(6):  # whichever worker answers has it
                status, info = call(base, f"/items/w{k}")
                assert status == 200 and info["text"] == f"Shared item number {k}."
            status, _ = call(base, "/interactions", {"interactions": {"walker": [f"w{k}"]}})
            assert status == 200
        for _ in range(6):
            status, top = call(base, "/recommend", {"user": "walker", "k": 5})
            assert status == 200 and not {f"w{k}" for k in range(4)} & {
                r["item"] for r in top["items"]
            }

        def write(w: int) -> None:  # two writers at once, answered by either worker
            for k in range(4):
                item = {f"c{w}-{k}": f"Concurrent item {w} {k}."}
                assert call(base, "/items", {"items": item})[0] == 200
                assert (
                    call(base, "/ratings", {"user": "rater", "ratings": {"i1": 1 + w + k}})[0]
                    == 200
                )

        writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        served = [
            call(base, "/predict", {"users": ["rater"] * 3, "items": ["i1", "i2", "c0-3"]})[1][
                "scores"
            ]
            for _ in range(6)
        ]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    rec = Recommender.from_pretrained(folder, state=db)
    assert rec.item_ids[len(rec.item_ids) - 12 : len(rec.item_ids) - 8] == [
        f"w{k}" for k in range(4)
    ]
    # every worker applied the same last rating (the log's last) as the replay does
    expected = rec.predict(["rater"] * 3, ["i1", "i2", "c0-3"]).tolist()
    assert all(s == pytest.approx(expected, rel=1e-5) for s in served)
    from peftrec import cli

    assert cli.main(["serve", str(folder), "--workers", "2", "--state", "none"]) == 2
    assert "--workers shares the served writes through --state" in capsys.readouterr().err
    assert cli.main(["serve", str(folder), "--workers", "2", "--allow-swap"]) == 2
    assert "with --workers, restart the service" in capsys.readouterr().err
