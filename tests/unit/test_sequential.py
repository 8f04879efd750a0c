"""The history encoder and the sequential head: causal, padding-proof, item-amortised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftrec.config import AdapterConfig, BackboneConfig, ModelConfig
from peftrec.models.assembly import make_spec
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks import TASKS
from peftrec.tasks.sequential.config import SequentialRecipeConfig
from peftrec.tasks.sequential.data import SequenceCollator, user_histories
from peftrec.tasks.sequential.head import PAD, HistoryEncoder, SequentialHead, left_pad
from peftrec.tasks.sequential.step import next_item_ranks, sequence_loss

from .test_data_ml100k import ml100k  # noqa: F401 (the real data, or a skip)
from .test_model import NUM_ITEMS, TEXTS


def encoder(dropout=0.0) -> HistoryEncoder:
    torch.manual_seed(0)
    return HistoryEncoder(16, max_length=8, blocks=2, heads=2, dropout=dropout).eval()


def test_a_state_depends_only_on_the_items_before_it():
    enc, vectors = encoder(), torch.randn(10, 16)
    a = enc(vectors, torch.tensor([[1, 2, 3, 4, 5]]))
    b = enc(vectors, torch.tensor([[1, 2, 3, 9, 0]]))  # the last two items changed
    assert torch.allclose(a[0, :3], b[0, :3], atol=1e-6) and not torch.allclose(a[0, 3], b[0, 3])


def test_left_padding_does_not_change_the_last_state():
    enc, vectors = encoder(), torch.randn(10, 16)
    short = enc(vectors, torch.tensor([[4, 2, 7]]))
    padded = enc(vectors, torch.tensor([[PAD, PAD, 4, 2, 7]]))
    assert torch.allclose(short[0, -1], padded[0, -1], atol=1e-5)
    assert torch.equal(padded[0, :2], torch.zeros(2, 16))  # padded positions carry nothing
    assert torch.isfinite(
        enc(vectors, torch.tensor([[PAD, PAD]]))
    ).all()  # an empty history is no NaN


def test_left_pad_keeps_the_most_recent_items():
    padded = left_pad([[1, 2, 3, 4, 5], [7]], 3)
    assert padded.tolist() == [[3, 4, 5], [PAD, PAD, 7]]
    assert left_pad([[]], 3).tolist() == [[PAD]]
    with pytest.raises(ValueError, match="longer than the encoder's 8"):
        encoder()(torch.randn(3, 16), torch.zeros(1, 9, dtype=torch.long))


def test_histories_are_in_time_order_with_ties_in_row_order():
    users = np.array([1, 0, 1, 1, 0])
    items = np.array([10, 11, 12, 13, 14])
    times = np.array([5.0, 2.0, 1.0, 5.0, 1.0])
    histories = user_histories(users, items, times, num_users=3)
    assert [h.tolist() for h in histories] == [[14, 11], [12, 10, 13], []]


def model_for(backbone, method="frozen", item_ids=True):
    from peftrec.models.assembly import assemble

    cfg = SequentialRecipeConfig(
        backbone=BackboneConfig(name=str(backbone)),
        adapter=AdapterConfig(method=method, r=4, dropout=0.0),
        model=ModelConfig(dim=8, item_ids=item_ids),
    )
    spec = make_spec(
        cfg.backbone, cfg.adapter, cfg.model, task="sequential", num_users=3, num_items=NUM_ITEMS
    )
    spec.head = TASKS["sequential"].head_options(cfg, spec.head)
    torch.manual_seed(0)
    return assemble(spec, adapter=cfg.adapter)


def test_the_step_scores_the_catalogue_and_the_lm_learns_straight_through(tiny_bert):
    model, tokenizer = model_for(tiny_bert, "lora")
    tokens = tokenize_texts(tokenizer, TEXTS, 16)
    table = model.encode_texts(tokens)
    model.head.fit_text_norm(table)
    histories = [np.array([0, 3, 5, 2]), np.array([1, 4]), np.array([6, 7, 8, 9, 10])]
    batch = SequenceCollator(histories, 4, tokens, tokenizer.pad_token_id, fresh=5, seed=0)(
        [0, 1, 2]
    )
    assert len(batch["item_index"]) == 5 and set(batch["item_index"].tolist()) <= set(
        range(NUM_ITEMS)
    )
    torch.nn.init.normal_(next(p for n, p in model.named_parameters() if "lora_B" in n), std=0.1)
    model.train()
    torch.manual_seed(1)
    output = model(**batch, table=table)
    assert output.logits.shape == (3 + 1 + 4, NUM_ITEMS)  # one row per next item to predict
    assert output.targets.tolist() == [3, 5, 2, 4, 7, 8, 9, 10]
    model.head.encoder.dropout.p = 0.0
    for block in model.head.encoder.blocks:
        block.dropout.p = block.feed[2].p = 0.0
    output = model(**batch, table=table)
    plain = model(history=batch["history"], targets=batch["targets"], table=table)
    assert torch.allclose(output.logits, plain.logits, atol=1e-5)  # the table's values, ...
    sequence_loss(output).backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.named_parameters()
        if "lora_" in n
    )
    model.zero_grad()
    sequence_loss(plain).backward()  # ... and without the fresh pass the LM gets no gradient
    assert all(
        p.grad is None or p.grad.abs().sum() == 0
        for n, p in model.named_parameters()
        if "lora_" in n
    )


def test_sampled_loss_approaches_the_full_softmax(tiny_bert):
    model, tokenizer = model_for(tiny_bert)
    table = model.encode_texts(tokenize_texts(tokenizer, TEXTS, 16))
    output = model(history=left_pad([[0, 3, 5]], 4), targets=left_pad([[3, 5, 2]], 4), table=table)
    full = sequence_loss(output).item()
    popularity = torch.ones(NUM_ITEMS)
    sampled = np.mean(
        [
            sequence_loss(
                output, "sampled", 400, popularity, torch.Generator().manual_seed(s)
            ).item()
            for s in range(5)
        ]
    )
    assert sampled == pytest.approx(full, rel=0.05)


def test_next_item_ranks_exclude_what_the_user_has_seen(tiny_bert):
    model, tokenizer = model_for(tiny_bert, item_ids=False)
    table = model.encode_texts(tokenize_texts(tokenizer, TEXTS, 16))
    histories, targets = [[0, 1], [2]], np.array([5, 6])
    exclude = torch.zeros(2, NUM_ITEMS, dtype=torch.bool)
    ranks = next_item_ranks(model.head, table, histories, targets, exclude)
    exclude[0, 0] = exclude[0, 1] = True
    fewer = next_item_ranks(model.head, table, histories, targets, exclude)
    assert ranks.shape == (2,) and (fewer <= ranks).all() and 1 <= fewer.min()
    assert isinstance(model.head, SequentialHead) and model.head.user_emb is None


def test_positions_outside_the_trained_rows_are_inputs_but_not_targets():
    from peftrec.tasks.sequential.data import SequenceCollator, training_windows
    from peftrec.tasks.sequential.head import PAD

    histories = [np.array([4, 5, 6, 7]), np.array([1, 2])]
    trained = [np.array([False, False, True, True]), np.array([True, False])]
    inputs, targets = training_windows(histories, 2, trained)
    assert [i.tolist() for i in inputs] == [[5, 6], [1]]
    assert [t.tolist() for t in targets] == [[6, 7], [PAD]]
    collator = SequenceCollator(histories, 2, [[0]] * 8, 0, fresh=8, trained=trained)
    assert collator.users_with_targets() == [0]  # user 1 has no trained position
    batch = collator([0, 1])
    assert batch["targets"].tolist() == [[6, 7], [PAD, PAD]]
    assert batch["item_index"].tolist() == [1, 5, 6, 7]  # the step's items, PAD not among them


def test_p4_histories_read_blocks_1_to_t_and_train_on_the_new_blocks_rows(ml100k):  # noqa: F811
    from types import SimpleNamespace

    from peftrec.data.blocks import p4_history, p4_ranking_split
    from peftrec.data.splits import Split
    from peftrec.tasks.sequential.data import run_histories

    inter = ml100k.interactions
    split = p4_ranking_split(ml100k, 3, window="new")
    learned, before = p4_history(ml100k, 3)
    data = SimpleNamespace(
        dataset=ml100k,
        **{name: inter.subset(getattr(split, name)) for name in ("train", "valid", "test")},
        rows=Split(*split),
        history_rows=(learned, before),
    )
    histories = run_histories(data)
    assert sum(len(h) for h in histories.train) == len(learned)  # B1..B3's training rows
    assert sum(int(t.sum()) for t in histories.trained) == len(split.train) == 18_000
    for position, row in enumerate(split.test[:50]):  # B4's first rows read all of B1..B3
        user = inter.users[row]
        mine = before[inter.users[before] == user]
        assert sorted(histories.test[position].tolist()) == sorted(inter.items[mine].tolist())
    for position, row in enumerate(split.valid[:50]):  # B3's held-out rows: only what came before
        user, time = inter.users[row], inter.timestamps[row]
        mine = before[(inter.users[before] == user) & (inter.timestamps[before] < time)]
        assert set(inter.items[mine].tolist()) <= set(histories.valid[position].tolist())
        assert inter.items[row] not in histories.valid[position]


def test_a_learned_empty_state_trains_on_first_items_and_scores_new_users():
    from peftrec.tasks.sequential.data import SequenceCollator
    from peftrec.tasks.sequential.head import PAD, SequentialHead, history_states

    torch.manual_seed(0)
    head = SequentialHead(12, 6, dim=8, max_history=4, empty_state=True)
    assert SequentialHead(12, 6, dim=8, max_history=4).start is None  # the default: zero
    table = torch.randn(6, 12)
    histories = [np.array([2, 3, 4]), np.array([5]), np.array([1, 0])]
    trained = [np.array([True, True, True]), np.array([True]), np.array([False, True])]
    collator = SequenceCollator(histories, 4, [[0]] * 6, 0, trained=trained, first_items=True)
    # user 1 has no next item but a first one; user 2's first row is not trained
    assert collator.firsts == [2, 5, PAD] and collator.users_with_targets() == [0, 1, 2]
    batch = collator([0, 1, 2])
    output = head.step(
        None,
        None,
        table.new_zeros(()),
        batch["history"],
        batch["targets"],
        table,
        first=batch["first"],
    )
    assert output.targets.tolist() == [3, 4, 0, 2, 5]  # the windows' targets, then the firsts
    with torch.no_grad():
        head.start.copy_(torch.arange(8.0))
    items = head.items(table, torch.arange(6))
    states = history_states(head, items, [[], [3], []])
    assert torch.equal(states[0], head.start) and torch.equal(states[2], head.start)
    assert not torch.equal(states[1], head.start)


def test_recency_scores_each_position_with_the_popularity_of_its_targets_moment():
    from peftrec.models.recency import DAY, RecencyTable, RecentCounts
    from peftrec.tasks.sequential.data import SequenceCollator

    torch.manual_seed(0)
    head = SequentialHead(12, 6, dim=8, max_history=4, empty_state=True, recency=True).eval()
    table = torch.randn(6, 12)
    histories = [np.array([2, 3, 4]), np.array([5])]
    times = [np.array([1.5, 3.2, 9.9]) * DAY, np.array([4.0]) * DAY]
    collator = SequenceCollator(histories, 4, [[0]] * 6, 0, first_items=True, times=times)
    batch = collator([0, 1])
    # each target's moment is its own time; the first item's, the user's first time; the age,
    # the time since the item before the target
    assert batch["moments"][0, -2:].tolist() == [3.2 * DAY, 9.9 * DAY]
    assert batch["ages"][0, -2:].tolist() == pytest.approx([1.7 * DAY, 6.7 * DAY])
    assert batch["first_moments"].tolist() == [1.5 * DAY, 4.0 * DAY]
    counts = RecentCounts(np.array([4, 4, 1]), np.array([1.0, 2.0, 8.0]) * DAY, np.ones(3, bool), 6)
    head.set_recency(RecencyTable(counts))
    step = head.step(None, None, table.new_zeros(()), batch["history"], batch["targets"], table,
                     first=batch["first"], moments=batch["moments"], ages=batch["ages"],
                     first_moments=batch["first_moments"])  # fmt: skip
    plain = SequentialHead(12, 6, dim=8, max_history=4, empty_state=True).eval()
    plain.load_state_dict(head.state_dict(), strict=False)
    without = plain.step(None, None, table.new_zeros(()), batch["history"], batch["targets"],
                         table, first=batch["first"])  # fmt: skip
    torch.testing.assert_close(step.logits, without.logits)  # the gate starts at zero
    with torch.no_grad():
        head.recency_gate.bias.fill_(1.0)
    step = head.step(None, None, table.new_zeros(()), batch["history"], batch["targets"], table,
                     first=batch["first"], moments=batch["moments"], ages=batch["ages"],
                     first_moments=batch["first_moments"])  # fmt: skip
    added = (step.logits - without.logits).detach()
    # position 9.9 days: items 4 (days 1, 2) and 1 (day 8) counted; the first moment 1.5: none
    assert added[1, 4] > 0 and added[1, 1] > 0 and added[1, 0] == 0
    assert added[2].abs().max() == 0  # user 0's first item, at day 1.5: nothing seen before
    step.logits.sum().backward()
    assert head.recency_gate.weight.grad.abs().sum() > 0


def test_a_recency_head_without_counts_says_what_is_missing():
    head = SequentialHead(12, 6, dim=8, max_history=4, recency=True)
    with pytest.raises(ValueError, match="set_recency"):
        head.recency_scores(torch.zeros(1, 8), *torch.zeros(2, 1, dtype=torch.float64))


def test_p3_recency_counts_the_training_then_the_validation_rows_never_a_test_row(ml100k):  # noqa: F811
    """The leakage guard of the recipe's data: the rows a recency term counts are the training
    rows, and for the test also the validation rows (a test history reads its validation item),
    never a test row; each count is then limited to the days before its moment
    (tests/unit/test_recency.py)."""
    from types import SimpleNamespace

    from peftrec.data.splits import split_rows
    from peftrec.tasks.sequential.data import run_histories

    inter = ml100k.interactions
    split = split_rows(ml100k, "p3")
    data = SimpleNamespace(
        dataset=ml100k,
        **{name: inter.subset(getattr(split, name)) for name in ("train", "valid", "test")},
        rows=split,
        history_rows=None,
    )
    histories = run_histories(data)
    training, testing = histories.seen
    assert np.array_equal(np.sort(training), np.sort(split.train))
    assert np.array_equal(np.sort(testing), np.sort(np.concatenate(split[:2])))
    assert not np.isin(testing, split.test).any()
    np.testing.assert_array_equal(histories.moments[1], inter.timestamps[split.test])
    # a test history ends with its validation item: its age is measured from that
    valid_time = dict(zip(inter.users[split.valid], inter.timestamps[split.valid], strict=True))
    user = inter.users[split.test[0]]
    assert histories.ages[1][0] == inter.timestamps[split.test[0]] - valid_time[user] >= 0
    flat = np.concatenate(histories.times)
    assert len(flat) == len(split.train) and np.isin(flat, inter.timestamps[split.train]).all()


def test_members_train_apart_and_score_as_the_mean_of_their_scores():
    from peftrec.tasks.sequential.head import history_states

    torch.manual_seed(0)
    head = SequentialHead(12, 6, dim=8, max_history=4, members=3, empty_state=True).eval()
    table = torch.randn(6, 12)
    items = head.items(table, torch.arange(6))
    assert items[0].shape == (6, 24) and len(head.more_encoders) == 2
    history = torch.tensor([[PAD, 1, 2, 3], [4, 5, 0, 1]])
    states = head.states(items, history)
    # each member alone: its slice of the item vectors under its own encoder
    encoders = (head.encoder, *head.more_encoders)
    alone = [
        enc(items[0][:, 8 * k : 8 * (k + 1)], history) @ items[0][:, 8 * k : 8 * (k + 1)].T
        for k, enc in enumerate(encoders)
    ]
    mean = sum(alone) / 3 + items[1]
    torch.testing.assert_close(head.score_states(states, items), mean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone[0], alone[1])  # the members differ
    # training: every member's own logits, on the same targets, one block per member
    collator = SequenceCollator([np.array([1, 2, 3, 4])], 4, [[0]] * 6, 0)
    batch = collator([0])
    output = head.step(None, None, table.new_zeros(()), batch["history"], batch["targets"], table)
    assert output.targets.tolist() == [2, 3, 4] * 3 and output.logits.shape == (9, 6)
    last = history_states(head, head.items(table, torch.arange(6)), [[1, 2, 3]])
    blocks = output.logits.detach().view(3, 3, 6)[:, -1]  # each member after item 3
    torch.testing.assert_close(
        last @ items[0].T + items[1], blocks.mean(0, keepdim=True), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="one alone with recency"):
        SequentialHead(12, 6, dim=8, members=2, recency=True)
    config = SequentialRecipeConfig()
    config.sequence.members, config.sequence.recency = 2, True
    assert any("recency gate reads one state" in p for p in config.conflicts())
