"""What a model is, written down once: the spec a recipe builds from and ``peftrec.json`` holds.

Training turns its config into a :class:`ModelSpec`
(:func:`peftrec.models.assembly.spec_from_config`), and :func:`peftrec.models.assembly.assemble`
builds the
network from the spec, for training and for loading alike. Saving writes the spec as it is;
nothing is read back out of live objects. This module is the spec alone (plain data, no torch):
what reads a saved folder imports it without the builders.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ArtifactError(ValueError):
    """A saved model folder that cannot be loaded safely: missing, corrupt or mismatched files."""


class SpecError(ArtifactError):
    """A spec that is incomplete or names something peftrec cannot build."""


@dataclass
class AdapterSpec:
    """How the backbone was adapted: the method, and what loading needs besides the
    saved weights."""

    method: str
    """lora, prefix, qlora, peft, top_layers, full or frozen."""
    quant_bits: int | None = None
    """qlora: the backbone is loaded in 4 (nf4) or 8 bits."""
    top_k_layers: int | None = None
    """top_layers: how many of the last blocks were trained."""
    merged: int = 0
    """How many parent adapters were merged into the base weights (``train.warm_start=merge``);
    the base weights they changed are saved with the model (``merged.safetensors``)."""


@dataclass
class ModelSpec:
    """Everything needed to rebuild a trained model, apart from its weights."""

    task: str
    """rating or ranking (see :mod:`peftrec.tasks`)."""
    backbone: str
    """Hub id, local folder or peftrec alias the base weights come from."""
    model_type: str
    """The backbone's architecture (``config.model_type``), checked when loading."""
    dtype: str
    """Weights dtype of the backbone: float32, bfloat16 or float16."""
    pooling: str
    """How token states become one vector: mean, cls or last."""
    max_length: int
    """Tokens per text."""
    init: str
    """pretrained, or random (the base weights are then saved with the model)."""
    adapter: AdapterSpec
    head: dict[str, Any]
    """The exact keyword arguments of the task's head class."""
    gradient_checkpointing: bool = False
    """Recompute the backbone's activations in the backward pass (less memory, more time)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Task-specific settings a loaded model needs (none for rating and ranking)."""
    parent: dict[str, str] | None = None
    """The model this one was warm-started from (``train.init_from``): its folder name, the
    digest of its files (:func:`peftrec.artifact.vectors.folder_digest`) and the ``mode``
    (``train.warm_start``); None when trained from scratch."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["parent"] is None:  # only warm-started models name one
            del out["parent"]
        if not out["adapter"]["merged"]:  # only merged models have merged weights
            del out["adapter"]["merged"]
        return out

    @classmethod
    def from_dict(cls, raw: Any, where: str = "spec") -> ModelSpec:
        """The spec in ``raw`` (as written by :meth:`to_dict`); unknown or missing keys
        are refused."""
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: expected a mapping, got {type(raw).__name__}")
        adapter = _strict(AdapterSpec, raw.get("adapter"), f"{where}.adapter")
        return _strict(cls, {**raw, "adapter": adapter}, where)


def _strict(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(unknown)} (written by a newer peftrec?)"
        )
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in raw]
    if missing:
        raise SpecError(f"{where}: missing key(s) {', '.join(missing)}")
    return cls(**raw)


def spec_from_format1(meta: dict[str, Any]) -> ModelSpec:
    """The spec of a model saved in format 1 (peftrec 0.1 before the spec existed).

    Format 1 did not record the backbone's dtype: those models were trained and are loaded in
    float32, which is what every shipped format-1 config used.
    """
    head = dict(meta["head"])
    head.setdefault("dropout", 0.0)
    head.setdefault("id_dropout", 0.0)
    return ModelSpec(
        task=meta["task"],
        backbone=meta["backbone"],
        model_type=meta["model_type"],
        dtype="float32",
        pooling=meta["pooling"],
        max_length=meta["max_length"],
        init=meta.get("init", "pretrained"),
        adapter=AdapterSpec(method=meta["adapter"], quant_bits=meta.get("quant_bits")),
        head=head,
    )
