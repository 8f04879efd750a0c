"""``peftrec update``: a saved model continued on new interactions by its recipe, into a new
folder that loads like any model; bad input is refused with a clear error and writes nothing."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from peftrec import cli
from peftrec.app.recommender import Recommender

from .test_train_rating import RECIPE, REPO, run, tiny_overrides


@pytest.fixture(scope="module")
def parent(tmp_path_factory, toy_files, tiny_bert):
    out = tmp_path_factory.mktemp("parent") / "run"
    config = str(REPO / "recipes/configs/minilm_lora_rating.yaml")
    result = run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            config,
            *tiny_overrides(toy_files, tiny_bert, out),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "model"


def grown(tmp_path, toy_files, extra: str):
    path = tmp_path / "interactions.csv"
    path.write_text(toy_files["interactions"].read_text() + extra)
    return path


NEW_USERS = "".join(f"n{u},i{i},{1 + (i % 5)},{99000 + i}\n" for u in range(2) for i in range(20))


def test_update_continues_the_model_on_new_interactions(parent, tmp_path, toy_files, capsys):
    out = tmp_path / "today" / "model"
    data = grown(tmp_path, toy_files, NEW_USERS)
    assert (
        cli.main(["update", str(parent), "--data", str(data), "--out", str(out), "--epochs", "1"])
        == 0
    )
    assert f"model saved to {out}" in capsys.readouterr().out
    spec = json.loads((out / "peftrec.json").read_text())["spec"]
    assert spec["parent"]["mode"] == "continue" and spec["head"]["num_users"] == 32
    config = (out / "config.yaml").read_text()
    assert "protocol: all" in config and "epochs: 1" in config
    rec = Recommender.from_pretrained(out)
    assert len(rec.recommend("n0", k=3)) == 3  # a user the parent never saw
    old = Recommender.from_pretrained(parent)
    assert rec.predict(["u0"], ["i1"]) != old.predict(["u0"], ["i1"])  # it trained
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".model.")]  # no leftovers


def test_bad_input_is_refused_before_training_and_writes_nothing(parent, tmp_path, capsys):
    out = tmp_path / "new"
    data = tmp_path / "nowhere.csv"
    assert cli.main(["update", str(parent), "--data", str(data), "--out", str(out)]) == 2
    assert f"--data {data}: no such file" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    assert (
        cli.main(
            ["update", str(parent), "--data", str(parent / "config.yaml"), "--out", str(taken)]
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(parent, bare)
    (bare / "config.yaml").unlink()
    assert (
        cli.main(["update", str(bare), "--data", str(bare / "catalog.json"), "--out", str(out)])
        == 2
    )
    assert "config.yaml: missing or empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a model folder: refused by the argument parser
        cli.main(["update", str(tmp_path), "--data", str(data), "--out", str(out)])
    assert not out.exists()


def test_data_the_recipe_refuses_writes_nothing(parent, tmp_path, toy_files, capsys):
    out = tmp_path / "new"
    data = grown(tmp_path, toy_files, "u0,i999,4,99999\n")  # an item the catalogue lacks
    assert cli.main(["update", str(parent), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the rating recipe stopped, nothing was written" in err and "'i999'" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [data]


def test_a_window_that_leaves_out_users_is_refused_unless_asked(parent, tmp_path, capsys):
    window = tmp_path / "recent.csv"  # the last interactions of three users only
    window.write_text(
        "user_id,item_id,rating,timestamp\n"
        + "".join(
            f"u{u},i{i},{1 + i % 5},{50000 + 10 * u + i}\n" for u in range(3) for i in range(8)
        )
    )
    out = tmp_path / "today"
    argv = ["update", str(parent), "--data", str(window), "--out", str(out), "--epochs", "1"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "would drop 27 of its 30 users" in error and "nothing was written" in error
    assert not out.exists()
    assert cli.main([*argv, "--allow-fewer"]) == 0
    assert len(Recommender.from_pretrained(out).user_ids) == 3


def test_the_daily_loop_trains_on_the_served_state_and_swaps_keeping_every_write(
    parent, tmp_path, toy_files, capsys
):
    from fastapi.testclient import TestClient

    from peftrec.app.server import create_app
    from peftrec.app.state import StateError, default_state

    served, state = tmp_path / "served", tmp_path / "state.sqlite"
    shutil.copytree(parent, served)
    rec = Recommender.from_pretrained(served, state=state)
    rec.add_items({"s1": "A served film about a sailing race."})
    rec.fold_in("walker", {"s1": 5.0, "i2": 2.0})
    rec.add_interactions({"u0": ["i3"]})  # no rating: a rating model does not train on it
    out = tmp_path / "today"
    argv = ["update", str(served), "--data", str(toy_files["interactions"]), "--out", str(out)]
    assert cli.main([*argv, "--state", str(state), "--epochs", "1"]) == 0
    cut = json.loads((out / "served_cut.json").read_text())
    assert cut["seq"] == 3 and cut["state"] == rec.state_url
    child = Recommender.from_pretrained(out)
    assert "s1" in child.item_ids and "walker" in child.user_ids  # trained on what was served
    assert child.item_info("s1")["text"] == "A served film about a sailing race."
    # the service goes on after the cut, then swaps to the update over HTTP
    rec.add_items({"s2": "Another served film, after the cut."})
    rec.fold_in("walker", {"s2": 4.0, "i1": 3.0})
    client = TestClient(create_app(rec, swap=True))
    reply = client.post("/admin/swap", json={"model": str(parent)})
    assert reply.status_code == 400 and "was not updated from this service" in reply.json()["error"]
    reply = client.post("/admin/swap", json={"model": str(out)})
    assert reply.status_code == 200 and reply.json()["items"] == len(child.item_ids) + 1
    assert client.get("/items/s2").json()["text"] == "Another served film, after the cut."
    with pytest.raises(StateError, match="now serves"):
        rec.add_items({"late": "A write to the retired model."})
    reply = client.post("/items", json={"items": {"s3": "A film after the swap."}})
    assert reply.status_code == 200
    # the update's own state holds the carried writes: a restart serves them, carries none twice
    again = Recommender.from_pretrained(out, state=default_state(out))
    assert again.carry_over() == 0 and again.item_ids[-2:] == ["s2", "s3"]
    np.testing.assert_allclose(
        again.predict(["walker"], ["s2"]),
        client.post("/predict", json={"users": ["walker"], "items": ["s2"]}).json()["scores"],
        rtol=1e-5,
    )
    assert not TestClient(create_app(rec)).post("/admin/swap", json={"model": str(out)}).is_success
