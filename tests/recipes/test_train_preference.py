"""The preference recipe run for real at tiny scale (both readers), and the saved model served
as an app would: predict_proba reproduces the recipe's test AUC."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from peftrec import cli
from peftrec.app.recommender import Recommender
from peftrec.data import load_files
from peftrec.data.preference import p3_preference_split
from peftrec.metrics import load_metric

from .test_train_rating import REPO, run, tiny_overrides

RECIPE = REPO / "recipes" / "train_preference.py"


def preference_overrides(toy_files, backbone, out) -> list[str]:
    keep = [o for o in tiny_overrides(toy_files, backbone, out) if not o.startswith("train.")]
    return [*keep, "data.protocol=p3", "train.epochs=3", "preference.records_per_step=32"]


@pytest.mark.parametrize(
    ("reader", "extra"),
    [
        ("towers", ["adapter.method=frozen"]),
        ("cross", ["adapter.method=lora", "model.item_ids=false", "preference.record_length=96"]),
    ],
)
def test_preference_recipe_trains_and_predict_proba_reproduces_its_test_auc(
    tmp_path, toy_files, tiny_bert, tiny_gpt2, reader, extra
):
    out = tmp_path / "run"
    backbone = tiny_bert if reader == "towers" else tiny_gpt2
    result = run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            str(REPO / "recipes/configs/minilm_frozen_preference.yaml"),
            *preference_overrides(toy_files, backbone, out),
            f"preference.reader={reader}",
            *extra,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test_auc"] <= 1 and metrics["steps"] > 0
    assert metrics["train_records"] == 30 * (20 - 12)  # toy users have 20 rows each

    dataset = load_files(toy_files["interactions"], toy_files["items"])
    _, _, test = p3_preference_split(dataset)
    ids = dataset.item_ids
    rec = Recommender.from_pretrained(out / "model")
    histories = [
        [(ids[i], bool(like)) for i, like in zip(h, labels, strict=True)]
        for h, labels in zip(test.history_items, test.history_labels, strict=True)
    ]
    p = rec.predict_proba([ids[i] for i in test.items], histories=histories)
    assert p.shape == (len(test),) and ((p > 0) & (p < 1)).all()
    scores = load_metric("preference").compute(
        predictions=p, references=test.labels, groups=test.users
    )
    assert scores["auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)
    assert scores["logloss"] == pytest.approx(metrics["test_logloss"], abs=1e-5)

    # known users: their last labelled training interactions; the same through the network
    users = [dataset.user_ids[u] for u in test.users[:5]]
    items = [ids[i] for i in test.items[:5]]
    served = Recommender.from_pretrained(out / "model")
    known = served.predict_proba(items, users=users)
    assert known.shape == (5,) and ((known > 0) & (known < 1)).all()
    if reader == "towers":  # served from saved vectors: no network needed, and it agrees
        assert not served.network_loaded
        np.testing.assert_allclose(served.predict(users, items), known, rtol=1e-5)
        engine = rec.engine
        rows = [rec.user_index[u] for u in users]
        labelled = engine.labelled_histories(rows)
        again = engine.preference_probabilities(rec.item_rows(items, "test"), labelled)
        np.testing.assert_allclose(again, known, rtol=1e-5)

    # saved again, loaded again: the same probabilities
    rec.save_pretrained(tmp_path / "again")
    back = Recommender.from_pretrained(tmp_path / "again")
    np.testing.assert_allclose(back.predict_proba(items, histories=histories[:5]), p[:5], rtol=1e-5)


def test_predict_proba_refuses_bad_input(tmp_path, toy_files, tiny_bert, capsys):
    out = tmp_path / "run"
    result = run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            str(REPO / "recipes/configs/minilm_frozen_preference.yaml"),
            *preference_overrides(toy_files, tiny_bert, out),
            "train.epochs=1",
            "data.train_records=20",  # of 30 users: some have no labelled training interactions
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rec = Recommender.from_pretrained(out / "model")
    item = rec.item_ids[0]
    with pytest.raises(ValueError, match="one of them"):
        rec.predict_proba([item])
    with pytest.raises(ValueError, match="one of them"):
        rec.predict_proba([item], users=[rec.user_ids[0]], histories=[[]])
    with pytest.raises(ValueError, match="1 items but 2 users"):
        rec.predict_proba([item], users=rec.user_ids[:2])
    with pytest.raises(ValueError, match=r"histories\[0\]\[1\]: liked must be"):
        rec.predict_proba([item], histories=[[(item, True), (item, "yes")]])
    with pytest.raises(TypeError, match=r"histories\[0\]\[0\].*not an \(item_id, liked\) pair"):
        rec.predict_proba([item], histories=[[item]])
    with pytest.raises(KeyError, match="nope"):
        rec.predict_proba([item], histories=[[("nope", True)]])
    with pytest.raises(KeyError, match="ghost"):
        rec.predict_proba([item], users=["ghost"])
    with pytest.raises(ValueError, match="labelled histories"):
        rec.add_interactions({rec.user_ids[0]: [item]})
    # no history at all is not a record the model was trained on: refused, saying what to pass
    with pytest.raises(ValueError, match=r"histories\[0\]: empty"):
        rec.predict_proba([item], histories=[[]])
    unknown = [u for u in rec.user_ids if len(rec.seen[rec.user_index[u]]) == 0]
    assert unknown
    with pytest.raises(ValueError, match="no labelled interactions"):
        rec.predict_proba([item], users=[unknown[0]])

    # the CLI: a labelled history (or a known user) against items, the same probabilities
    other = rec.item_ids[1]
    history = [(rec.item_ids[2], True), (rec.item_ids[3], False)]
    expected = rec.predict_proba([item, other], histories=[history, history])
    argv = ["predict-proba", str(out / "model"), "--json", item, other]
    assert cli.main([*argv, "--history", f"{rec.item_ids[2]}:1,{rec.item_ids[3]}:0"]) == 0
    got = [p["probability"] for p in json.loads(capsys.readouterr().out)["predictions"]]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    known = next(u for u in rec.user_ids if len(rec.seen[rec.user_index[u]]))
    assert cli.main([*argv, "--user", known]) == 0
    expected = rec.predict_proba([item, other], users=[known] * 2)
    got = [p["probability"] for p in json.loads(capsys.readouterr().out)["predictions"]]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    with pytest.raises(SystemExit):
        cli.main([*argv, "--history", f"{rec.item_ids[2]}:yes"])
    assert "write item_id:1 (liked) or item_id:0" in capsys.readouterr().err
    assert cli.main([*argv, "--history", "ghost:1"]) == 2
    assert "ghost" in capsys.readouterr().err


def test_the_rating_recipe_has_no_predict_proba(tmp_path, toy_files, tiny_bert):
    out = tmp_path / "run"
    result = run(
        [
            sys.executable,
            str(REPO / "recipes" / "train_rating.py"),
            *tiny_overrides(toy_files, tiny_bert, out),
            "adapter.method=frozen",
            "train.epochs=1",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rec = Recommender.from_pretrained(out / "model")
    with pytest.raises(ValueError, match="needs a preference model"):
        rec.predict_proba([rec.item_ids[0]], users=[rec.user_ids[0]])


def test_a_few_records_calibrate_a_trained_model_with_its_towers_kept(
    tmp_path, toy_files, tiny_bert
):
    from safetensors.torch import load_file

    base = [
        sys.executable,
        str(RECIPE),
        "--config",
        str(REPO / "recipes/configs/minilm_frozen_preference.yaml"),
    ]
    parent, child = tmp_path / "parent", tmp_path / "child"
    first = run([*base, *preference_overrides(toy_files, tiny_bert, parent)])
    assert first.returncode == 0, first.stderr[-3000:]
    calibrate = [
        *base,
        *preference_overrides(toy_files, tiny_bert, child),
        "data.train_records=16",
        f"train.init_from={parent / 'model'}",
        "train.warm_start=head",
        "train.lr=0.05",
    ]
    result = run(calibrate)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((child / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == 6 and metrics["backbone_trainable_parameters"] == 0
    before = load_file(parent / "model" / "head.safetensors")
    after = load_file(child / "model" / "head.safetensors")
    scalars = ("offset", "share_weight", "leniency_weight", "quality_weight")
    scalars += ("item_weight", "match_weight")
    for name, value in before.items():
        if name not in scalars:  # the towers: exactly as the parent left them
            assert after[name].equal(value), name
    losses = [h["train_loss"] for h in metrics["history"] if "train_loss" in h]
    assert losses[-1] < losses[0]  # the scalars did train
    spec = json.loads((child / "model" / "peftrec.json").read_text())["spec"]
    assert spec["parent"]["mode"] == "head"

    # train.epochs=0: no record is read or trained on; the start (the parent) is tested as it is
    zero = tmp_path / "zero"
    keep = [o for o in preference_overrides(toy_files, tiny_bert, zero) if o != "train.epochs=3"]
    result = run([*base, *keep, "train.epochs=0", f"train.init_from={parent / 'model'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    tested = json.loads((zero / "metrics.json").read_text())
    parent_metrics = json.loads((parent / "metrics.json").read_text())
    assert tested["train_records"] == 0 and tested["steps"] == 0
    assert tested["test_auc"] == pytest.approx(parent_metrics["test_auc"], abs=1e-9)

    # a rating model has no calibration scalars: refused before anything is written
    refused = run(
        [
            sys.executable,
            str(REPO / "recipes" / "train_rating.py"),
            *tiny_overrides(toy_files, tiny_bert, tmp_path / "rating"),
            f"train.init_from={parent / 'model'}",
            "train.warm_start=head",
        ]
    )
    assert refused.returncode != 0 and "train.warm_start=head" in refused.stderr
    assert "train.warm_start=towers" in refused.stderr
    assert not (tmp_path / "rating").exists()
