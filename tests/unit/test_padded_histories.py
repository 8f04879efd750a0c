"""Histories of different lengths (tallrec-book: 3 to 10 events): a padded record scores, trains
and serves exactly as its unpadded shorter self; the mask changes nothing when every position
holds an event."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftrec.data.preference import PreferenceRecords
from peftrec.tasks.preference.batches import PreferenceCollator, record_texts, share_logit
from peftrec.tasks.preference.head import PreferenceHead


def head() -> PreferenceHead:
    torch.manual_seed(0)
    h = PreferenceHead(12, 30, dim=6)
    with torch.no_grad():
        for p in h.parameters():
            p.normal_(0, 0.5)
    return h.eval()


def padded(history: torch.Tensor, labels: torch.Tensor, n: int):
    """The first n events of each history, padded to ten with item 0 / label 0, and the mask."""
    mask = torch.arange(10)[None, :] < n
    return history.where(mask, 0), labels.where(mask, 0), mask.expand(len(history), -1)


def test_a_padded_record_scores_as_its_short_history():
    h = head()
    items = h.items(torch.randn(30, 12), torch.arange(30))
    history, labels = torch.randint(1, 30, (5, 10)), torch.randint(0, 2, (5, 10))
    targets = torch.randint(0, 30, (5,))
    for n in (3, 7):
        pad_h, pad_l, mask = padded(history, labels, n)
        short = h.record_logits(items, targets, history[:, :n], labels[:, :n])
        torch.testing.assert_close(h.record_logits(items, targets, pad_h, pad_l, mask), short)
        # the padding's items and labels are not read: other fillers, same logits
        other = pad_h.where(mask, 7), pad_l.where(mask, 1)
        torch.testing.assert_close(h.record_logits(items, targets, *other, mask), short)
        short_histories = zip(history[:, :n].tolist(), labels[:, :n].tolist(), strict=True)
        served = h.users_of_histories(items, list(short_histories))
        torch.testing.assert_close(
            h.score(served, (items[0][targets], items[1][targets])),
            h.score_records(items, targets, pad_h, pad_l, mask=mask),
        )


def test_a_full_mask_changes_nothing():
    h = head()
    items = h.items(torch.randn(30, 12), torch.arange(30))
    history, labels = torch.randint(0, 30, (4, 10)), torch.randint(0, 2, (4, 10))
    targets = torch.randint(0, 30, (4,))
    full = torch.ones(4, 10, dtype=torch.bool)
    torch.testing.assert_close(
        h.record_logits(items, targets, history, labels, full),
        h.record_logits(items, targets, history, labels),
    )
    torch.testing.assert_close(
        h.history_event_logits(items, history, labels, full),
        h.history_event_logits(items, history, labels),
    )
    torch.testing.assert_close(share_logit(labels.float(), mask=full), share_logit(labels.float()))


def test_a_padded_history_event_is_scored_from_the_other_real_events():
    h = head()
    items = h.items(torch.randn(30, 12), torch.arange(30))
    history, labels = torch.randint(1, 30, (3, 10)), torch.randint(0, 2, (3, 10))
    n = 5
    pad_h, pad_l, mask = padded(history, labels, n)
    events = h.history_event_logits(items, pad_h, pad_l, mask)
    for j in range(n):
        keep = [k for k in range(n) if k != j]
        alone = h.record_logits(items, history[:, j], history[:, keep], labels[:, keep])
        torch.testing.assert_close(events[:, j], alone)


def records(lengths: list[int]) -> PreferenceRecords:
    rng = np.random.default_rng(0)
    n = len(lengths)
    mask = np.arange(10)[None, :] < np.asarray(lengths)[:, None]
    return PreferenceRecords(
        users=np.arange(n),
        items=rng.integers(0, 30, n),
        labels=rng.integers(0, 2, n),
        history_items=np.where(mask, rng.integers(1, 30, (n, 10)), 0),
        history_labels=np.where(mask, rng.integers(0, 2, (n, 10)), 0),
        rows=np.arange(n),
        history_mask=mask,
    )


def test_the_collator_passes_the_mask_and_a_step_trains_on_real_events_only():
    r = records([3, 10, 6])
    assert r.padded and not records([10, 10]).padded
    tokens = [[1, 2, 3 + i % 5] for i in range(30)]
    batch = PreferenceCollator(r, 0, item_tokens=tokens)([0, 1, 2])
    assert batch["history_mask"].sum().item() == 19

    def step(head, input_ids, attention_mask, item_index, **inputs):  # a stand-in encoder
        text = torch.nn.functional.one_hot(input_ids[:, 2], 12).float()
        return head.step(text, item_index, text.new_zeros(()), **inputs)

    h = PreferenceHead(12, 30, dim=6).train()
    out = step(h, **batch)
    assert len(out.logits) == 3 + 19  # the targets, then every real history event
    assert out.targets == 3
    without_mask = {k: v for k, v in batch.items() if k != "history_mask"}
    assert len(step(h, **without_mask).logits) == 3 + 30


def test_record_texts_name_only_the_real_events():
    r = records([3, 10])
    titles = [f"t{i}" for i in range(30)]
    texts = record_texts(r, titles)
    named = sum(texts[0].count(f'"t{i}"') for i in range(30))
    assert named == 3 + 1  # three history titles and the target
    with pytest.raises(ValueError):
        PreferenceCollator(r, 0)


def content_head() -> PreferenceHead:
    torch.manual_seed(0)
    h = PreferenceHead(12, 30, dim=6, content=True)
    with torch.no_grad():
        for p in h.parameters():
            p.normal_(0, 0.5)
    return h.eval()


def test_the_content_match_is_one_scalar_on_the_unit_texts():
    h = content_head()
    assert "content_weight" in h.calibration
    text = torch.randn(30, 12)
    items = h.items(text, torch.arange(30))
    assert items[0].shape == (30, 6 + 12)
    history, labels = torch.randint(1, 30, (4, 10)), torch.randint(0, 2, (4, 10))
    targets = torch.randint(0, 30, (4,))
    unit = torch.nn.functional.normalize(text, dim=-1)
    signed = (unit[history] * (2 * labels - 1).unsqueeze(-1).float()).mean(1)
    expected_gap = h.content_weight * (signed * unit[targets]).sum(-1)
    with_content = h.record_logits(items, targets, history, labels)
    with torch.no_grad():
        h.content_weight.zero_()
    torch.testing.assert_close(with_content - h.record_logits(items, targets, history, labels),
                               expected_gap.detach())  # fmt: skip


def test_a_content_model_serves_and_scores_events_as_records():
    h = content_head()
    items = h.items(torch.randn(30, 12), torch.arange(30))
    history, labels = torch.randint(1, 30, (3, 10)), torch.randint(0, 2, (3, 10))
    targets = torch.randint(0, 30, (3,))
    users = h.users_of_histories(items, list(zip(history.tolist(), labels.tolist(), strict=True)))
    torch.testing.assert_close(
        h.score(users, (items[0][targets], items[1][targets])),
        h.score_records(items, targets, history, labels),
    )
    pad_h, pad_l, mask = padded(history, labels, 6)
    events = h.history_event_logits(items, pad_h, pad_l, mask)
    for j in (0, 5):
        keep = [k for k in range(6) if k != j]
        alone = h.record_logits(items, history[:, j], history[:, keep], labels[:, keep])
        torch.testing.assert_close(events[:, j], alone)
    with pytest.raises(ValueError, match="item_text"):
        PreferenceHead(12, 30, dim=6, content=True, item_text=False, item_ids=True)
