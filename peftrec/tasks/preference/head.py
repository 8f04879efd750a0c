"""Binary preference (will the user like this item?): the head and what feeds it.

A record is a user's labelled history (items, each liked or not, oldest first) and a target item
(:mod:`peftrec.data.preference`). :class:`PreferenceHead` turns it into the logit of a like, in
one of two ways an LM reads the record (``reader``):

- ``towers`` (item-amortised): the item tower of :class:`~peftrec.models.towers.TwoTowers` encodes
each
  item text once per step; the user is the mean of their history's item vectors, each plus a
  learned like / dislike vector, and the logit is ``offset + a * s + b_u + b_t + <u, q_t>``;
- ``cross`` (TALLRec-style): the LM reads one text with the liked and disliked titles and the
  target (:func:`~peftrec.tasks.preference.batches.record_text`), and the logit is
  ``offset + a * s + w . h_record``.

``s`` is the logit of the history's (smoothed) like share, with weight ``a`` starting at 1: an
untrained head ranks records as counting likes does, and training learns what the items add.
Two more scalars, both starting at 1, weigh the item's bias (``b_t = w_b * b'_t``) and the match
(``u = w_m * u'``); with the offset, ``a``, ``c`` and ``d`` they are the head's
:attr:`~PreferenceHead.calibration`: what a few records can adapt in a trained model
(``train.warm_start=head``) while its towers stay as they are.
``b_u`` (towers, starting at 0) reads the share against the history items' own like rates
(their biases ``b_h``, as fixed covariates): ``c * mean(label_h - sigmoid(b_h)) + d * mean(b_h)``,
a user who likes what most dislike is lenient, one who likes only what all like is not.
With ``content`` (towers) the logit adds ``w_c * <c_u, t_t>``, ``t`` an item's unit-length pooled
text (the LM's own space, no learned projection) and ``c_u`` the history's mean of ``+t_h`` for a
like and ``-t_h`` for a dislike: "like what resembles what you liked", one scalar (from 0) whose
meaning does not depend on the domain, so a model trained on movies can carry it to books.
With ``history_targets`` (towers) every history event is a training example too: its label is
predicted from the other events of the record, so a record of ten teaches eleven labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from peftrec.models.towers import TwoTowers
from peftrec.models.traits import Traits
from peftrec.tasks.preference.batches import masked_mean, share_logit

READERS = ("towers", "cross")


class PreferenceOutput(NamedTuple):
    logits: torch.Tensor  # (events,) the like logit of every scored event
    labels: torch.Tensor  # (events,) float 0/1
    targets: int  # how many of the events are the records' targets (the first ones)
    penalty: torch.Tensor
    source: torch.Tensor


class PreferenceHead(TwoTowers):
    """The logit that a user with a labelled history likes a target item (see the module)."""

    score_link = "sigmoid"

    @classmethod
    def traits_for(cls, args: Mapping[str, Any]) -> Traits:
        """A user is their labelled history; the cross reader scores each pair itself."""
        return Traits(user="labelled history", pairs=args.get("reader") == "cross")

    @property
    def traits(self) -> Traits:
        return self.traits_for({"reader": self.reader})

    def __init__(
        self,
        text_dim: int,
        num_items: int,
        dim: int = 64,
        *,
        reader: str = "towers",
        history: int = 10,
        history_targets: bool = True,
        record_length: int = 256,
        content: bool = False,
        num_users: int = 0,
        user_text_dim: int | None = None,
        **towers,
    ):
        if reader not in READERS:
            raise ValueError(f"preference reader must be one of {READERS}, got {reader!r}")
        if num_users or user_text_dim:
            raise ValueError("a preference head has no user table: a user is their history")
        if reader == "cross":  # the text is the whole record: no item IDs, no facts
            towers = {**towers, "item_ids": False, "item_text": True, "knowledge": None}
            content = False
        if content and not towers.get("item_text", True):
            raise ValueError("a content match reads the item texts: it needs item_text=True")
        super().__init__(text_dim, 0, num_items, dim, **towers)
        self.reader, self.history, self.history_targets = reader, history, history_targets
        self.record_length = record_length  # cross: tokens of a record's text
        self.label = nn.Embedding(2, dim)
        nn.init.normal_(self.label.weight, std=0.01)
        self.share_weight = nn.Parameter(torch.ones(()))
        self.offset = nn.Parameter(torch.zeros(()))
        self.leniency_weight = nn.Parameter(torch.zeros(()))  # c, d of b_u (see the module)
        self.quality_weight = nn.Parameter(torch.zeros(()))
        self.item_weight = nn.Parameter(torch.ones(()))  # w_b, w_m (see the module)
        self.match_weight = nn.Parameter(torch.ones(()))
        self.content = content  # w_c: the raw-text match (see the module), starting at 0
        self.content_weight = nn.Parameter(torch.zeros(())) if content else None
        if reader == "cross":  # what the cross logit does not read stays out of training (DDP)
            used = ("offset", "share_weight", "item_text_bias.")
            for name, param in self.named_parameters():
                param.requires_grad_(name.startswith(used))

    @property
    def calibration(self) -> tuple[str, ...]:
        """The scalar parameters ``train.warm_start=head`` trains (the rest stays as it is)."""
        if self.reader == "cross":
            return ("offset", "share_weight")
        names = (
            "offset",
            "share_weight",
            "leniency_weight",
            "quality_weight",
            "item_weight",
            "match_weight",
        )
        return (*names, "content_weight") if self.content else names

    def _load_from_state_dict(self, state, prefix, *args, **kwargs):
        # a head saved before b_u and the weights w_b, w_m existed scores exactly as it did
        for name, default in (
            ("leniency_weight", 0.0),
            ("quality_weight", 0.0),
            ("item_weight", 1.0),
            ("match_weight", 1.0),
        ):
            state.setdefault(prefix + name, torch.full((), default))
        super()._load_from_state_dict(state, prefix, *args, **kwargs)

    def items(self, text, index=None, facts=None):
        """The towers' item vectors, and their biases times ``w_b`` (see the module); with a
        content match, each vector continues with the item's unit-length pooled text."""
        vectors, biases = super().items(text, index, facts)
        if self.content:
            vectors = torch.cat([vectors, nn.functional.normalize(text, dim=-1)], -1)
        return vectors, self.item_weight * biases

    def scale_users(self, sums: torch.Tensor) -> torch.Tensor:
        """Mean event vectors as user vectors: the towers' part times ``w_m``, the content part
        (if any) times ``w_c``."""
        if not self.content:
            return self.match_weight * sums
        towers, text = sums[..., : self.dim], sums[..., self.dim :]
        return torch.cat([self.match_weight * towers, self.content_weight * text], -1)

    def users(self, index):
        """No user table: a user is their labelled history (:meth:`history_users`)."""
        raise TypeError("a preference head scores histories, not user ids")

    def history_users(
        self,
        items: tuple[torch.Tensor, torch.Tensor],
        history: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Towers: user vectors and biases of labelled histories ``(users, k)`` (rows of
        ``items``, vectors and biases; ``mask``: which positions hold an event), so that a
        record's logit is ``bias + b_t + <u, q_t>``."""
        sums = self.history_sums(items[0], history, labels)
        user = self.scale_users(masked_mean(sums, mask, 1))
        labels = labels.float()
        share = share_logit(labels, mask=mask)
        return user, self.history_bias(items[1][history], labels, share, mask=mask)

    def history_bias(
        self,
        biases: torch.Tensor,
        labels: torch.Tensor,
        share: torch.Tensor,
        dim: int = -1,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``offset + a * s + b_u`` of histories: their items' biases and 0/1 labels (means
        over ``dim``, of the events where ``mask`` is true) and ``share``, the logit of their
        like share."""
        biases = biases.detach()  # the items' like rates are covariates here, learned elsewhere
        lenient = masked_mean(labels - torch.sigmoid(biases), mask, dim)
        return (
            self.offset
            + self.share_weight * share
            + self.leniency_weight * lenient
            + self.quality_weight * masked_mean(biases, mask, dim)
        )

    @torch.no_grad()
    def users_of_histories(
        self,
        items: tuple[torch.Tensor, torch.Tensor],
        histories: Sequence[tuple[Sequence[int], Sequence[int]]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`history_users` of histories of any length, ``(item rows, labels)`` each, the
        last ``self.history`` of each kept (an empty one: no vector, a like share of one half)."""
        vectors = items[0]
        out_vectors, out_biases = [], []
        for rows, labels in histories:
            rows, labels = list(rows)[-self.history :], list(labels)[-self.history :]
            if not rows:
                out_vectors.append(vectors.new_zeros(1, vectors.shape[1]))
                out_biases.append(self.offset.detach().reshape(1))
                continue
            device = vectors.device
            user = self.history_users(
                items,
                torch.as_tensor([rows], device=device),
                torch.as_tensor([labels], device=device),
            )
            out_vectors.append(user[0])
            out_biases.append(user[1])
        if not out_vectors:
            return vectors.new_zeros(0, vectors.shape[1]), vectors.new_zeros(0)
        return torch.cat(out_vectors), torch.cat(out_biases)

    def score(self, user, item):
        """Like probabilities of aligned (user, item) pairs of vectors and biases."""
        return torch.sigmoid(user[1] + item[1] + (user[0] * item[0]).sum(-1))

    def score_all(self, user, items):
        return torch.sigmoid(user[1][:, None] + items[1][None, :] + user[0] @ items[0].T)

    def history_sums(
        self, vectors: torch.Tensor, history: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """``(records, k, dim)``: each history event's item vector plus its label's vector (with
        a content match, then its unit text, signed: + when liked, - when not)."""
        if not self.content:
            return vectors[history] + self.label(labels.long())
        events = vectors[history]
        sign = (2 * labels.to(events.dtype) - 1).unsqueeze(-1)
        towers = events[..., : self.dim] + self.label(labels.long())
        return torch.cat([towers, events[..., self.dim :] * sign], -1)

    def record_logits(
        self,
        items: tuple[torch.Tensor, torch.Tensor],
        targets: torch.Tensor,
        history: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Towers: the like logit of each record; ``targets``/``history`` are rows of ``items``
        (vectors, biases), ``labels`` the history's 0/1 labels ``(records, k)``, ``mask`` which
        history positions hold an event (None: all)."""
        user, bias = self.history_users(items, history, labels, mask)
        return bias + items[1][targets] + (user * items[0][targets]).sum(-1)

    def history_event_logits(
        self,
        items: tuple[torch.Tensor, torch.Tensor],
        history: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Towers: ``(records, k)`` logits of each history event from the record's other events
        (with ``mask``, only the events it marks; the others' logits are meaningless)."""
        k, labels = labels.size(1), labels.float()
        events = self.history_sums(items[0], history, labels)
        rest = ~torch.eye(k, dtype=torch.bool, device=labels.device)
        biases = items[1][history]
        if mask is None:
            others = self.scale_users((events.sum(1, keepdim=True) - events) / (k - 1))
            likes = labels.sum(1, keepdim=True) - labels
            share = torch.log((likes + 1) / (k - 1 - likes + 1))
            rest_mask = None
        else:
            on = mask.float()
            n = (on.sum(1, keepdim=True) - on).clamp(min=1)  # the other events of each event
            total = (events * on[..., None]).sum(1, keepdim=True)
            others = self.scale_users((total - events * on[..., None]) / n[..., None])
            likes = (labels * on).sum(1, keepdim=True) - labels * on
            share = torch.log((likes + 1) / (n - likes + 1))
            rest_mask = mask[:, None, :].expand(-1, k, -1)[:, rest].view(-1, k, k - 1)
        # the record's other events, (records, k, k - 1): event j against all but itself
        bias = self.history_bias(
            biases[:, None, :].expand(-1, k, -1)[:, rest].view(-1, k, k - 1),
            labels[:, None, :].expand(-1, k, -1)[:, rest].view(-1, k, k - 1),
            share,
            mask=rest_mask,
        )
        return bias + biases + (others * items[0][history]).sum(-1)

    def cross_logits(self, text: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        """Cross: the like logit of each record from its pooled record text and the logit of its
        history's like share (:func:`share_logit`)."""
        return (
            self.offset
            + self.share_weight * share
            + self.item_text_bias(self.dropout(text)).squeeze(-1)
        )

    def step(
        self,
        text: torch.Tensor,
        item_index: torch.Tensor | None,
        source: torch.Tensor,
        history: torch.Tensor,
        labels: torch.Tensor,
        target_labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
    ) -> PreferenceOutput:
        """A step's logits and labels: the records' targets first, then (towers with
        ``history_targets``, while training) every history event.

        Towers: ``text`` encodes each distinct item text of the step once, ``item_index`` its
        item row (for ID embeddings), ``targets`` and ``history`` point into it. Cross: ``text``
        encodes one record text per record. ``source``: the step's L_S.
        ``history_mask``: which history positions hold an event (None: all; shorter histories
        are padded).
        """
        target_labels = target_labels.float()
        if self.reader == "cross":
            logits = self.cross_logits(text, share_logit(labels.float(), mask=history_mask))
            penalty = self.item_text_bias.weight.square().sum().expand(len(logits))
            return PreferenceOutput(logits, target_labels, len(logits), penalty.mean(), source)
        items = self.items(text, item_index)
        logits = self.record_logits(items, targets, history, labels, history_mask)
        all_labels = target_labels
        events = history.ravel() if history_mask is None else history[history_mask]
        if self.history_targets and self.training:
            event_logits = self.history_event_logits(items, history, labels, history_mask)
            event_labels = labels.float()
            if history_mask is None:
                event_logits, event_labels = event_logits.ravel(), event_labels.ravel()
            else:
                event_logits, event_labels = event_logits[history_mask], event_labels[history_mask]
            logits = torch.cat([logits, event_logits])
            all_labels = torch.cat([target_labels, event_labels])
        used = torch.cat([targets, events])
        vectors = items[0][used][:, : self.dim]  # the content part is the fixed unit text
        penalty = vectors.square().sum(-1).mean() + items[1][used].square().mean()
        return PreferenceOutput(logits, all_labels, len(targets), penalty, source)

    @torch.no_grad()
    def score_records(
        self,
        items: tuple[torch.Tensor, torch.Tensor],
        targets: torch.Tensor,
        history: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int = 4096,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Towers, evaluation: like probabilities of records whose items are rows of ``items``
        (the whole catalogue's vectors and biases); ``mask`` as in :meth:`record_logits`."""
        out = [
            torch.sigmoid(
                self.record_logits(
                    items,
                    targets[i : i + batch_size],
                    history[i : i + batch_size],
                    labels[i : i + batch_size],
                    None if mask is None else mask[i : i + batch_size],
                )
            )
            for i in range(0, len(targets), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0)
