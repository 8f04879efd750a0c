"""What feeds a preference head: the like share of a labelled history, masked means over histories
of different lengths, a record as the text a cross-encoder reads, and batches of records
(:class:`PreferenceCollator`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from peftrec.models.tokens import pad_batch


def share_logit(
    labels: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Logit of the smoothed like share ``(likes + 1) / (n + 2)`` of 0/1 ``labels`` (only where
    ``mask`` is true, when given)."""
    if mask is None:
        likes, n = labels.sum(dim), labels.size(dim)
    else:
        likes, n = (labels * mask).sum(dim), mask.sum(dim)
    return torch.log((likes + 1) / (n - likes + 1))


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean over ``dim`` of the entries where ``mask`` (broadcast over trailing dimensions) is
    true; the plain mean without a mask."""
    if mask is None:
        return values.mean(dim)
    mask = mask.to(values.dtype)
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def item_titles(item_fields: dict[str, list[str]] | None, item_texts: Sequence[str]) -> list[str]:
    """What a record text calls each item: ``title (year)`` when the items have those fields,
    else the item's whole text."""
    fields = item_fields or {}
    if "title" not in fields:
        return list(item_texts)
    years = fields.get("year")
    return [
        f"{title} ({years[i]})" if years and years[i] else title
        for i, title in enumerate(fields["title"])
    ]


def record_text(titles: Sequence[str], liked: Sequence[int], target: str) -> str:
    """The text a cross-encoder reads for one record (TALLRec's wording, shortened)."""
    yes = ", ".join(f'"{t}"' for t, like in zip(titles, liked, strict=True) if like) or "none"
    no = ", ".join(f'"{t}"' for t, like in zip(titles, liked, strict=True) if not like) or "none"
    return f'The user liked: {yes}. The user disliked: {no}. Will the user like "{target}"?'


def history_records(
    items: Sequence[int], histories: Sequence[tuple[Sequence[int], Sequence[int]]], k: int
) -> tuple[list[str], torch.Tensor]:
    """Cross, for apps: the record texts' parts and like-share logits of labelled histories of
    any length ``(item rows, labels)`` (the last ``k`` of each) before the aligned target rows:
    ``([(history rows, labels, target row), ...], share logits)``."""
    parts, shares = [], []
    for target, (rows, labels) in zip(items, histories, strict=True):
        rows, labels = list(rows)[-k:], list(labels)[-k:]
        parts.append((rows, labels, int(target)))
        shares.append(share_logit(torch.tensor(labels, dtype=torch.float32)))
    return parts, torch.stack(shares) if shares else torch.zeros(0)


def record_texts(records, titles: Sequence[str]) -> list[str]:
    """:func:`record_text` of every record (``titles``: per item row, :func:`item_titles`)."""
    if isinstance(records, list):  # (history rows, labels, target row) triples
        triples = records
    else:
        lengths = records.history_mask.sum(1).tolist()
        triples = (
            (h[:n], labels[:n], t)
            for h, labels, t, n in zip(
                records.history_items.tolist(),
                records.history_labels.tolist(),
                records.items.tolist(),
                lengths,
                strict=True,
            )
        )
    return [record_text([titles[i] for i in h], labels, titles[t]) for h, labels, t in triples]


class PreferenceCollator:
    """Batches of records for :meth:`PreferenceHead.step`.

    Towers: the distinct items of the batch's targets and histories, each text once, with
    ``targets``/``history`` pointing at their rows. Cross: one tokenized record text per record
    (``record_tokens``, aligned with the records).
    """

    def __init__(
        self,
        records,
        pad_id: int,
        *,
        item_tokens: Sequence[Sequence[int]] | None = None,
        record_tokens: Sequence[Sequence[int]] | None = None,
    ):
        if (item_tokens is None) == (record_tokens is None):
            raise ValueError("PreferenceCollator: pass item_tokens (towers) or record_tokens")
        self.records, self.pad_id = records, pad_id
        self.item_tokens, self.record_tokens = item_tokens, record_tokens

    def __len__(self) -> int:
        return len(self.records)

    def __call__(self, index: Sequence[int]) -> dict[str, torch.Tensor]:
        index = np.asarray(index, dtype=np.int64)
        r = self.records
        batch = {
            "history": torch.as_tensor(r.history_items[index]),
            "labels": torch.as_tensor(r.history_labels[index]),
            "target_labels": torch.as_tensor(r.labels[index]),
        }
        if r.padded:  # some histories are shorter: the head reads which positions hold events
            batch["history_mask"] = torch.as_tensor(r.history_mask[index])
        if self.record_tokens is not None:
            ids, mask = pad_batch([self.record_tokens[i] for i in index], self.pad_id)
            return {**batch, "input_ids": ids, "attention_mask": mask}
        used = np.concatenate([r.items[index], r.history_items[index].ravel()])
        distinct, rows = np.unique(used, return_inverse=True)
        ids, mask = pad_batch([self.item_tokens[i] for i in distinct], self.pad_id)
        rows = torch.as_tensor(rows, dtype=torch.long)
        return {
            **batch,
            "history": rows[len(index) :].view(len(index), -1),
            "targets": rows[: len(index)],
            "input_ids": ids,
            "attention_mask": mask,
            "item_index": torch.as_tensor(distinct),
        }
