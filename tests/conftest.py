"""Tiny BERT and GPT-2 checkpoints and a toy dataset with a real signal, all built offline.

The checkpoints are real model folders (config, safetensors weights, tokenizer files), so tests
load them through the same ``from_pretrained`` path as the production backbones.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
WORDS = ["good", "bad", "movie", "film", "drama", "comedy", "action", "horror", "romance", "the", "a", "of", "and", "genres", "year", "old", "male", "female", "student", "writer", "engineer", "item", *list("0123456789"), ".", ",", ":", "(", ")", "-", "'"]
VOCAB_SIZE = 99


def bert_vocab() -> list[str]:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return words + [f"w{k}" for k in range(VOCAB_SIZE - len(words))]


def write_tiny_bert(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(bert_vocab()) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return folder


def write_tiny_gpt2(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = ["<|endoftext|>", "<unk>", *WORDS]
    words += [f"w{k}" for k in range(VOCAB_SIZE - len(words))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # like GPT-2: bos = eos = <|endoftext|>, and no pad token (peftrec must add one)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<unk>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                        bos_token_id=0, eos_token_id=0)
    GPT2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_backbones(tiny_bert, tiny_gpt2) -> dict[str, Path]:
    return {"bert": tiny_bert, "gpt2": tiny_gpt2}


def write_toy_data(folder: Path, num_users: int = 30, num_items: int = 60, per_user: int = 20,
                   seed: int = 0) -> dict[str, Path]:
    """Ratings that depend on a word of the item text: "good" items score about 4.5, "bad" ones 1.5.

    A model can only predict an item it has not seen by reading its text.
    """
    rng = np.random.default_rng(seed)
    genres = ["drama", "comedy", "action", "horror", "romance"]
    good = rng.random(num_items) < 0.5
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "items.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "title", "genres"])
        for i in range(num_items):
            writer.writerow([f"i{i}", f"{'good' if good[i] else 'bad'} movie {i % 10}", genres[i % 5]])
    with open(folder / "ratings.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "rating", "timestamp"])
        for u in range(num_users):
            for t, i in enumerate(rng.choice(num_items, per_user, replace=False)):
                rating = np.clip(round((4.5 if good[i] else 1.5) + rng.normal(0, 0.5)), 1, 5)
                writer.writerow([f"u{u}", f"i{i}", rating, 1000 * u + t])
    return {"interactions": folder / "ratings.csv", "items": folder / "items.csv"}


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory) -> dict[str, Path]:
    return write_toy_data(tmp_path_factory.mktemp("toy"))
