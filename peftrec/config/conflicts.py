"""Settings of the shared sections that are valid one by one but not together: what
:func:`peftrec.config.check_settings` refuses at start-up, naming the keys and what to set
instead. A task's config adds its own checks (``RecipeConfig.conflicts``)."""

from __future__ import annotations

from typing import Any


def reads_records(cfg: Any) -> bool:
    """Whether the recipe trains on records (labelled history, target, label): the settings of
    record runs (``data.train_records``, ``train.epochs=0``, ``train.warm_start=head``) apply."""
    return bool(getattr(cfg, "records", False))


def conflicts(cfg: Any) -> list[str]:
    """Settings of the shared sections that are valid one by one but not together (a task's
    config adds its own: ``RecipeConfig.conflicts``)."""
    problems = []
    adapter, transfer = getattr(cfg, "adapter", None), getattr(cfg, "transfer", None)
    backbone, model = getattr(cfg, "backbone", None), getattr(cfg, "model", None)
    if transfer is not None and adapter is not None:
        if transfer.loss != "none" and adapter.method == "frozen":
            problems.append(
                f"transfer.loss={transfer.loss} needs a backbone that trains, and "
                "adapter.method=frozen trains none; pick another adapter.method or "
                "transfer.loss=none"
            )
        if transfer.loss == "none" and transfer.weight > 0:
            problems.append(
                f"transfer.weight={transfer.weight} but transfer.loss=none: name the L_S to "
                "weigh (l2sp, lm or distill)"
            )
    if backbone is not None and adapter is not None:
        if backbone.init == "random" and adapter.method == "qlora":
            problems.append(
                "backbone.init=random cannot be combined with adapter.method=qlora (a quantized "
                "backbone is loaded from pretrained weights)"
            )
        if backbone.gradient_checkpointing and adapter.method in ("frozen", "top_layers"):
            problems.append(
                f"backbone.gradient_checkpointing=true does nothing with adapter.method="
                f"{adapter.method}: the backbone's activations are computed once, without "
                "gradients"
            )
    train = getattr(cfg, "train", None)
    if train is not None and train.warm_start != "continue":
        if not train.init_from:
            problems.append(
                f"train.warm_start={train.warm_start} says how to continue a parent: name it "
                "with train.init_from"
            )
        elif train.warm_start == "merge" and adapter is not None:
            if adapter.method not in ("lora", "peft"):
                problems.append(
                    f"train.warm_start=merge merges a LoRA-style adapter into the backbone, and "
                    f"adapter.method={adapter.method} has none that merges (lora or peft do)"
                )
        elif train.warm_start == "head" and not reads_records(cfg):
            problems.append(
                "train.warm_start=head trains a preference head's calibration scalars, and this "
                "recipe's head has none: use train.warm_start=towers"
            )
        elif train.warm_start in ("towers", "head") and transfer is not None:
            if transfer.loss != "none":
                problems.append(
                    f"transfer.loss={transfer.loss} acts on the backbone, which "
                    f"train.warm_start={train.warm_start} keeps as the parent left it: use "
                    "transfer.loss=none"
                )
    if model is not None and model.item_id_dropout and not (model.item_ids and model.item_text):
        problems.append(
            f"model.item_id_dropout={model.item_id_dropout} drops item-ID embeddings so that the "
            "text alone learns to score an item: it needs "
            "model.item_ids=true and model.item_text=true"
        )
    if train is not None and train.epochs == 0 and not reads_records(cfg):
        problems.append("train.epochs=0 (test the starting model) is for the preference recipe")
    data = getattr(cfg, "data", None)
    if data is not None and data.train_records is not None and not reads_records(cfg):
        problems.append("data.train_records draws preference records (the preference recipe)")
    if model is not None and adapter is not None and not model.item_text:
        if adapter.method != "frozen":
            problems.append(
                "model.item_text=false (ID-only items) reads no item text, so nothing in the "
                f"backbone would train: use adapter.method=frozen, not {adapter.method}"
            )
    return problems
