"""Tokenize item texts once and pad small batches of them on demand."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text (special tokens included, truncated), computed once per text."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return encoded["input_ids"]


def pad_batch(
    token_lists: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for a list of token-id lists."""
    width = max(len(tokens) for tokens in token_lists)
    input_ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        input_ids[row, : len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
        attention_mask[row, : len(tokens)] = 1
    return input_ids, attention_mask


def length_sorted_batches(token_lists: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Index batches of similar length, so that padding wastes little compute."""
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
