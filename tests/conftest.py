"""Shared fixtures. Nothing here touches the network: models and tokenizers are built locally."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


# The README's test command runs the tests on two pytest-xdist workers (`-n 2 --dist loadgroup`): an
# end-to-end run is one process on one core. Every test that reads one of these built runs (fixtures of
# minutes: the session's two, test_standin.py's) goes to the worker that builds it, so each is built once,
# not once per worker.
SHARED_RUNS = ("default_run", "quick_run", "standin_run")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        for run in SHARED_RUNS:
            if run in item.fixturenames:
                item.add_marker(pytest.mark.xdist_group(run))
                if getattr(config.option, "loadgroup", False):  # an xdist worker under --dist loadgroup
                    _grouped(item, run)
                break  # one group a test


def _grouped(item, group: str) -> None:
    """pytest-xdist 3.8 groups a test by suffixing its node id with `@group`, which it does by setting
    `item._nodeid`; pytest 9.2 keeps the id in `item._id` instead, so the suffix is lost and every worker
    builds every shared run. Set it where pytest 9.2 reads it (its NodeId); elsewhere xdist's way works."""
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # a pytest before 9.2: xdist's own suffix takes effect
        return
    if isinstance(getattr(item, "_id", None), NodeId) and "@" not in item.nodeid:
        item._id = NodeId.parse(f"{item.nodeid}@{group}")


def snakemake(*args, cwd=REPO, env=None, timeout=1800) -> subprocess.CompletedProcess:
    """`python -m snakemake` on the project's Snakefile with `args` (a run in another folder passes
    `--directory`; `--config` takes several values, so it goes after the targets), run from `cwd` with
    `env` (this process's by default); its output captured as text."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """The tiny model's tokenizer, trained on the shipped pretrain text (a few seconds)."""
    from transformers import AutoTokenizer

    from tunesmith.model.base_model import train_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    train_tokenizer([str(REPO / "data" / "raw" / "pretrain.txt")], vocab_size=600, out_dir=folder)
    return AutoTokenizer.from_pretrained(folder)


# The README's first command is what a new user runs; its run is shared by tests/test_workflow.py and
# tests/test_report.py (one full DAG run for both: session scope).
README_COMMAND = ("--cores", "1", "--resources", "gpu=1")


def built(work: Path, recipe: Path) -> str:
    """Every target of `rule all` of `recipe` built in the fresh folder `work` (the shipped data linked in) by
    the README's first command; its console output."""
    (work / "data").symlink_to(REPO / "data")
    result = snakemake("--directory", work, "--config", f"recipe={recipe}", *README_COMMAND, timeout=3600)
    assert result.returncode == 0, result.stderr[-5000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The README's first command on the embedded default recipe, in a fresh working directory: every
    target of `rule all` (submission, scores, lineage, the report's pages)."""
    work = tmp_path_factory.mktemp("default_run")
    (work / "console.txt").write_text(built(work, REPO / "recipes/default.yaml"), encoding="utf-8")
    return work


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """The default recipe with a few steps per stage (tests/quick_recipe.py), built whole from nothing once:
    (its working directory, its recipe file). Tests that build another recipe or seed next to it start from
    a copy (`copied_run`), as a user's second run starts from their first."""
    from quick_recipe import quick_recipe

    root = tmp_path_factory.mktemp("quick_run")
    recipe = Path(quick_recipe(REPO / "recipes/default.yaml", root / "quick.yaml"))
    (root / "work").mkdir()
    built(root / "work", recipe)
    return root / "work", recipe


def copied_run(run: Path, target: Path) -> Path:
    """A copy of a run's working directory (its results, Snakemake's records and file times; `data` stays a link)."""
    import shutil

    return Path(shutil.copytree(run, target, symlinks=True))


SHIPPED_HUB_MODELS = ("llm-jp/llm-jp-3-13b",)  # the hub ids the shipped recipes name


def fake_hub_cache(root: Path, repo_ids=SHIPPED_HUB_MODELS) -> Path:
    """A Hugging Face cache folder in which each hub id's main revision is a snapshot holding only its
    config.json: enough for validation, which (offline, as tests are) refuses a hub id not in the
    cache, to plan a recipe that names one. Nothing can be loaded from it."""
    cache = root / "hf-cache"
    for repo_id in repo_ids:
        folder = cache / f"models--{repo_id.replace('/', '--')}"
        commit = "0" * 40
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
        (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / commit / "config.json").write_text("{}")
    return cache


@pytest.fixture(scope="module")
def cached_hub_models(tmp_path_factory):
    """The shipped recipes' hub models in a fake cache (fake_hub_cache), for this process and its
    children, for a module's tests."""
    from huggingface_hub import constants

    cache = fake_hub_cache(tmp_path_factory.mktemp("hub"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_CACHE", str(cache))
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        yield cache
