"""What ``benchmarks/run.py`` records of a finished experiment: the saved model measured (sizes,
parameters, ``score_all`` speed) and the recipe's metrics and config as the record's fields (the
machine and packages the numbers were taken with come from ``benchmarks.common``).

Nothing here trains or runs a recipe; it reads the run's folder (``metrics.json``,
``config.yaml``, ``model/``) after the recipe has written it.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from safetensors import safe_open

if TYPE_CHECKING:
    import torch

INFERENCE_REPEATS = 7


# -- measuring a saved model -------------------------------------------------------------------


def tensor_elements(path: Path) -> int:
    """Elements of every tensor in a safetensors file, read from its header."""
    with safe_open(str(path), "np") as f:
        return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())


def parameter_elements(parameter: torch.nn.Parameter) -> int:
    """Elements of a parameter as trained, also for bitsandbytes 4-bit weights (stored packed)."""
    quant_state = getattr(parameter, "quant_state", None)
    return math.prod(quant_state.shape) if quant_state is not None else parameter.numel()


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_model(folder: Path, device: str, repeats: int = INFERENCE_REPEATS) -> dict[str, Any]:
    """Parameters, adapter size, training-set size and ``score_all`` speed of a saved model.

    ``trainable_in_artifact`` counts the trained tensors as saved (``adapter/`` + the head's
    parameters): the same count for every method, to check the recipe's ``requires_grad`` count.
    """
    # torch, transformers and peft are imported when first needed: a failing suite stops fast
    from peftrec.app.recommender import Recommender

    rec = Recommender.from_pretrained(folder, device=device)
    adapter_files = (
        sorted((folder / "adapter").glob("*.safetensors")) if (folder / "adapter").is_dir() else []
    )
    trainable = sum(tensor_elements(p) for p in adapter_files) + sum(
        p.numel() for p in rec.model.head.parameters()
    )
    with safe_open(str(folder / "seen.safetensors"), "np") as f:
        train_ratings = f.get_slice("users").get_shape()[0]
    tick = time.perf_counter()
    rec.score_all()  # encodes the catalogue once; later calls reuse the cached item encodings
    first = time.perf_counter() - tick
    seconds = []
    for _ in range(repeats):
        tick = time.perf_counter()
        scores = rec.score_all()
        seconds.append(time.perf_counter() - tick)
    median = statistics.median(seconds)
    return {
        "total_parameters": sum(parameter_elements(p) for p in rec.model.parameters()),
        "trainable_in_artifact": trainable,
        "adapter_bytes": sum(
            folder_bytes(folder / name)
            for name in ("adapter", "head.safetensors")
            if (folder / name).exists()
        ),
        "train_ratings": train_ratings,
        "inference": {
            "device": device,
            "users": scores.shape[0],
            "items": scores.shape[1],
            "first_call_seconds": first,
            "median_seconds": median,
            "repeats": repeats,
            "scores_per_second": scores.size / median if median > 0 else None,
        },
    }


# -- the record's fields -----------------------------------------------------------------------


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Validation metrics at the best epoch (from the history) and the test metrics."""
    best = next(h for h in metrics["history"] if h["epoch"] == metrics["best_epoch"])
    valid = {k.removeprefix("valid_"): v for k, v in best.items() if k.startswith("valid_")}
    test = {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")}
    return valid, test


def finished_record(run_dir: Path, label: str | None, load_before: float) -> dict[str, Any]:
    """The fields a successful run adds to its record, in order: what it trained (from its
    ``config.yaml``), the recipe's ``metrics.json`` and the saved model measured here (on the
    GPU when there is one). ``label`` is the experiment's own; ``load_before`` the load average
    when the recipe started."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    import torch

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    measured = measure_model(run_dir / "model", device)
    valid, test = split_metrics(metrics)
    epoch_seconds = metrics.get("median_epoch_seconds")
    trained = [h for h in metrics["history"] if "epoch_seconds" in h]
    total = measured["total_parameters"]
    return {
        "label": label
        or ("ID-only MF" if not config["model"]["item_text"] else config["adapter"]["method"]),
        "method": config["adapter"]["method"],
        "backbone": config["backbone"]["name"],
        "dataset": config["data"]["dataset"],
        "protocol": config["data"]["protocol"],
        "seed": config["train"]["seed"],
        "config": config,
        "parameters": {
            "trainable": metrics["trainable_parameters"],
            "backbone_trainable": metrics["backbone_trainable_parameters"],
            "trainable_in_artifact": measured["trainable_in_artifact"],
            "total": total,
            "trainable_percent": 100 * metrics["trainable_parameters"] / total,
        },
        "adapter_bytes": measured["adapter_bytes"],
        "train": {
            "ratings_per_epoch": measured["train_ratings"],
            "epochs_trained": len(trained),
            "best_epoch": metrics["best_epoch"],
            "median_epoch_seconds": epoch_seconds,
            "ratings_per_second": measured["train_ratings"] / epoch_seconds
            if epoch_seconds
            else None,
            "ratings_trained": sum(metrics["ratings_per_process"])
            if "ratings_per_process" in metrics
            else None,
            "num_processes": metrics.get("num_processes"),
            "recipe_wall_seconds": metrics["wall_seconds"],
        },
        "inference": measured["inference"],
        "peak_memory_mib": metrics["peak_memory_mib"],
        "peak_memory_kind": "cuda_max_allocated" if gpu else "cpu_max_rss",
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "valid": valid,
        "test": test,
        "history": metrics["history"],
    }
