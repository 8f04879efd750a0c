"""Cache the frozen lower layers of a ``top_layers`` backbone: one pass per item text, once.

With ``adapter.method=top_layers`` only the last k transformer blocks (and what follows them,
such as GPT-2's ``ln_f``) train; the embeddings and the blocks below never change, so their
output for a given text is a constant. :class:`LowerLayerCache` computes the hidden states that
enter the first trained block once per text and keeps them; a training step then runs only the
trained blocks on them, with the library's own attention-mask helper.

- Exact: in eval mode the result equals the full forward (bit for bit when the batch is padded
  the same way; ~1e-6 across batch compositions, as for any re-batching). In train mode the
  frozen blocks' dropout is not applied (their output is computed once, in eval mode); the
  trained blocks' dropout is.
- Memory-bounded: one row per real token, no padding: ``tokens x hidden`` in the backbone's
  dtype. ml-100k with MiniLM (fp32): 1,682 texts, 26,531 tokens x 384 x 4 bytes = 39 MiB.
  A cache larger than ``max_mib`` is refused before anything is computed.
- Invalidated when texts change: it is keyed by a hash of the token lists (:meth:`matches`),
  every lookup checks the batch's token ids against the cached ones, and a lookup after a frozen
  weight changed raises instead of returning stale states. (A write to a frozen weight is seen
  through its version counter; reloading the same values, as resuming a checkpoint does, is then
  told apart by a checksum and keeps the cache.)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import torch
from peft import PeftModel
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from peftrec.models.adapters import transformer_blocks
from peftrec.models.backbones import is_encoder
from peftrec.models.tokens import length_sorted_batches, pad_batch

logger = logging.getLogger(__name__)

# Architectures whose blocks run as ``block(hidden, attention_mask=mask)`` on their own, and the
# module the model applies after its block stack (None: nothing peftrec uses; BERT's pooler is not).
TAILS: dict[str, str | None] = {
    "bert": None,
    "roberta": None,
    "xlm-roberta": None,
    "electra": None,
    "gpt2": "ln_f",
    "llama": "norm",
    "mistral": "norm",
    "qwen2": "norm",
    "qwen3": "norm",
}
# Decoders with rotary position embeddings: the module that computes them (passed to every block).
ROTARY: dict[str, str] = {
    "llama": "rotary_emb",
    "mistral": "rotary_emb",
    "qwen2": "rotary_emb",
    "qwen3": "rotary_emb",
}


def token_key(token_lists: Sequence[Sequence[int]]) -> str:
    """A hash of tokenized texts (lengths and ids), to tell whether a cache holds them."""
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    flat = np.fromiter(
        (t for tokens in token_lists for t in tokens), dtype=np.int64, count=int(lengths.sum())
    )
    return hashlib.blake2b(lengths.tobytes() + flat.tobytes(), digest_size=16).hexdigest()


class _Captured(Exception):
    """Ends a forward pass once the first trained block's input has been captured."""


