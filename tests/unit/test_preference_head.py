"""The preference head's arithmetic, its records (p3 with labels, source domain, few-shot) and
the settings it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftrec.config import ConfigError, check_settings, parse_cli
from peftrec.data import DataError, Interactions, RecDataset
from peftrec.data.preference import (
    KEPT,
    p3_preference_split,
    preference_records,
    run_records,
    source_records,
)
from peftrec.tasks.preference.batches import history_records, record_texts, share_logit
from peftrec.tasks.preference.config import PreferenceRecipeConfig
from peftrec.tasks.preference.head import PreferenceHead
from peftrec.tasks.rating.config import RatingRecipeConfig

from .test_data_ml100k import ml100k  # noqa: F401 (the real data, or a skip)


def head(**kwargs) -> PreferenceHead:
    torch.manual_seed(0)
    h = PreferenceHead(12, 30, dim=6, **kwargs)
    with torch.no_grad():  # away from the near-zero start, so every term counts
        for p in h.parameters():
            p.normal_(0, 0.5)
    return h.eval()


def test_share_logit_is_the_smoothed_like_share():
    labels = torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 0]])
    expected = torch.log(torch.tensor([4 / 2, 1 / 5]))
    torch.testing.assert_close(share_logit(labels), expected)


def test_a_users_bias_reads_the_like_share_against_the_items_like_rates():
    h = head()
    items = h.items(torch.randn(30, 12), torch.arange(30))
    history, labels = torch.randint(0, 30, (4, 10)), torch.randint(0, 2, (4, 10)).float()
    _, bias = h.history_users(items, history, labels)
    b = items[1][history]
    expected = (
        h.offset
        + h.share_weight * share_logit(labels)
        + h.leniency_weight * (labels - torch.sigmoid(b)).mean(1)
        + h.quality_weight * b.mean(1)
    )
    torch.testing.assert_close(bias, expected)
    # the same likes of items most users like read as a stricter user than of items they dislike
    with torch.no_grad():
        h.quality_weight.zero_()
        h.leniency_weight.fill_(2.0)
    liked = torch.ones(1, 10)
    popular, unpopular = torch.argsort(items[1])[-10:][None], torch.argsort(items[1])[:10][None]
    strict, lenient = (h.history_users(items, rows, liked)[1] for rows in (popular, unpopular))
    assert lenient > strict


def test_a_head_saved_before_the_users_bias_loads_with_it_at_zero():
    h = head()
    new = ("leniency", "quality", "item_weight", "match_weight")
    state = {k: v for k, v in h.state_dict().items() if not any(n in k for n in new)}
    old = PreferenceHead(12, 30, dim=6)
    old.load_state_dict(state)  # strict: every other key must still match
    assert old.leniency_weight.item() == old.quality_weight.item() == 0.0
    assert old.item_weight.item() == old.match_weight.item() == 1.0
    with pytest.raises(RuntimeError, match="share_weight"):
        PreferenceHead(12, 30, dim=6).load_state_dict(
            {k: v for k, v in state.items() if k != "share_weight"}
        )


def test_the_calibration_weights_scale_the_items_bias_and_the_match():
    h = head()
    text, history = torch.randn(30, 12), torch.randint(0, 30, (4, 10))
    labels, targets = torch.randint(0, 2, (4, 10)), torch.randint(0, 30, (4,))
    with torch.no_grad():
        h.item_weight.fill_(1.0)
        h.match_weight.fill_(1.0)
        plain = h.items(text, torch.arange(30))
        user, _ = h.history_users(plain, history, labels)
        match = (user * plain[0][targets]).sum(-1)
        h.item_weight.fill_(2.0)
        h.match_weight.fill_(0.5)
        items = h.items(text, torch.arange(30))
        got = h.record_logits(items, targets, history, labels)
    torch.testing.assert_close(items[1], 2 * plain[1])
    # the user's bias reads the scaled item biases as the items' like rates
    _, scaled_bias = h.history_users(items, history, labels)
    torch.testing.assert_close(got, scaled_bias + 2 * plain[1][targets] + 0.5 * match)
    assert len(h.calibration) == 6 and {"item_weight", "match_weight"} <= set(h.calibration)
    assert set(h.calibration) <= {n for n, _ in h.named_parameters()}


def test_a_history_event_is_scored_as_a_record_of_the_other_events():
    h = head()
    text = torch.randn(30, 12)
    items = h.items(text, torch.arange(30))
    history = torch.randint(0, 30, (5, 10))
    labels = torch.randint(0, 2, (5, 10))
    events = h.history_event_logits(items, history, labels)
    for j in (0, 4, 9):
        keep = [k for k in range(10) if k != j]
        alone = h.record_logits(items, history[:, j], history[:, keep], labels[:, keep])
        torch.testing.assert_close(events[:, j], alone)


def test_served_user_vectors_give_the_records_probabilities():
    h = head()
    text = torch.randn(30, 12)
    items = h.items(text, torch.arange(30))
    history, labels = torch.randint(0, 30, (4, 10)), torch.randint(0, 2, (4, 10))
    targets = torch.randint(0, 30, (4,))
    expected = h.score_records(items, targets, history, labels)
    users = h.users_of_histories(items, list(zip(history.tolist(), labels.tolist(), strict=True)))
    torch.testing.assert_close(h.score(users, (items[0][targets], items[1][targets])), expected)
    # a longer history reads its last ten; an empty one is a like share of one half
    longer = [([1, 2, *history[0].tolist()], [0, 1, *labels[0].tolist()])]
    torch.testing.assert_close(h.users_of_histories(items, longer)[1], users[1][:1])
    empty = h.users_of_histories(items, [([], [])])
    assert empty[0].abs().sum() == 0 and float(empty[1]) == pytest.approx(float(h.offset.detach()))


def test_the_untrained_head_ranks_records_by_their_like_share():
    torch.manual_seed(0)
    h = PreferenceHead(12, 30, dim=6).eval()  # as a run starts: near-zero vectors, weight 1
    items = h.items(torch.randn(30, 12), torch.arange(30))
    history = torch.randint(0, 30, (50, 10))
    labels = torch.randint(0, 2, (50, 10))
    p = h.score_records(items, torch.randint(0, 30, (50,)), history, labels)
    likes = labels.sum(1)
    order = torch.argsort(p)
    assert bool((likes[order][1:] >= likes[order][:-1]).all())


def test_the_cross_reader_has_no_item_tables_and_refuses_users():
    h = PreferenceHead(12, 30, dim=6, reader="cross", item_ids=True)
    assert h.item_emb is None and h.knowledge is None
    with pytest.raises(TypeError, match="histories"):
        h.users(torch.arange(2))
    with pytest.raises(ValueError, match="reader"):
        PreferenceHead(12, 30, reader="bag")
    with pytest.raises(ValueError, match="no user table"):
        PreferenceHead(12, 30, num_users=5)


@pytest.mark.parametrize("reader", ["towers", "cross"])
def test_every_parameter_that_trains_gets_a_gradient(reader):
    """A parameter that trains but is not read breaks DDP (it waits for its gradient)."""
    torch.manual_seed(0)
    h = PreferenceHead(12, 30, dim=6, reader=reader).train()
    labels = torch.randint(0, 2, (4, 10))
    if reader == "cross":
        logits = h.cross_logits(torch.randn(4, 12), share_logit(labels.float()))
    else:
        items = h.items(torch.randn(30, 12), torch.arange(30))
        history, targets = torch.randint(0, 30, (4, 10)), torch.randint(0, 30, (4,))
        logits = torch.cat(
            [
                h.record_logits(items, targets, history, labels),
                h.history_event_logits(items, history, labels).ravel(),
            ]
        )
    logits.sum().backward()
    trained = {n: p for n, p in h.named_parameters() if p.requires_grad}
    assert trained and all(p.grad is not None for p in trained.values()), [
        n for n, p in trained.items() if p.grad is None
    ]


def test_record_texts_name_liked_and_disliked_titles():
    titles = ["A (1990)", "B (1991)", "C (1992)"]
    parts, shares = history_records([2], [([0, 1], [1, 0])], k=10)
    (text,) = record_texts(parts, titles)
    assert text == (
        'The user liked: "A (1990)". The user disliked: "B (1991)". Will the user like "C (1992)"?'
    )
    assert float(shares[0]) == pytest.approx(0.0)


def small_dataset(rows_per_user: int = 14, users: int = 3) -> RecDataset:
    u = np.repeat(np.arange(users), rows_per_user)
    i = np.tile(np.arange(rows_per_user), users)
    r = np.where(i % 3 == 0, 2.0, 5.0)
    t = np.tile(np.arange(rows_per_user), users)[::-1].copy()  # file order is not time order
    inter = Interactions(u, i, r, t.astype(np.int64))
    return RecDataset(
        name="small",
        user_ids=[f"u{k}" for k in range(users)],
        item_ids=[f"i{k}" for k in range(rows_per_user)],
        item_fields={"title": [f"t{k}" for k in range(rows_per_user)]},
        user_fields={},
        interactions=inter,
    )


def test_p3_with_labels_holds_out_each_users_last_two_rows():
    dataset = small_dataset()
    train, valid, test = p3_preference_split(dataset)
    inter = dataset.interactions
    for user in range(3):
        rows = np.flatnonzero(inter.users == user)
        by_time = rows[np.argsort(inter.timestamps[rows], kind="stable")]
        assert test.rows[test.users == user].tolist() == [by_time[-1]]
        assert valid.rows[valid.users == user].tolist() == [by_time[-2]]
        # the test record's history ends with the validation item
        assert test.history_items[test.users == user][0, -1] == inter.items[by_time[-2]]
    assert len(train) == 3 * (14 - 10 - 2)
    assert set(train.rows).isdisjoint(set(valid.rows) | set(test.rows))
    with pytest.raises(DataError, match="at least 13 rows"):
        p3_preference_split(small_dataset(rows_per_user=11))


def test_source_records_are_those_before_the_benchmark(ml100k):  # noqa: F811
    every = preference_records(ml100k)
    source = source_records(ml100k)
    assert len(source) == len(every) - KEPT
    benchmark_targets = set(every.rows[-KEPT:].tolist())
    assert benchmark_targets.isdisjoint(source.rows.tolist())
    split = run_records(ml100k, "tallrec-movie", "source", 256, seed=3)
    assert len(split.train) == 256 and set(split.train.rows.tolist()) <= set(source.rows.tolist())
    with pytest.raises(DataError, match="8000 training records"):
        run_records(ml100k, "tallrec-movie", "benchmark", 9000, seed=0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["preference.reader=cross"], "model.item_ids=false"),
        (["preference.records=source", "data.protocol=p3"], "source domain"),
        (["data.train_fraction=0.5"], "data.train_records"),
        (["model.user_text=true"], "labelled history|history, not a profile"),
        (["data.protocol=p1"], None),
        (["train.epochs=0", "data.train_records=16"], "zero-shot trains on no record"),
    ],
)
def test_settings_a_preference_run_refuses(argv, message, tmp_path):
    argv = [*argv, f"output_dir={tmp_path}"]
    if message is None:  # a protocol the task does not evaluate: refused at the recipe's start
        from peftrec.tasks import TASKS
        from peftrec.training.recipe import start

        with pytest.raises(ConfigError, match="tallrec-movie or tallrec-book or p3"):
            start(PreferenceRecipeConfig, argv, TASKS["preference"])
        return
    with pytest.raises(ConfigError, match=message):
        check_settings(parse_cli(PreferenceRecipeConfig, argv))


def test_train_records_belongs_to_the_preference_recipe(tmp_path):
    with pytest.raises(ConfigError, match="preference recipe"):
        check_settings(
            parse_cli(RatingRecipeConfig, ["data.train_records=16", f"output_dir={tmp_path}"])
        )
