"""Shared fixtures. Nothing here touches the network: models and tokenizers are built locally."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """The tiny model's tokenizer, trained on the shipped pretrain text (a few seconds)."""
    from transformers import AutoTokenizer

    from tunesmith.base_model import train_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    train_tokenizer([str(REPO / "data" / "raw" / "pretrain.txt")], vocab_size=600, out_dir=folder)
    return AutoTokenizer.from_pretrained(folder)