class LowerLayerCache:
    """Hidden states entering the first trained block, for every text of ``token_lists``.

    The states stay on the device the backbone had when the cache was built (build it after
    ``accelerator.prepare`` to keep them on the GPU); :meth:`top` gives the last hidden states of
    any batch of those texts by running only the trained blocks.
    """

    def __init__(
        self,
        backbone: nn.Module,
        token_lists: Sequence[Sequence[int]],
        pad_id: int,
        *,
        batch_size: int = 256,
        max_mib: float = 1024.0,
    ):
        if isinstance(backbone, PeftModel):  # prefix/prompt tuning live outside the blocks' inputs
            raise ValueError(
                "lower-layer cache: the backbone is wrapped by PEFT; the cache is for "
                "adapter.method=top_layers"
            )
        config = backbone.config
        if config.model_type not in TAILS:
            raise ValueError(
                f"lower-layer cache: '{config.model_type}' models are not supported "
                f"(supported: {', '.join(TAILS)}); train top_layers without it"
            )
        blocks = transformer_blocks(backbone)
        trained = [
            i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())
        ]
        if not trained:
            raise ValueError(
                "lower-layer cache: no transformer block trains, so there is nothing to run on "
                "cached states; a frozen backbone only needs encode_texts once"
            )
        self.config = config
        self.start, self.depth = trained[0], len(blocks)
        self.blocks = blocks[self.start :]
        self.tail = (
            backbone.get_submodule(TAILS[config.model_type]) if TAILS[config.model_type] else None
        )
        rotary = ROTARY.get(config.model_type)
        self.rotary = backbone.get_submodule(rotary) if rotary else None
        top = {id(p) for p in self.blocks.parameters()}
        top |= {id(p) for p in self.tail.parameters()} if self.tail is not None else set()
        self.frozen = [(n, p) for n, p in backbone.named_parameters() if id(p) not in top]
        moving = [n for n, p in self.frozen if p.requires_grad]
        if moving:
            raise ValueError(
                f"lower-layer cache: the layers below block {self.start} must be frozen, but "
                f"{moving[:3]} train (adapter.method=top_layers freezes them)"
            )
        self.version, self.checksum = self._weights_version(), self._weights_checksum()

        lengths = torch.tensor([len(t) for t in token_lists])
        parameter = next(backbone.parameters())
        mib = int(lengths.sum()) * config.hidden_size * parameter.element_size() / 2**20
        if mib > max_mib:
            raise ValueError(
                f"lower-layer cache: {len(token_lists)} texts ({int(lengths.sum())} tokens x "
                f"{config.hidden_size}) need {mib:.0f} MiB, more than max_mib={max_mib:g}"
            )
        self.key = token_key(token_lists)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        self.tokens = torch.tensor([t for tokens in token_lists for t in tokens], dtype=torch.long)
        self.states = torch.empty(
            int(lengths.sum()), config.hidden_size, dtype=parameter.dtype, device=parameter.device
        )
        self._fill(backbone, token_lists, pad_id, batch_size)
        logger.info(
            "lower-layer cache: states entering block %d of %d for %d texts (%d tokens), %.1f MiB",
            self.start,
            self.depth,
            len(token_lists),
            len(self.tokens),
            self.nbytes / 2**20,
        )

    @property
    def nbytes(self) -> int:
        return self.states.nbytes

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def matches(self, token_lists: Sequence[Sequence[int]]) -> bool:
        """True when the cache holds exactly these tokenized texts and the frozen weights it saw."""
        return self.weights_unchanged() and token_key(token_lists) == self.key

    def weights_unchanged(self) -> bool:
        """Whether the frozen weights are those the cache was built from."""
        if self._weights_version() == self.version:
            return True
        if torch.equal(
            self._weights_checksum(), self.checksum
        ):  # written, but with the same values
            self.version = self._weights_version()
            return True
        return False

    def top(
        self, item_index: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden states ``(batch, width, hidden)`` of right-padded texts ``input_ids``,
        texts number ``item_index`` of the cached token lists, from the trained blocks alone."""
        if not self.weights_unchanged():
            raise RuntimeError(
                "lower-layer cache: a frozen weight changed since the cache was built; "
                "build it again (RecModel.cache_lower_layers)"
            )
        items = item_index.cpu()
        if len(items) and (items.min() < 0 or items.max() >= len(self)):
            raise IndexError(f"lower-layer cache: item index out of range [0, {len(self)})")
        rows, lengths = self._rows(items)
        real = attention_mask.bool()
        if not (
            torch.equal(lengths, real.sum(1).cpu())
            and torch.equal(self.tokens[rows], input_ids[real].cpu())
        ):
            raise ValueError(
                "lower-layer cache: the batch's tokens are not the cached texts of these items "
                "(the texts changed?); build it again (RecModel.cache_lower_layers)"
            )
        hidden = self.states.new_zeros(*input_ids.shape, self.states.size(1))
        hidden[real.to(hidden.device)] = self.states[rows.to(hidden.device)]
        return self.run_top(hidden.to(input_ids.device), attention_mask)

    def run_top(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The trained blocks (and tail) on hidden states, with the model's own mask helper."""
        extra = {}
        if is_encoder(self.config):
            mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden, attention_mask=attention_mask
            )
        else:
            positions = torch.arange(hidden.size(1), device=hidden.device).unsqueeze(0)
            mask = create_causal_mask(
                config=self.config,
                inputs_embeds=hidden,
                attention_mask=attention_mask,
                cache=None,
                position_ids=positions,
            )
            if self.rotary is not None:
                extra = {
                    "position_ids": positions,
                    "position_embeddings": self.rotary(hidden, position_ids=positions),
                }
        for block in self.blocks:
            hidden = block(hidden, attention_mask=mask, **extra)
        return hidden if self.tail is None else self.tail(hidden)

    def _rows(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``states`` holding the tokens of ``items``, concatenated; and each
        item's length."""
        starts, lengths = self.offsets[items], self.offsets[items + 1] - self.offsets[items]
        shift = starts - (
            lengths.cumsum(0) - lengths
        )  # cached start minus start in the concatenation
        return torch.arange(int(lengths.sum())) + torch.repeat_interleave(shift, lengths), lengths

    def _weights_version(self) -> int:
        return sum(p._version for _, p in self.frozen)  # bumped by every in-place write

    @torch.no_grad()
    def _weights_checksum(self) -> torch.Tensor:
        return torch.stack(
            [
                torch.stack([p.double().sum(), p.double().square().sum()]).cpu()
                for _, p in self.frozen
            ]
        )

    @torch.no_grad()
    def _fill(
        self,
        backbone: nn.Module,
        token_lists: Sequence[Sequence[int]],
        pad_id: int,
        batch_size: int,
    ) -> None:
        """Run the frozen layers (eval mode), stopping at the first trained block, and keep
        its input."""
        captured: list[torch.Tensor] = []

        def capture(module: nn.Module, args: tuple) -> None:
            captured.append(args[0])
            raise _Captured

        handle = transformer_blocks(backbone)[self.start].register_forward_pre_hook(capture)
        was_training = backbone.training
        backbone.eval()
        try:
            for batch in length_sorted_batches(token_lists, batch_size):
                input_ids, attention_mask = pad_batch([token_lists[i] for i in batch], pad_id)
                try:
                    backbone(
                        input_ids=input_ids.to(self.states.device),
                        attention_mask=attention_mask.to(self.states.device),
                    )
                except _Captured:
                    pass
                rows, _ = self._rows(torch.as_tensor(batch))
                self.states[rows.to(self.states.device)] = captured.pop()[
                    attention_mask.bool().to(self.states.device)
                ]
        finally:
            handle.remove()
            backbone.train(was_training)
