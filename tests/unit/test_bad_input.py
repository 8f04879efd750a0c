"""Bad input of every kind a user can hand over: a clear error naming what and where, and nothing
written. Complements test_data_loading.py (loader cases), test_config.py (typos, wrong types) and
test_recommender.py (unknown ids, k too large).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftrec.app.recommender import Recommender
from peftrec.config import BackboneConfig, ConfigError
from peftrec.data import DataError, load_files
from peftrec.models.backbones import load_backbone, load_tokenizer

from ..recipes.test_multiprocess import load_recipe
from ..recipes.test_train_rating import RECIPE, REPO, tiny_overrides
from .test_recommender import save, trained


@pytest.fixture(scope="module")
def recipe():
    return load_recipe()


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --- the recipe: settings out of range, unusable data; fails before output_dir exists ------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.items_per_step=0", "train.items_per_step=0: must be at least 1"),
        (  # zero epochs (the starting model tested) is a preference run's zero-shot only
            "train.epochs=0",
            "train.epochs=0 (test the starting model) is for the preference recipe",
        ),
        ("train.lr=-1e-3", "train.lr=-0.001: must be a positive number"),
        ("train.lr=.nan", "train.lr=nan: must be a positive number"),
        ("train.grad_accum=0", "train.grad_accum=0: must be at least 1"),
        ("train.checkpoint_every=0", "train.checkpoint_every=0: must be null or at least 1"),
        ("train.max_steps=0", "train.max_steps=0: must be null or at least 1"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio=1.5: must be in [0, 1]"),
        ("data.train_fraction=0", "data.train_fraction=0.0: must be in (0, 1]"),
        ("data.max_length=0", "data.max_length=0: must be at least 1"),
        ("model.dim=0", "model.dim=0: must be at least 1"),
        ("adapter.dropout=1", "adapter.dropout=1.0: must be in [0, 1)"),
        ("transfer.weight=-1", "transfer.weight=-1.0: must be zero or positive"),
        ("transfer.mask_prob=1", "transfer.mask_prob=1.0: must be in (0, 1)"),
        ("train.text_l2=.inf", "train.text_l2=inf: must be zero or positive"),
    ],
)
def test_out_of_range_settings_name_the_key(recipe, tmp_path, override, message):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        recipe.main([override, f"output_dir={out}"])
    assert str(error.value) == message
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["adapter.method=frozen", "transfer.loss=l2sp"],
            "transfer.loss=l2sp needs a backbone that trains",
        ),
        (["transfer.weight=0.1"], "transfer.weight=0.1 but transfer.loss=none"),
        (
            ["backbone.init=random", "adapter.method=qlora"],
            "backbone.init=random cannot be combined with adapter.method=qlora",
        ),
        (["train.warm_start=merge"], "train.warm_start=merge says how to continue a parent"),
        (
            ["train.warm_start=merge", "train.init_from=x", "adapter.method=prefix"],
            "adapter.method=prefix has none that merges",
        ),
        (
            ["train.warm_start=towers", "train.init_from=x", "transfer.loss=l2sp"],
            "transfer.loss=l2sp acts on the backbone, which train.warm_start=towers keeps",
        ),
    ],
)
def test_conflicting_settings_are_refused_at_start_up(recipe, tmp_path, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        recipe.main([*overrides, f"output_dir={out}"])
    assert not out.exists()


def test_output_dir_that_is_a_file_or_under_one(recipe, tmp_path):
    file = write(tmp_path / "results", "not a folder")
    for out, message in [
        (file, "is a file, not a folder"),
        (file / "run", "is a file, not a folder"),
    ]:
        with pytest.raises(ConfigError, match=f"output_dir='{out}': {file} {message}"):
            recipe.main([f"output_dir={out}"])


def small_files(folder: Path, ratings: list[tuple[str, str, float]], items: int) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{u},{i},{r},{k}\n" for k, (u, i, r) in enumerate(ratings))
    return {
        "interactions": write(folder / "ratings.csv", "user_id,item_id,rating,timestamp\n" + rows),
        "items": write(
            folder / "items.csv",
            "item_id,title,genres\n"
            + "".join(f"i{k},good movie {k},drama\n" for k in range(items)),
        ),
    }


FOUR_ITEMS = [(f"u{u}", f"i{i}", 1 + (u + i) % 5) for u in range(6) for i in range(4)]
SHORT_USERS = [(f"u{u}", f"i{(u + k) % 9}", 3) for u in range(20) for k in range(2)]


@pytest.mark.parametrize(
    ("ratings", "items", "settings", "message"),
    [
        (
            FOUR_ITEMS,
            4,
            ["data.protocol=p2"],
            r"ratings.*4 items, 6 users\): protocol p2 leaves no test ratings; p2 holds out "
            r".* at least 10 rated items",
        ),
        (
            SHORT_USERS,
            9,
            ["data.protocol=p3"],
            r"protocol p3 leaves no validation ratings; p3 holds out each user's last "
            r"two ratings, .* at least 3",
        ),
        (
            SHORT_USERS,
            9,
            ["data.train_fraction=0.001"],
            r"protocol p1 leaves no train ratings; data.train_fraction=0.001 kept "
            r"none of the training ratings",
        ),
        (
            SHORT_USERS,
            9,
            ["data.item_template={title} {plot}"],
            r"item template '\{title\} \{plot\}' names field 'plot', which does not exist; "
            r"available item fields: 'title', 'genres'",
        ),
        (
            SHORT_USERS,
            9,
            ["model.user_text=true"],
            r"model.user_text=true needs user profile fields, and dataset 'ratings' has none",
        ),
    ],
)
def test_unusable_data_fails_before_anything_is_written(
    recipe, tmp_path, tiny_bert, ratings, items, settings, message
):
    files, out = small_files(tmp_path / "data", ratings, items), tmp_path / "run"
    with pytest.raises(DataError, match=message):
        recipe.main([*tiny_overrides(files, tiny_bert, out), *settings])
    assert not out.exists()


def test_items_with_empty_text_name_the_item(recipe, tmp_path, tiny_bert):
    files = small_files(tmp_path / "data", SHORT_USERS, 9)
    write(
        files["items"],
        "item_id,title,genres\n" + "".join(f"i{k},{'' if k == 4 else 'x'},\n" for k in range(9)),
    )
    with pytest.raises(
        DataError,
        match=r"item 'i4' has an empty text with template '\{title\}. Genres: \{genres\}.'",
    ):
        recipe.main(tiny_overrides(files, tiny_bert, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_command_line_reports_bad_data_in_one_line_without_traceback(tmp_path, tiny_bert):
    files, out = small_files(tmp_path / "data", FOUR_ITEMS, 4), tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(RECIPE), *tiny_overrides(files, tiny_bert, out), "data.protocol=p2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert (
        "train_rating.py: error: dataset 'ratings' (24 ratings, 4 items, 6 users): protocol p2"
        in result.stderr
    )
    assert "Traceback" not in result.stderr and not out.exists()


# --- data files: truncated, wrong encoding, odd values -------------------------------------------

INTER = "user_id,item_id,rating\nu1,a,4\nu2,b,3\nu1,b,1\n"


def test_truncated_or_foreign_files_name_the_file(tmp_path):
    frame = pd.DataFrame(
        {"user_id": ["u1", "u2"] * 50, "item_id": ["a", "b"] * 50, "rating": [1.0, 2.0] * 50}
    )
    frame.to_parquet(tmp_path / "full.parquet")
    data = (tmp_path / "full.parquet").read_bytes()
    cases = [
        (
            write(tmp_path / "cut.parquet", data[: len(data) // 2]),
            r"cut\.parquet: cannot read as parquet: .*corrupted",
        ),
        (write(tmp_path / "text.parquet", INTER), r"text\.parquet: cannot read as parquet"),
        (
            write(tmp_path / "cut.csv", INTER + "u3,c"),
            r"cut\.csv, line 5 \(row 3\), column 'rating': missing value",
        ),
        (
            write(tmp_path / "semicolons.csv", INTER.replace(",", ";")),
            r"semicolons\.csv: missing column\(s\) 'user_id', 'item_id', 'rating'; found "
            r"columns: 'user_id;item_id;rating'",
        ),
        (
            write(tmp_path / "ratings.csv.gz", b"\x1f\x8b"),
            r"ratings\.csv\.gz: unsupported file type '\.gz'",
        ),
        (
            write(tmp_path / "huge.csv", "user_id,item_id,rating\nu,a,1e400\n"),
            r"line 2 \(row 0\).*'1e400' is not a finite",
        ),
    ]
    for path, message in cases:
        with pytest.raises(DataError, match=message):
            load_files(path)


LOADER_GAPS = {  # file name: (content, the message it should get)
    "latin1.csv": (
        "user_id,item_id,rating\nu1,café,4\n".encode("latin-1"),
        r"latin1\.csv, line 2: not valid UTF-8",
    ),
    "latin1-header.csv": (
        "user_id,item_id,ratingé\n".encode("latin-1"),
        r"latin1-header\.csv, line 1: not valid UTF-8",
    ),
    "utf16.csv": (INTER.encode("utf-16"), r"utf16\.csv.*UTF-16"),
    "quote.csv": (INTER + 'u3,"c', r"quote\.csv: cannot read as csv: .*EOF inside string"),
    "fields.csv": (
        INTER + "u3,c,4,9\n",
        r"fields\.csv: cannot read as csv: .*Expected 3 fields in line 5, saw 4",
    ),
    "cut.jsonl": (
        '{"user_id":"u","item_id":"a","rating":1}\n{"user_id":"u","ite',
        r"cut\.jsonl: cannot read as json: .*JSON parse error",
    ),
    "bool.jsonl": (
        '{"user_id":"u","item_id":"a","rating":true}\n',
        r"line 1 \(row 0\), column 'rating': True is not a",
    ),
    "list.jsonl": (
        '{"user_id":"u","item_id":"a","rating":[4]}\n',
        r"line 1 \(row 0\), column 'rating': \[4\] is not a",
    ),
    "twice.csv": (
        "user_id,item_id,rating,rating\nu,a,1,2\n",
        r"twice\.csv: duplicate column 'rating'",
    ),
    "overflow.csv": (
        "user_id,item_id,rating\nu,a,1e39\n",
        r"line 2 \(row 0\), column 'rating': '1e39'",
    ),
}


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("name", LOADER_GAPS)
def test_loader_gaps(tmp_path, name):
    data, message = LOADER_GAPS[name]
    with pytest.raises(DataError, match=message):
        load_files(write(tmp_path / name, data))


# --- property: any well-formed table loads exactly, any single corruption is named ---------------

text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",)), max_size=8
)  # any Unicode, quotes, commas
identifier = text.filter(lambda s: s.strip() != "")
table = st.lists(
    st.tuples(identifier, identifier, st.floats(-1e6, 1e6, allow_nan=False, width=32)),
    min_size=1,
    max_size=6,
)


def write_table(path: Path, frame: pd.DataFrame) -> Path:
    if path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(frame.columns)
            writer.writerows(frame.itertuples(index=False))
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in frame.to_dict("records")),
            encoding="utf-8",
        )
    return path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=table,
    titles=st.lists(text, min_size=6, max_size=6),
    fmt=st.sampled_from(["csv", "parquet", "jsonl"]),
    corruption=st.sampled_from(
        [None, "blank user", "unknown item", "drop rating column", "text rating"]
    ),
    where=st.integers(0, 5),
)
def test_loader_property_any_table(rows, titles, fmt, corruption, where):
    """Ids and texts of any Unicode (stripped), in any format, load exactly; a single corruption
    gives a DataError naming the file and the column (and the row, where there is one)."""
    items = list(dict.fromkeys(item for _, item, _ in rows))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).astype({"rating": object})
    row = where % len(rows)
    expected = None
    if corruption == "blank user":
        inter.loc[row, "user_id"] = "  "
        expected = [f"row {row}", "column 'user_id'", "empty user id"]
    elif corruption == "unknown item":
        inter.loc[row, "item_id"] = "\u2603 not in items"
        expected = [f"row {row}", "column 'item_id'", "'\u2603 not in items' is not in", "items."]
    elif corruption == "drop rating column":
        inter = inter.drop(columns="rating")
        expected = ["missing column(s) 'rating'"]
    elif corruption == "text rating":
        inter["rating"] = inter["rating"].astype(str)  # one type per column, for Parquet
        inter.loc[row, "rating"] = "4 stars"
        expected = [f"row {row}", "column 'rating'", "'4 stars' is not a finite number"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = (
            write_table(Path(tmp) / f"ratings.{fmt}", inter),
            write_table(
                Path(tmp) / f"items.{fmt}",
                pd.DataFrame({"item_id": items, "title": titles[: len(items)]}),
            ),
        )
        if expected:
            with pytest.raises(DataError) as error:
                load_files(*paths)
            assert all(part in str(error.value) for part in [f"ratings.{fmt}", *expected]), str(
                error.value
            )
            return
        ds = load_files(*paths)
    assert ds.item_ids == [i.strip() for i in items]
    assert ds.item_fields["title"] == [t.strip() for t in titles[: len(items)]]
    assert [ds.user_ids[u] for u in ds.interactions.users] == [u.strip() for u, _, _ in rows]
    assert [ds.item_ids[i] for i in ds.interactions.items] == [i.strip() for _, i, _ in rows]
    np.testing.assert_array_equal(
        ds.interactions.ratings, np.array([r for *_, r in rows], dtype=np.float32)
    )


# --- the app API: wrong argument shapes --------------------------------------------------------


@pytest.fixture(scope="module")
def recommender(tiny_bert, tmp_path_factory):
    model, tokenizer = trained(tiny_bert)
    return Recommender.from_pretrained(
        save(tmp_path_factory.mktemp("rec") / "model", model, tokenizer, tiny_bert)
    )


def test_recommender_clear_errors(recommender):
    with pytest.raises(ValueError, match="add_items: no items given"):
        recommender.add_items({})
    with pytest.raises(KeyError, match="unknown user id 'nobody'"):
        recommender.predict_texts("nobody", ["good movie"])
    with pytest.raises(TypeError, match="predict: item ids are strings or integers, got None"):
        recommender.predict(["u0"], [None])
    with pytest.raises(ValueError, match=r"recommend: k must be a positive integer, got 2\.0"):
        recommender.recommend("u0", k=2.0)
    assert recommender.predict_texts("u0", []).shape == (0,) and recommender.score_all(
        []
    ).shape == (0, 11)


def test_recommend_takes_numpy_integers_for_k(recommender):
    assert len(recommender.recommend("u0", k=np.int64(3))) == 3


@pytest.mark.parametrize("call", ["recommend k=True", "predict strings", "predict_texts string"])
def test_recommender_refuses_misleading_arguments(recommender, call):
    with pytest.raises((TypeError, ValueError), match=r"list|bool|integer"):
        if call == "recommend k=True":
            recommender.recommend("u0", k=True)  # would quietly mean k=1
        elif call == "predict strings":
            recommender.predict("u0", "i1")  # would look up users 'u', '0'
        else:
            recommender.predict_texts("u0", "good movie")  # would score each character


# --- safe loading: custom model code never runs unless asked for ---------------------------------


@pytest.fixture
def remote_code_model(tmp_path):
    """A model folder whose config points at custom code that leaves a marker when imported."""
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    code = (
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (folder / f"{module}.py").write_text(code)
    auto_map = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModel": "modeling_evil.EvilModel",
        "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None],
    }
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": auto_map["AutoTokenizer"]}})
    )
    return folder, marker


def test_trust_remote_code_stays_off_unless_set(remote_code_model, tiny_bert, tmp_path):
    folder, marker = remote_code_model
    assert BackboneConfig().trust_remote_code is False
    for load in (load_backbone, load_tokenizer):
        with pytest.raises(ValueError, match="contains custom code which must be executed"):
            load(str(folder))
    # a saved model whose peftrec.json names that backbone: refused on load, nothing executed
    model, tokenizer = trained(tiny_bert)
    artifact = save(tmp_path / "model", model, tokenizer, tiny_bert)
    meta = json.loads((artifact / "peftrec.json").read_text())
    meta["spec"]["backbone"] = str(folder)
    (artifact / "peftrec.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="contains custom code which must be executed"):
        Recommender.from_pretrained(artifact)
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - only that the code ran matters: the flag is the gate
        load_backbone(str(folder), trust_remote_code=True)
    assert marker.exists()


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_backbone_weights_are_never_unpickled(tiny_bert, tmp_path):
    """A backbone folder (or Hub repo) with only a pickle for weights, e.g. the one a saved model's
    peftrec.json names: transformers reads it with weights_only=True, so nothing runs."""
    folder, marker = tmp_path / "pickled", tmp_path / "code-ran"
    folder.mkdir()
    shutil.copy(tiny_bert / "config.json", folder)
    torch.save(
        {"embeddings.word_embeddings.weight": _Exploit(marker)}, folder / "pytorch_model.bin"
    )
    with pytest.raises(Exception, match="Weights only load failed"):
        load_backbone(str(folder))
    assert not marker.exists()
