"""Pooled encodings of a frozen backbone kept on disk, per text, keyed by the backbone's weights
and pooling: a catalogue too big to encode every run (Book-Crossing's 91,617 benchmark books) is
encoded once, and each later run encodes only texts it has not seen.

Files: ``<cache root>/encodings/<model key>.safetensors`` with ``keys`` (one 16-byte hash of each
tokenized text) and ``vectors``; written atomically, so an interrupted run leaves the old file
(two runs adding at once: the last to finish keeps its additions, the other's are encoded again
next time; nothing is corrupted).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from peftrec.data.cache import cache_root


def model_key(backbone: torch.nn.Module, pooling: str) -> str:
    """A hash of every parameter and buffer of ``backbone`` (names, shapes, float64 sums and
    absolute sums) and the pooling: any adapter or weight change gives another key."""
    digest = hashlib.blake2b(pooling.encode(), digest_size=16)
    for name, tensor in sorted(backbone.state_dict().items()):
        values = tensor.detach().double()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(np.array([values.sum().item(), values.abs().sum().item()]).tobytes())
    return digest.hexdigest()


def text_keys(token_lists: Sequence[Sequence[int]]) -> np.ndarray:
    """``(n, 16)`` uint8: a hash of each tokenized text."""
    return (
        np.stack(
            [
                np.frombuffer(
                    hashlib.blake2b(
                        np.asarray(t, dtype=np.int64).tobytes(), digest_size=16
                    ).digest(),
                    dtype=np.uint8,
                )
                for t in token_lists
            ]
        )
        if len(token_lists)
        else np.zeros((0, 16), dtype=np.uint8)
    )


def cached_encodings(
    key: str,
    token_lists: Sequence[Sequence[int]],
    encode: Callable[[list[int]], torch.Tensor],
    folder: Path | None = None,
) -> torch.Tensor:
    """The encodings of ``token_lists``: those on disk under ``key`` looked up, the rest computed
    by ``encode(rows)`` (a ``(len(rows), dim)`` tensor) and added to the file."""
    path = (folder or cache_root() / "encodings") / f"{key}.safetensors"
    keys = text_keys(token_lists)
    stored_keys, stored = np.zeros((0, 16), dtype=np.uint8), None
    if path.is_file():
        saved = load_file(path)
        stored_keys, stored = saved["keys"].numpy(), saved["vectors"]
    where = {row.tobytes(): k for k, row in enumerate(stored_keys)}
    found = [where.get(row.tobytes(), -1) for row in keys]
    missing = [i for i, k in enumerate(found) if k < 0]
    fresh = encode(missing) if missing else None
    dim = fresh.shape[1] if fresh is not None else stored.shape[1]
    out = torch.zeros(len(token_lists), dim)
    hits = [i for i, k in enumerate(found) if k >= 0]
    if hits:
        out[hits] = stored[[found[i] for i in hits]]
    if missing:
        out[missing] = fresh
        new_keys, first = np.unique(keys[missing], axis=0, return_index=True)
        rows = [missing[i] for i in first]
        all_keys = np.concatenate([stored_keys, new_keys])
        vectors = out[rows] if stored is None else torch.cat([stored, out[rows]])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        os.close(fd)
        try:
            save_file({"keys": torch.from_numpy(all_keys), "vectors": vectors.contiguous()}, tmp)
            Path(tmp).chmod(0o644)  # mkstemp makes it private
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return out
