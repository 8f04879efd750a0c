"""load_files: the formats, and a DataError with file, position and column for each bad input."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftrec.data import ColumnMap, DataError, load_files

INTER = "user_id,item_id,rating,timestamp\nu1,a,4,100\nu2,b,3.5,101\nu1,b,1,102\n"
ITEMS = "item_id,title,genres\na,Alpha,Drama\nb,Beta,\nc,Gamma,Comedy\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    return write(tmp_path / "ratings.csv", INTER), write(tmp_path / "items.csv", ITEMS)


def test_csv_with_items_file(files):
    ds = load_files(*files)
    assert ds.name == "ratings"
    assert ds.item_ids == ["a", "b", "c"] and ds.user_ids == ["u1", "u2"]
    inter = ds.interactions
    assert inter.users.tolist() == [0, 1, 0] and inter.items.tolist() == [0, 1, 1]
    assert inter.ratings.tolist() == [4.0, 3.5, 1.0] and inter.ratings.dtype == np.float32
    assert inter.timestamps.tolist() == [100.0, 101.0, 102.0]
    assert ds.item_texts("{title}. Genres: {genres}.") == [
        "Alpha. Genres: Drama.",
        "Beta.",
        "Gamma. Genres: Comedy.",
    ]
    assert ds.user_texts() is None


def test_same_table_from_tsv_parquet_and_jsonl(tmp_path, files):
    expected = load_files(files[0])
    frame = pd.read_csv(files[0], dtype=str)
    frame.to_csv(tmp_path / "r.tsv", sep="\t", index=False)
    frame.astype({"rating": float, "timestamp": int}).to_parquet(tmp_path / "r.parquet")
    with open(tmp_path / "r.jsonl", "w") as f:
        f.writelines(
            json.dumps(row) + "\n" for row in frame.astype({"rating": float}).to_dict("records")
        )
    for name in ["r.tsv", "r.parquet", "r.jsonl"]:
        ds = load_files(tmp_path / name)
        assert ds.user_ids == expected.user_ids and ds.item_ids == expected.item_ids
        for field in ["users", "items", "ratings", "timestamps"]:
            assert np.array_equal(
                getattr(ds.interactions, field), getattr(expected.interactions, field)
            )


def test_column_map_users_file_and_no_timestamps(tmp_path):
    inter = write(tmp_path / "r.csv", "who,what,stars\n7,x,5\n8,x,2\n")
    items = write(tmp_path / "i.csv", "id,name,junk\nx,Ex,zzz\n")
    users = write(tmp_path / "u.csv", "uid,age,gender,occupation\n8,30,female,writer\n7,20,male,\n")
    cols = ColumnMap(user="who", item="what", rating="stars", item_id="id", user_id="uid",
                     item_text_fields=["name"])  # fmt: skip
    ds = load_files(inter, items, users, columns=cols, name="mine")
    assert ds.name == "mine" and ds.interactions.timestamps is None
    assert ds.item_fields == {"name": ["Ex"]} and ds.item_texts("{name}") == ["Ex"]
    assert ds.user_ids == ["8", "7"] and ds.interactions.users.tolist() == [1, 0]
    assert ds.user_texts() == ["A 30-year-old female writer.", "A 20-year-old male."]


def test_without_items_file_item_texts_ask_for_one(files):
    ds = load_files(files[0])
    assert ds.item_ids == ["a", "b"] and ds.item_fields == {}
    with pytest.raises(DataError, match="items file"):
        ds.item_texts()


BAD_CASES = {
    # name: (interactions text, items text or None, fragments the message must contain)
    "missing column": (
        "user_id,item,rating\nu,a,1\n",
        None,
        ["ratings.csv", "'item_id'", "found columns: 'user_id', 'item', 'rating'"],
    ),
    "non-numeric rating": (
        "user_id,item_id,rating\nu,a,1\nu,b,high\nu,c,x\nu,d,2\n",
        None,
        ["ratings.csv, line 3 (row 1)", "column 'rating'", "'high'", "(1 more row with"],
    ),
    "nan rating": ("user_id,item_id,rating\nu,a,1\nu,b,NaN\n", None, ["line 3 (row 1)", "'NaN'"]),
    "infinite rating": ("user_id,item_id,rating\nu,a,inf\n", None, ["line 2 (row 0)", "'inf'"]),
    "missing rating": ("user_id,item_id,rating\nu,a,\n", None, ["line 2 (row 0)", "missing"]),
    "bad timestamp": (
        "user_id,item_id,rating,timestamp\nu,a,1,5\nu,a,1,yesterday\n",
        None,
        ["line 3 (row 1)", "column 'timestamp'", "'yesterday'"],
    ),
    "empty user id": (
        "user_id,item_id,rating\nu,a,1\n,a,2\n , b, 3\n",
        None,
        ["line 3 (row 1)", "column 'user_id'", "empty user id", "(1 more row with"],
    ),
    "empty item id": ("user_id,item_id,rating\nu,,1\n", None, ["line 2 (row 0)", "empty item id"]),
    "unknown item": (
        "user_id,item_id,rating\nu,a,1\nu,zz,2\n",
        "item_id,title\na,A\n",
        ["ratings.csv, line 3 (row 1)", "column 'item_id'", "'zz' is not in", "items.csv"],
    ),
    "duplicate item": (
        "user_id,item_id,rating\nu,a,1\n",
        "item_id,title\na,A\nb,B\na,C\n",
        ["items.csv, line 4 (row 2)", "duplicate item id 'a'", "first at", "line 2 (row 0)"],
    ),
    "only a header": ("user_id,item_id,rating\n", None, ["ratings.csv", "no data rows"]),
    "empty file": ("", None, ["ratings.csv", "empty"]),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_names_file_position_and_column(tmp_path, case):
    inter, items, fragments = BAD_CASES[case]
    inter = write(tmp_path / "ratings.csv", inter)
    items = items and write(tmp_path / "items.csv", items)
    with pytest.raises(DataError) as err:
        load_files(inter, items)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_multiline_quoted_field_gives_the_true_line(tmp_path):
    inter = write(tmp_path / "r.csv", 'user_id,item_id,rating\nu,"two\nlines",1\n\nu,b,bad\n')
    with pytest.raises(DataError, match=r"line 5 \(row 1\)"):
        load_files(inter)


def test_duplicate_users_unknown_user_and_bad_files(tmp_path, files):
    users = write(tmp_path / "users.csv", "user_id,age\nu1,3\nu2,4\nu1,5\n")
    with pytest.raises(DataError, match=r"users.csv, line 4 \(row 2\).*duplicate user id 'u1'"):
        load_files(files[0], users=users)
    users = write(tmp_path / "users.csv", "user_id,age\nu1,3\n")
    with pytest.raises(DataError, match=r"line 3 \(row 1\).*user id 'u2' is not in .*users.csv"):
        load_files(files[0], users=users)
    with pytest.raises(DataError, match=r"nope.csv: file not found"):
        load_files(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"r.xlsx: unsupported file type '.xlsx'"):
        load_files(write(tmp_path / "r.xlsx", INTER))


def test_jsonl_and_parquet_positions(tmp_path):
    rows = [{"user_id": 1, "item_id": "a", "rating": 2}, {"user_id": 1, "item_id": "b"}]
    jsonl = write(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"r.jsonl, line 2 \(row 1\), column 'rating': missing"):
        load_files(jsonl)
    pd.DataFrame({"user_id": ["u", "v"], "item_id": ["a", None], "rating": [1.0, 2.0]}).to_parquet(
        tmp_path / "r.parquet"
    )
    with pytest.raises(DataError, match=r"r.parquet, row 1, column 'item_id': empty item id"):
        load_files(tmp_path / "r.parquet")


INVALID = ["abc", "", "nan", "inf", "-inf", "1,5", "4 stars"]
ratings = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
    st.integers(-100, 100).map(str),
    st.sampled_from(INVALID),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(ratings, min_size=1, max_size=12),
    users=st.lists(st.sampled_from(["u1", "u2", "7"]), min_size=12, max_size=12),
    fmt=st.sampled_from(["csv", "tsv", "jsonl"]),
)
def test_loader_property(values, users, fmt):
    """Valid ratings load exactly; any invalid one raises naming its line and the rating column."""
    rows = [(users[k], f"i{k % 3}", v) for k, v in enumerate(values)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data.{fmt}"
        if fmt == "jsonl":
            lines = [
                json.dumps({"user_id": u, "item_id": i, "rating": _json(v)}) for u, i, v in rows
            ]
            first_line = 1
        else:
            sep = "," if fmt == "csv" else "\t"
            lines = [sep.join(["user_id", "item_id", "rating"])]
            lines += [
                sep.join([u, i, f'"{v}"' if "," in v and fmt == "csv" else v]) for u, i, v in rows
            ]
            first_line = 2
        write(path, "\n".join(lines) + "\n")
        bad = [k for k, v in enumerate(values) if v in INVALID]
        if bad:
            with pytest.raises(DataError) as err:
                load_files(path)
            message = str(err.value)
            assert f"line {bad[0] + first_line} (row {bad[0]}), column 'rating'" in message
            assert (f"({len(bad) - 1} more row" in message) == (len(bad) > 1)
        else:
            ds = load_files(path)
            expected = np.array([float(v) for v in values], dtype=np.float32)
            assert np.array_equal(ds.interactions.ratings, expected)
            assert [ds.user_ids[u] for u in ds.interactions.users] == [r[0] for r in rows]
            assert [ds.item_ids[i] for i in ds.interactions.items] == [r[1] for r in rows]


def _json(value: str):
    """Valid ratings as JSON numbers, invalid ones as strings."""
    return value if value in INVALID else float(value)
