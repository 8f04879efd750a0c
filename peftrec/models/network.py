"""The recommender network: a (PEFT-adapted) language model under a task's two-tower head."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from peft import PeftModel
from torch import nn

from peftrec.models.backbones import Pooling, pool
from peftrec.models.layer_cache import LowerLayerCache, token_key
from peftrec.models.spec import ModelSpec
from peftrec.models.tokens import length_sorted_batches, pad_batch
from peftrec.models.towers import RecOutput, TwoTowers  # noqa: F401  (RecOutput: what forward returns)


class RecModel(nn.Module):
    """Backbone (wrapped by PEFT or not) + pooling + the task's head, kept outside the wrapper."""

    def __init__(
        self,
        backbone: nn.Module,
        head: TwoTowers,
        pooling: Pooling,
        pad_id: int,
        spec: ModelSpec | None = None,
    ):
        super().__init__()
        self.spec = spec  # what peftrec.json holds (None only for a bare encoder used in a probe)
        self.backbone = backbone
        self.head = head
        self.pooling = pooling
        self.pad_id = pad_id
        self.layer_cache: LowerLayerCache | None = None
        self.feature_cache: tuple[str, torch.Tensor] | None = None  # (token key, pooled features)
        # a randomly initialised backbone's base weights (saved with the model: no hub copy exists)
        self.random_base: dict[str, torch.Tensor] | None = None
        # base weights that merged parent adapters changed (saved with the model, as random_base)
        self.merged_base: dict[str, torch.Tensor] | None = None
        self.source: nn.Module | None = None  # L_S while training (peftrec.training.transfer)
        self.warm_start = (
            None  # what train.init_from restored (peftrec.training.warm_start.WarmStart)
        )

    def cache_features(
        self,
        token_lists: Sequence[Sequence[int]],
        batch_size: int = 256,
        features: torch.Tensor | None = None,
    ) -> None:
        """For a frozen backbone: encode each text once; ``forward`` (through ``item_index``) and
        ``encode_texts(token_lists)`` then look the pooled features up, so training runs no LM.
        ``features``: the texts' encodings, when known already (a warm start's parent saved
        them)."""
        if any(p.requires_grad for p in self.backbone.parameters()):
            raise ValueError(
                "cache_features: the backbone trains, so cached features would go stale"
            )
        key = token_key(token_lists)
        if self.feature_cache is None or self.feature_cache[0] != key:
            self.feature_cache = None
            if features is None:
                features = self.encode_texts(token_lists, batch_size)
            self.feature_cache = (key, features)

    def cache_lower_layers(
        self, token_lists: Sequence[Sequence[int]], batch_size: int = 256, max_mib: float = 1024.0
    ) -> LowerLayerCache:
        """For ``top_layers``: run the frozen lower layers once per text, and only the trained
        blocks from then on.

        Afterwards ``forward`` (through ``item_index``, each row's position in ``token_lists``)
        and ``encode_texts(token_lists)`` start from the cached hidden states. Calling it again
        with the same tokens keeps the cache; other tokens (or changed frozen weights) rebuild it.
        Build it once the model is on its device. See :mod:`peftrec.models.layer_cache`.
        """
        if self.layer_cache is None or not self.layer_cache.matches(token_lists):
            self.layer_cache = None  # free the old states before computing new ones
            self.layer_cache = LowerLayerCache(
                self.backbone, token_lists, self.pad_id, batch_size=batch_size, max_mib=max_mib
            )
        return self.layer_cache

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        item_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled float32 text encodings ``(batch, hidden)``.

        With a lower-layer cache and ``item_index`` (the rows' texts in the cached token lists),
        only the trained top blocks run, on the cached states.
        """
        if self.feature_cache is not None and item_index is not None:
            return self.feature_cache[1][item_index.cpu()].to(input_ids.device)
        if self.layer_cache is not None and item_index is not None:
            hidden = self.layer_cache.top(item_index, input_ids, attention_mask)
        else:
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            hidden = hidden[
                :, hidden.size(1) - input_ids.size(1) :
            ]  # drop prompt-tuning virtual tokens
        return pool(hidden, attention_mask, self.pooling)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        item_index: torch.Tensor | None = None,
        **inputs,
    ):
        """One training step's outputs, as the head defines them (:meth:`TwoTowers.step`: scores of
        user-item pairs; :meth:`~peftrec.tasks.sequential.head.SequentialHead.step`: next-item
        logits).

        The step's texts (``input_ids``, ``item_index``: their item rows) are encoded here, once,
        and the source-domain term L_S computed on them while training (0 otherwise); the head
        gets the encodings, never the model."""
        text = None
        source = self.head.reference_parameter().new_zeros((), dtype=torch.float32)
        if input_ids is not None and input_ids.size(0):
            text = self.encode(input_ids, attention_mask, item_index)
            if self.source is not None and self.training:
                source = self.source(self, input_ids, attention_mask, item_index, text)
        return self.head.step(text, item_index, source, **inputs)

    def adapters_disabled(self) -> contextlib.AbstractContextManager:
        """A context in which the backbone runs as pretrained: PEFT adapters off (nothing to do
        for a plain backbone)."""
        return (
            self.backbone.disable_adapter()
            if isinstance(self.backbone, PeftModel)
            else contextlib.nullcontext()
        )

    @torch.no_grad()
    def encode_texts(
        self,
        token_lists: Sequence[Sequence[int]],
        batch_size: int = 256,
        rows: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Pooled encodings of many tokenized texts, in length-sorted batches, in input order
        (from the lower-layer cache when it holds exactly these texts). With ``rows``, only those
        texts are encoded (an evaluation that scores a few items); the other rows are zero."""
        if self.feature_cache is not None and self.feature_cache[0] == token_key(token_lists):
            return self.feature_cache[1].clone()
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        cached = self.layer_cache is not None and self.layer_cache.matches(token_lists)
        chosen = list(range(len(token_lists))) if rows is None else [int(r) for r in rows]
        out = torch.zeros(len(token_lists), self.head.text_dim)
        for batch in length_sorted_batches([token_lists[i] for i in chosen], batch_size):
            batch = [chosen[i] for i in batch]
            input_ids, attention_mask = pad_batch([token_lists[i] for i in batch], self.pad_id)
            index = torch.as_tensor(batch, device=device) if cached else None
            out[batch] = self.encode(input_ids.to(device), attention_mask.to(device), index).cpu()
        self.train(was_training)
        return out
