"""Source-domain terms L_S of the objective ``L = L_T + lambda * L_S``.

Each keeps the adapted backbone close to what it learned from general text, so the little
interaction data there is cannot pull it far away from it:

- ``l2sp``: squared distance of the adapted weights from the pretrained ones (L2-SP). For LoRA
  the distance is that of the effective weight change ``scale * B @ A`` of every adapted matrix;
  any other trained weight counts as ``||w - w_0||^2`` from its value when training started.
- ``lm``: the backbone's own pretraining loss on the item texts of the step: masked LM for
  encoders (15% of tokens, BERT's 80/10/10 corruption), causal LM for decoders. The output layer
  is the input embedding matrix (tied, as in BERT and GPT-2); an encoder's MLM transform is
  new (sentence encoders such as all-MiniLM-L6-v2 ship without their MLM head): it is fitted to
  the unadapted backbone first, then trains along. Costs one more LM pass per step.
- ``distill``: relative squared distance of the step's pooled item encodings from those of the
  frozen pretrained backbone, computed once before training.

``build_source_objective`` returns an ``nn.Module`` that :class:`peftrec.models.network.RecModel`
calls in
``forward`` while training; its output is the (unweighted) L_S of the step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from peftrec.models.backbones import is_encoder
from peftrec.models.tokens import pad_batch

logger = logging.getLogger(__name__)


class L2SP(nn.Module):
    """Squared distance of the trained backbone weights from their starting values: the
    pretrained ones, or with ``from_current`` (a warm start) the parent's, LoRA deltas included.

    The starting values are plain attributes, not buffers, so DDP does not broadcast a copy of
    every trained weight at each step; they follow the weights to their device on first use.
    """

    def __init__(self, backbone: nn.Module, from_current: bool = False):
        super().__init__()
        self.lora_layers = [m for m in backbone.modules() if _is_lora(m)]
        in_lora = {
            id(p)
            for layer in self.lora_layers
            for name in _LORA_PARTS
            for p in getattr(layer, name).parameters()
        }
        self.others = [p for p in backbone.parameters() if p.requires_grad and id(p) not in in_lora]
        self._start = [
            p.detach().clone() for p in self.others
        ]  # DoRA magnitudes, prefixes, full weights
        if not self.lora_layers and not self.others:
            raise ValueError(
                "transfer.loss=l2sp: the backbone has no trained weights (adapter.method=frozen?)"
            )
        # a new LoRA starts at delta 0 (the pretrained weight); a warm start at the parent's
        self._deltas = {}
        if from_current:
            with torch.no_grad():
                for k, layer in enumerate(self.lora_layers):
                    for name in layer.active_adapters:
                        if name in layer.lora_A:
                            self._deltas[k, name] = layer.get_delta_weight(name).detach().clone()

    def forward(self, model, input_ids, attention_mask, item_index, pooled) -> torch.Tensor:
        total = pooled.new_zeros(())
        for k, layer in enumerate(self.lora_layers):
            for name in layer.active_adapters:
                if name in layer.lora_A or name in getattr(layer, "lora_embedding_A", {}):
                    delta = layer.get_delta_weight(name).float()
                    start = self._deltas.get((k, name))
                    if start is not None:
                        delta = delta - start.to(delta.device).float()
                    total = total + delta.square().sum()
        for k, p in enumerate(self.others):
            if self._start[k].device != p.device:
                self._start[k] = self._start[k].to(p.device)
            total = total + (p.float() - self._start[k].float()).square().sum()
        return total


class Distillation(nn.Module):
    """Relative squared distance of pooled item encodings from the frozen pretrained ones.

    The targets (items x hidden) stay a plain attribute: a buffer would be broadcast by DDP at
    every step. Rows are moved to the encodings' device as they are used.
    """

    def __init__(self, targets: torch.Tensor):
        super().__init__()
        self._targets = [targets.float()]

    @property
    def targets(self) -> torch.Tensor:
        return self._targets[0]

    def forward(self, model, input_ids, attention_mask, item_index, pooled) -> torch.Tensor:
        target = self.targets[item_index.to(self.targets.device)].to(pooled.device)
        return ((pooled - target).square().sum(-1) / target.square().sum(-1).clamp(min=1e-8)).mean()


class LanguageModelling(nn.Module):
    """Masked LM (encoders) or causal LM (decoders) on the step's item texts, tied output layer."""

    def __init__(
        self,
        backbone: nn.Module,
        config,
        *,
        mask_token_id: int | None,
        special_ids: Sequence[int],
        mask_prob: float = 0.15,
    ):
        super().__init__()
        self.masked = is_encoder(config)
        hidden = config.hidden_size
        self._embeddings = [
            _base(backbone).get_input_embeddings()
        ]  # the backbone's own, not registered twice
        if self.masked:
            if mask_token_id is None:
                raise ValueError("transfer.loss=lm: this encoder's tokenizer has no mask token")
            self.transform = nn.Sequential(
                nn.Linear(hidden, hidden),
                nn.GELU(),
                nn.LayerNorm(hidden, eps=getattr(config, "layer_norm_eps", 1e-12)),
            )
        elif not getattr(config, "tie_word_embeddings", True):
            raise ValueError(
                "transfer.loss=lm on a decoder needs tied input/output embeddings (as GPT-2); "
                "use l2sp or distill for this backbone"
            )
        self.bias = nn.Parameter(torch.zeros(self._embeddings[0].num_embeddings))
        self.mask_token_id, self.mask_prob = mask_token_id, mask_prob
        self.register_buffer(
            "special", torch.as_tensor(sorted(set(special_ids)), dtype=torch.long), persistent=False
        )

    def forward(self, model, input_ids, attention_mask, item_index, pooled) -> torch.Tensor:
        hidden, targets = self.states_and_targets(model, input_ids, attention_mask)
        if targets.numel() == 0:  # e.g. one-token texts leave nothing to predict: a zero that still
            # reaches the head's parameters, so DDP finds every gradient it waits for
            return sum(p.sum() for p in self.parameters()) * 0.0
        return self.loss(hidden, targets)

    def states_and_targets(
        self, model, input_ids, attention_mask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's states at the predicted positions (masked or next token) and
        their targets."""
        real = attention_mask.bool() & ~torch.isin(input_ids, self.special)
        if self.masked:
            chosen = (torch.rand(input_ids.shape, device=input_ids.device) < self.mask_prob) & real
            if not chosen.any():  # tiny batches: always predict at least one token
                chosen = real & (torch.cumsum(real, 1) == 1)
            roll = torch.rand(input_ids.shape, device=input_ids.device)
            corrupted = input_ids.clone()
            corrupted[chosen & (roll < 0.8)] = self.mask_token_id
            swap = chosen & (roll >= 0.8) & (roll < 0.9)
            corrupted[swap] = torch.randint(
                self._embeddings[0].num_embeddings, (int(swap.sum()),), device=input_ids.device
            )
            hidden = model.backbone(
                input_ids=corrupted, attention_mask=attention_mask
            ).last_hidden_state
            return hidden[:, hidden.size(1) - input_ids.size(1) :][chosen].float(), input_ids[
                chosen
            ]
        # next token: state t predicts token t+1, among the text's real tokens
        hidden = model.backbone(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        hidden = hidden[:, hidden.size(1) - input_ids.size(1) :]
        follows = attention_mask[:, 1:].bool()
        return hidden[:, :-1][follows].float(), input_ids[:, 1:][follows]

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.masked:
            hidden = self.transform(hidden)
        return F.cross_entropy(hidden @ self._embeddings[0].weight.float().T + self.bias, targets)

    def fit_head(
        self,
        model,
        token_lists: Sequence[Sequence[int]],
        pad_id: int,
        *,
        epochs: int = 2,
        batch_size: int = 128,
        lr: float = 1e-3,
    ) -> list[float]:
        """Fit a fresh MLM head on the unadapted backbone's states before training starts, so L_S
        measures what the backbone already knows rather than a random head's error. Returns the
        mean loss per epoch."""
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        device = self.bias.device
        was_training = model.training
        model.eval()
        history = []
        for _ in range(epochs):
            losses = []
            for start in range(0, len(token_lists), batch_size):
                input_ids, attention_mask = pad_batch(
                    token_lists[start : start + batch_size], pad_id
                )
                with torch.no_grad(), model.adapters_disabled():
                    hidden, targets = self.states_and_targets(
                        model, input_ids.to(device), attention_mask.to(device)
                    )
                if targets.numel() == 0:
                    continue
                loss = self.loss(hidden, targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            history.append(sum(losses) / max(len(losses), 1))
        model.train(was_training)
        return history


def build_source_objective(
    transfer_cfg, model, token_lists: Sequence[Sequence[int]], tokenizer, batch_size: int = 256
) -> nn.Module | None:
    """The L_S module for ``transfer.loss``; call before training starts. None for ``none`` or a
    zero weight, so the lambda = 0 ablation runs exactly the plain objective (no extra pass).
    After a warm start (``train.init_from``) l2sp and distill hold the model near its parent
    instead of the pretrained backbone, which limits forgetting."""
    if transfer_cfg.loss == "none" or transfer_cfg.weight == 0:
        return None
    if not any(p.requires_grad for p in model.backbone.parameters()):
        raise ValueError(
            f"transfer.loss={transfer_cfg.loss}: the backbone does not train "
            "(adapter.method=frozen); L_S only acts on an adapted backbone"
        )
    warm = getattr(model, "warm_start", None) is not None  # L_S toward the parent model
    if transfer_cfg.loss == "l2sp":
        return L2SP(model.backbone, from_current=warm)
    if transfer_cfg.loss == "distill":
        targets = (
            model.encode_texts(token_lists, batch_size)
            if warm
            else pretrained_encodings(model, token_lists, batch_size)
        )
        return Distillation(targets)
    if transfer_cfg.loss == "lm":
        objective = LanguageModelling(
            model.backbone,
            _base(model.backbone).config,
            mask_token_id=tokenizer.mask_token_id,
            special_ids=tokenizer.all_special_ids,
            mask_prob=transfer_cfg.mask_prob,
        )
        if objective.masked:  # its MLM transform is new: fit it to the pretrained states first
            history = objective.fit_head(model, token_lists, tokenizer.pad_token_id)
            logger.info(
                "MLM head fitted to the pretrained backbone: loss %s",
                " -> ".join(f"{x:.3f}" for x in history),
            )
        return objective
    raise ValueError(f"unknown transfer.loss {transfer_cfg.loss!r}: use none, l2sp, lm or distill")


@torch.no_grad()
def pretrained_encodings(
    model, token_lists: Sequence[Sequence[int]], batch_size: int = 256
) -> torch.Tensor:
    """Pooled encodings of the texts by the backbone before any adaptation (PEFT adapters off)."""
    with model.adapters_disabled():
        return model.encode_texts(token_lists, batch_size)


_LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


def _base(backbone: nn.Module) -> nn.Module:
    return backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone
