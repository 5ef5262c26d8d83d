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


# The README's first command is what a new user runs; its run is shared by tests/test_workflow.py and
# tests/test_report.py (one full DAG run for both: session scope).
README_COMMAND = ("--cores", "1", "--resources", "gpu=1")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The README's first command on the embedded default recipe, in a fresh working directory: every
    target of `rule all` (submission, scores, lineage, the report's pages)."""
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("default_run")
    (work / "data").symlink_to(REPO / "data")
    # --config and --resources each take several values: the recipe goes before them.
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
               "--config", f"recipe={REPO / 'recipes/default.yaml'}", *README_COMMAND]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-5000:]
    (work / "console.txt").write_text(result.stdout + result.stderr, encoding="utf-8")
    return work
