"""Tiny BERT and GPT-2 checkpoints and a toy dataset with a real signal, all built offline.

The checkpoints are real model folders (config, safetensors weights, tokenizer files), so tests
load them through the same ``from_pretrained`` path as the production backbones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.tiny import (  # shared with the benchmarks
    write_tiny_bert,
    write_tiny_decoder,
    write_tiny_gpt2,
    write_toy_data,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return write_tiny_decoder(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_backbones(tiny_bert, tiny_gpt2, tiny_llama, tiny_qwen2) -> dict[str, Path]:
    return {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama, "qwen2": tiny_qwen2}


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory) -> dict[str, Path]:
    return write_toy_data(tmp_path_factory.mktemp("toy"))
