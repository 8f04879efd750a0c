"""What is popular now (peftrec.models.recency): decayed counts that never read the future."""

from __future__ import annotations

import numpy as np
import pytest

from peftrec.models.recency import DAY, HALF_LIVES, RecentCounts, first_events


def brute_force(items, times, firsts, num_items, half_lives, moment):
    """The features from their definition: events of the days before the moment's day."""
    day_start = np.floor(moment / DAY) * DAY
    seen = times < day_start
    out = []
    for only_firsts in (False, True):
        for h in half_lives:
            weights = 2.0 ** (-(moment - times[seen]) / (h * DAY))
            if only_firsts:
                weights = weights * firsts[seen]
            out.append(np.bincount(items[seen], weights, num_items))
    counts = np.stack(out, 1)
    return np.log1p(counts * num_items / np.clip(counts.sum(0), 1e-30, None))


@pytest.fixture
def log():
    rng = np.random.default_rng(0)
    n, num_items = 400, 9
    times = np.sort(rng.uniform(10 * DAY, 40 * DAY, n))
    users = rng.integers(0, 30, n)
    items = rng.integers(0, num_items, n)
    return items, times, first_events(users, times), num_items


def test_features_match_their_definition_at_any_moment(log):
    """log(1 + items * share) of the decayed counts of the days before each moment."""
    items, times, firsts, num_items = log
    counts = RecentCounts(items, times, firsts, num_items, (1.0, 7.0))
    moments = np.array([5 * DAY, 10.5 * DAY, 22.25 * DAY, 39.9 * DAY, 41 * DAY, 60.3 * DAY])
    got = counts.features(moments)
    assert got.shape == (len(moments), num_items, 4)
    for row, moment in enumerate(moments):
        expected = brute_force(items, times, firsts, num_items, (1.0, 7.0), moment)
        np.testing.assert_allclose(got[row], expected, rtol=1e-4, atol=1e-6)


def test_no_event_of_the_moments_day_or_later_reaches_its_features(log):
    """The leakage guard: events at or after a moment (its own target, everything later) leave
    the features unchanged; counts over the whole log would not."""
    items, times, firsts, num_items = log
    moments = np.array([15.7 * DAY, 25.2 * DAY, 33.9 * DAY])
    past = RecentCounts(items, times, firsts, num_items)
    rng = np.random.default_rng(1)
    later = np.floor(moments.min() / DAY) * DAY + rng.uniform(0, 30 * DAY, 300)
    more = RecentCounts(
        np.concatenate([items, rng.integers(0, num_items, 300)]),
        np.concatenate([times, later]),
        np.concatenate([firsts, np.ones(300, dtype=bool)]),
        num_items,
    )
    earliest = more.features(moments[:1])  # every added event is on or after its day
    np.testing.assert_array_equal(earliest, past.features(moments[:1]))
    whole = brute_force(items, times, firsts, num_items, HALF_LIVES, times.max() + DAY)
    assert not np.allclose(whole, past.features(moments[:1])[0])


def test_firsts_are_each_users_earliest_event():
    users = np.array([3, 1, 3, 1, 2])
    times = np.array([5.0, 9.0, 2.0, 9.0, 7.0])
    assert first_events(users, times).tolist() == [False, True, True, False, True]


def test_bad_logs_are_refused():
    with pytest.raises(ValueError, match="aligned"):
        RecentCounts(np.array([0, 1]), np.array([1.0]), np.array([True, False]), 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        RecentCounts(np.array([0, 3]), np.array([1.0, 2.0]), np.array([True, False]), 3)


def test_an_empty_log_gives_zero_features():
    counts = RecentCounts(np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool), 4)
    assert counts.features(np.array([1e9])).shape == (1, 4, 2 * len(HALF_LIVES))
    assert not counts.features(np.array([1e9])).any()


def test_the_torch_table_gives_the_same_features(log):
    import torch

    from peftrec.models.recency import RecencyTable

    items, times, firsts, num_items = log
    counts = RecentCounts(items, times, firsts, num_items)
    moments = np.array([12.3 * DAY, 30.01 * DAY, 55.5 * DAY])
    got = RecencyTable(counts).features(torch.as_tensor(moments, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), counts.features(moments), rtol=1e-5, atol=1e-6)


def test_a_later_moment_with_no_new_events_reads_the_same_chart(log):
    """Shares: time passing after the last seen event decays every count alike."""
    items, times, firsts, num_items = log
    counts = RecentCounts(items, times, firsts, num_items)
    later = counts.features(np.array([41.0 * DAY, 70.0 * DAY]))
    np.testing.assert_allclose(later[0], later[1], rtol=1e-4, atol=1e-5)
