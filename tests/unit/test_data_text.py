"""Item/user text templates and the dataset containers."""

import numpy as np
import pytest

from peftrec.data import DataError, Interactions, RecDataset, render_texts
from peftrec.data.text import tidy


def _dataset(item_fields, user_fields=None):
    n = len(next(iter(item_fields.values()))) if item_fields else 2
    return RecDataset(
        name="toy",
        user_ids=["u1"],
        item_ids=[f"i{k}" for k in range(n)],
        item_fields=item_fields,
        user_fields=user_fields or {},
        interactions=Interactions(np.zeros(n), np.arange(n), np.ones(n), None),
    )


@pytest.mark.parametrize(
    ("title", "year", "genres", "expected"),
    [
        ("Toy Story", "1995", "Animation, Comedy", "Toy Story (1995). Genres: Animation, Comedy."),
        ("Toy Story", "", "Animation", "Toy Story. Genres: Animation."),
        ("Toy Story", "1995", "", "Toy Story (1995)."),
        ("Toy Story", "", "", "Toy Story."),
        ("", "1995", "Drama", "(1995). Genres: Drama."),
        ("Star Trek: First Contact", "", "", "Star Trek: First Contact."),
        ("Love and a .45", "1994", "Thriller", "Love and a .45 (1994). Genres: Thriller."),
    ],
)
def test_default_item_template_handles_empty_fields(title, year, genres, expected):
    ds = _dataset({"title": [title], "year": [year], "genres": [genres]})
    assert ds.item_texts() == [expected]


def test_tidy_collapses_leftovers():
    assert tidy("A 24-year-old  technician.") == "A 24-year-old technician."
    assert tidy("a, , b , c .") == "a, b, c."
    assert tidy(" (). Genres: .") == ""


def test_unknown_template_field_names_it_and_the_available_ones():
    ds = _dataset({"title": ["A"], "genres": ["B"]})
    with pytest.raises(DataError, match=r"'plot'.*available item fields: 'title', 'genres'"):
        ds.item_texts("{title}: {plot}")


def test_empty_item_text_names_the_item():
    ds = _dataset({"title": ["A", "", ""], "year": ["1", "", ""], "genres": ["x", "", ""]})
    with pytest.raises(DataError, match=r"item 'i1' has an empty text.*\(1 more items too\)"):
        ds.item_texts()


def test_positional_and_malformed_templates_raise():
    with pytest.raises(DataError, match="positional"):
        render_texts("{} x", {"a": ["1"]}, ["i"], "item")
    with pytest.raises(DataError, match="malformed"):
        render_texts("{title", {"title": ["1"]}, ["i"], "item")


def test_user_texts_none_without_fields_and_item_texts_need_items_file():
    ds = _dataset({})
    assert ds.user_texts() is None
    with pytest.raises(DataError, match="items file"):
        ds.item_texts()


def test_user_texts_and_custom_template():
    ds = _dataset(
        {"title": ["A"]},
        user_fields={"age": ["24"], "gender": ["male"], "occupation": ["technician"]},
    )
    assert ds.user_texts() == ["A 24-year-old male technician."]
    assert ds.item_texts("Movie: {title!r}") == ["Movie: 'A'"]


def test_containers_subset_and_indexes():
    inter = Interactions(np.array([0, 1, 1]), np.array([2, 0, 1]), np.array([1, 2, 3]), None)
    sub = inter.subset(np.array([2, 0]))
    assert sub.items.tolist() == [1, 2] and sub.timestamps is None and len(sub) == 2
    assert sub.ratings.dtype == np.float32 and sub.users.dtype == np.int64
    ds = _dataset({"title": ["a", "b", "c"]})
    assert ds.item_index() == {"i0": 0, "i1": 1, "i2": 2} and ds.user_index() == {"u1": 0}


def test_containers_reject_misaligned_fields():
    with pytest.raises(DataError, match="'title' has 1 values for 2 items"):
        RecDataset("x", ["u"], ["a", "b"], {"title": ["t"]}, {}, Interactions([], [], [], None))
    with pytest.raises(DataError, match="item indices"):
        RecDataset("x", ["u"], ["a"], {}, {}, Interactions([0], [3], [1.0], None))
