"""fetch_model: snapshots of a local folder, of an offline Hugging Face cache, and of a hub served on
127.0.0.1 (HF_ENDPOINT), with the real huggingface_hub client; and the plan's fetch step."""

import copy
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, snakemake
from hub_server import FakeHub, git_blob_id
from tunesmith.config import plan
from tunesmith.config.recipe import RecipeError, load_recipe, validate_recipe
from tunesmith.hub.fetch import FetchError, fetch_model
from tunesmith.jobs.atomic import content_hash as file_sha256

REPO_ID = "tiny-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="session")
def tiny_model_folder(tiny_tokenizer, tmp_path_factory):
    """A 2-layer Llama with the tiny tokenizer, saved with save_pretrained (safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny_model") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def make_hub_cache(model_folder: Path, cache: Path, repo_id: str = REPO_ID, commit: str = COMMIT) -> Path:
    """The Hugging Face cache layout a download leaves: blobs named by ETag (sha256 for LFS files, the
    git blob id for others), snapshots/<commit>/ of relative links into blobs/, refs/main."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "blobs").mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    for file in sorted(model_folder.rglob("*")):
        if not file.is_file():
            continue
        data = file.read_bytes()
        etag = hashlib.sha256(data).hexdigest() if file.suffix == ".safetensors" else git_blob_id(data)
        (storage / "blobs" / etag).write_bytes(data)
        pointer = storage / "snapshots" / commit / file.relative_to(model_folder)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(storage / "blobs" / etag, pointer.parent))
    return storage


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hub_env(cache: Path, offline: bool, endpoint: str | None = None) -> dict:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1" if offline else "0",
           "HF_ENDPOINT": endpoint or f"http://127.0.0.1:{closed_port()}", "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HOME", None)
    return env


def run_fetch(env: dict, out: Path, path: str = REPO_ID, revision: str | None = None) -> subprocess.CompletedProcess:
    """fetch_model in a fresh process, as the workflow's job runs it (huggingface_hub reads its
    environment once, on import)."""
    code = ("import sys; from tunesmith.hub.fetch import fetch_model; "
            "fetch_model(sys.argv[1], sys.argv[2] or None, sys.argv[3] + '/model', sys.argv[3] + '/snapshot.json')")
    return subprocess.run([sys.executable, "-c", code, path, revision or "", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)


def record_of(out: Path) -> dict:
    return json.loads((out / "snapshot.json").read_text())


def expected_hashes(folder: Path) -> dict:
    return {str(file.relative_to(folder)): {"sha256": file_sha256(file), "size": file.stat().st_size}
            for file in folder.rglob("*") if file.is_file()}


# ---- a local folder ------------------------------------------------------------------------------

def test_a_local_folder_is_linked_in_place_and_hashed(tiny_model_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    record = fetch_model(str(tiny_model_folder), None, str(tmp_path / "model"), str(tmp_path / "snapshot.json"))
    assert record == record_of(tmp_path)
    assert record["source"] == "local" and record["commit"] is None
    assert record["files"] == expected_hashes(tiny_model_folder)
    assert record["placed"]["symlinked"] == len(record["files"])
    assert (tmp_path / "model" / "model.safetensors").resolve() == (tiny_model_folder / "model.safetensors").resolve()
    AutoModelForCausalLM.from_pretrained(tmp_path / "model")


def test_a_revision_for_a_local_folder_is_refused(tiny_model_folder, tmp_path):
    with pytest.raises(FetchError, match=r"base_model.revision: 'v1' is set, but base_model.path .* local folder"):
        fetch_model(str(tiny_model_folder), "v1", str(tmp_path / "model"), str(tmp_path / "snapshot.json"))
    assert not (tmp_path / "model").exists() and not (tmp_path / "snapshot.json").exists()


# ---- the Hugging Face cache, offline -------------------------------------------------------------

def test_an_offline_cache_is_used_with_no_network_and_hard_linked(tiny_model_folder, tmp_path):
    storage = make_hub_cache(tiny_model_folder, tmp_path / "cache")
    result = run_fetch(hub_env(tmp_path / "cache", offline=True), tmp_path / "out")
    assert result.returncode == 0, result.stderr
    record = record_of(tmp_path / "out")
    assert (record["source"], record["repo_id"], record["revision"], record["commit"]) == ("hub", REPO_ID, "main", COMMIT)
    assert record["files"] == expected_hashes(tiny_model_folder)
    weights = tmp_path / "out" / "model" / "model.safetensors"
    assert not weights.is_symlink(), "compute nodes get real files, not links into the login node's cache"
    blob = storage / "blobs" / record["files"]["model.safetensors"]["sha256"]
    assert weights.stat().st_ino == blob.stat().st_ino, "hard-linked: no second copy of the weights"
    assert record["placed"] == {"linked": len(record["files"]), "copied": 0, "symlinked": 0}


def test_an_unreachable_hub_falls_back_to_the_cache(tiny_model_folder, tmp_path):
    make_hub_cache(tiny_model_folder, tmp_path / "cache")
    result = run_fetch(hub_env(tmp_path / "cache", offline=False), tmp_path / "out", revision=COMMIT)
    assert result.returncode == 0, result.stderr
    assert record_of(tmp_path / "out")["commit"] == COMMIT


def test_a_model_missing_from_the_offline_cache_says_where_to_fetch_it(tmp_path):
    (tmp_path / "cache").mkdir()
    result = run_fetch(hub_env(tmp_path / "cache", offline=True), tmp_path / "out")
    assert result.returncode != 0
    assert "base_model.path: 'tiny-org/tiny-llama' at revision main is not (completely) in the Hugging Face cache" \
        in result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stderr and "snakemake fetch_models" in result.stderr
    assert not (tmp_path / "out" / "model").exists()


def test_a_corrupt_cached_blob_is_refused(tiny_model_folder, tmp_path):
    storage = make_hub_cache(tiny_model_folder, tmp_path / "cache")
    blob = (storage / "snapshots" / COMMIT / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = run_fetch(hub_env(tmp_path / "cache", offline=True), tmp_path / "out")
    assert result.returncode != 0
    assert f"model.safetensors: the cached blob {blob} holds sha256" in result.stderr
    assert not (tmp_path / "out" / "model").exists(), "no partial snapshot is left behind"


# ---- the network path, against a hub on 127.0.0.1 ------------------------------------------------

def test_a_download_resolves_the_branch_and_records_the_commit(tiny_model_folder, tmp_path):
    with FakeHub() as hub:
        hub.add_model(REPO_ID, tiny_model_folder, COMMIT)
        result = run_fetch(hub_env(tmp_path / "cache", offline=False, endpoint=hub.url), tmp_path / "out")
        assert result.returncode == 0, result.stderr
        requests = list(hub.requests)
    record = record_of(tmp_path / "out")
    assert (record["revision"], record["commit"]) == ("main", COMMIT)
    assert record["files"] == expected_hashes(tiny_model_folder)
    assert ("GET", f"/api/models/{REPO_ID}/revision/main") in requests
    assert ("GET", f"/{REPO_ID}/resolve/{COMMIT}/model.safetensors") in requests
    # The download filled the cache: fetching again offline needs no hub at all.
    result = run_fetch(hub_env(tmp_path / "cache", offline=True), tmp_path / "again")
    assert result.returncode == 0, result.stderr
    assert record_of(tmp_path / "again")["files"] == record["files"]


def test_a_new_upstream_commit_on_a_pinned_revision_is_not_taken(tiny_model_folder, tmp_path):
    """A pinned commit fetches that commit, whatever main points at now."""
    with FakeHub() as hub:
        repo = hub.add_model(REPO_ID, tiny_model_folder, COMMIT)
        repo.branches["main"] = "f" * 40
        result = run_fetch(hub_env(tmp_path / "cache", offline=False, endpoint=hub.url), tmp_path / "out",
                           revision=COMMIT)
        assert result.returncode == 0, result.stderr
    assert record_of(tmp_path / "out")["commit"] == COMMIT


def test_an_unknown_revision_names_the_recipe_key(tiny_model_folder, tmp_path):
    with FakeHub() as hub:
        hub.add_model(REPO_ID, tiny_model_folder, COMMIT)
        result = run_fetch(hub_env(tmp_path / "cache", offline=False, endpoint=hub.url), tmp_path / "out",
                           revision="v9")
    assert result.returncode != 0
    assert "base_model.revision: 'v9' is not a branch, tag or commit of tiny-org/tiny-llama" in result.stderr


def test_hub_offline_stops_every_hub_request_in_the_process_and_its_children(tmp_path):
    """What model jobs call first: afterwards no hub call leaves the process, even one already imported."""
    with FakeHub() as hub:
        code = ("import huggingface_hub, os, subprocess, sys; from tunesmith.hub.fetch import hub_offline; hub_offline()\n"
                "try:\n    huggingface_hub.HfApi(endpoint=sys.argv[1]).model_info('a/b')\n"
                "except Exception as error:\n    print(type(error).__name__)\n"
                "print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"HF_HUB_OFFLINE\"])'],"
                " capture_output=True, text=True).stdout.strip())")
        env = {**os.environ, "HF_HUB_OFFLINE": "0"}
        result = subprocess.run([sys.executable, "-c", code, hub.url], env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["OfflineModeIsEnabled", "1"]
        assert hub.requests == []


# ---- the plan --------------------------------------------------------------------------------------

@pytest.fixture
def hub_recipe():
    recipe = load_recipe(REPO / "recipes/llm-jp-3-13b-qlora.yaml")
    return recipe


def test_a_hub_model_is_fetched_once_and_every_model_step_consumes_it(hub_recipe):
    steps = plan.steps(hub_recipe)
    fetch = steps["fetch_base"]
    assert fetch.name == "fetch" and fetch.settings == {"path": "llm-jp/llm-jp-3-13b", "revision": None}
    model_steps = [name for name in steps if name in ("sft", "dpo") or name.startswith("generate_")]
    assert "sft" in model_steps and "generate_dpo" in model_steps
    for name in model_steps:
        assert steps[name].upstream["fetch_base"] == fetch.key, name
    assert "fetch_base" not in steps["curate_sft"].upstream


def test_pinning_a_revision_is_a_new_key_downstream_only(hub_recipe):
    before = {name: step.key for name, step in plan.steps(hub_recipe).items()}
    pinned = copy.deepcopy(hub_recipe)
    pinned["base_model"]["revision"] = COMMIT
    after = {name: step.key for name, step in plan.steps(pinned).items()}
    changed = {name for name in before if before[name] != after[name]}
    downstream = {name for name in before
                  if name in ("sft", "dpo", "evaluate", "submit") or name.startswith(("generate_", "judge_", "pair_accuracy_"))}
    assert changed == {"fetch_base"} | downstream and "curate_sft" not in changed


def test_the_tiny_model_is_built_not_fetched():
    steps = plan.steps(load_recipe(REPO / "recipes/default.yaml"))
    assert not any(name.startswith("fetch_") for name in steps)


def test_a_local_folder_keys_on_its_files(tiny_model_folder, tmp_path, hub_recipe):
    folder = tmp_path / "model"
    folder.mkdir()
    for file in tiny_model_folder.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    hub_recipe["base_model"]["path"] = str(folder)
    first = plan.steps(hub_recipe)["fetch_base"]
    assert set(first.files) == {str(folder / file.name) for file in tiny_model_folder.iterdir()}
    (folder / "added.json").write_text("{}")
    assert plan.steps(hub_recipe)["fetch_base"].key != first.key


def test_a_local_judge_model_is_fetched_and_keys_its_grades(hub_recipe):
    judged = copy.deepcopy(hub_recipe)
    judged["judge"].update(backend="transformers")
    judged["judge"]["local"]["path"] = "llm-jp/llm-jp-3-13b"
    steps = plan.steps(judged)
    assert steps["fetch_judge"].key == steps["fetch_base"].key, "a base that also judges is fetched once"
    assert steps["judge_dpo"].upstream["fetch_judge"] == steps["fetch_judge"].key
    judged["judge"]["local"]["revision"] = COMMIT
    pinned = plan.steps(judged)
    assert pinned["fetch_judge"].key != steps["fetch_base"].key
    assert pinned["judge_dpo"].key != steps["judge_dpo"].key and pinned["sft"].key == steps["sft"].key
    judged["judge"]["backend"] = "openai"
    assert "fetch_judge" not in plan.steps(judged)


def test_a_revision_without_a_model_to_fetch_is_refused():
    recipe = load_recipe(REPO / "recipes/default.yaml")
    recipe["base_model"]["revision"] = "main"
    with pytest.raises(RecipeError, match="base_model.revision: set, but base_model.path is null"):
        validate_recipe(recipe)


def test_a_revision_for_a_local_folder_is_refused_before_any_job(hub_recipe, tmp_path):
    hub_recipe["base_model"].update(path=str(tmp_path), revision="main")
    with pytest.raises(RecipeError, match="base_model.revision: 'main' is set, but base_model.path .* local folder"):
        validate_recipe(hub_recipe, check_files=True)


# ---- the workflow ----------------------------------------------------------------------------------

@pytest.mark.e2e
def test_the_workflow_fetches_from_an_offline_cache_and_answers_with_no_hub(tiny_model_folder, tmp_path):
    """The cluster case: fetch on the login node from the cache, then a model job that has neither the
    cache nor a route to the hub loads the snapshot."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(REPO / "data")
    recipe_path = work / "hub.yaml"
    recipe_path.write_text((REPO / "recipes/default.yaml").read_text().replace("  path: null\n",
                                                                                f"  path: {REPO_ID}\n"))
    make_hub_cache(tiny_model_folder, tmp_path / "cache")
    config = ["--config", f"recipe={recipe_path}"]
    fetched = snakemake("--directory", work, "fetch_models", "--cores", "1", *config,
                        env=hub_env(tmp_path / "cache", offline=True), timeout=1200)
    assert fetched.returncode == 0, fetched.stderr[-4000:]
    steps = plan.steps(load_recipe(recipe_path))
    record = json.loads((work / f"results/models/{steps['fetch_base'].key}/snapshot.json").read_text())
    assert record["commit"] == COMMIT

    (tmp_path / "empty_cache").mkdir()
    answers = f"results/generations/{steps['generate_base'].key}/base.jsonl"
    generated = snakemake("--directory", work, answers, "--cores", "1", "--resources", "gpu=1", *config,
                          env=hub_env(tmp_path / "empty_cache", offline=False), timeout=1200)
    assert generated.returncode == 0, generated.stderr[-4000:]
    assert "fetch_model" not in generated.stdout + generated.stderr, "the snapshot was reused, not fetched again"
    rows = [json.loads(line) for line in (work / answers).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 100
    manifest = json.loads((work / f"{answers}.manifest.json").read_text())
    assert f"results/models/{steps['fetch_base'].key}/snapshot.json" in manifest["inputs"]
    assert manifest["settings"]["base_path"] == f"results/models/{steps['fetch_base'].key}/model"


# ---- issue 19: a model path that cannot be fetched is refused at validation -------------------------

def test_a_folder_that_holds_no_model_is_refused_at_validation(hub_recipe, tmp_path):
    from tunesmith.hub.fetch import model_problems

    hub_recipe["base_model"]["path"] = "/etc"
    with pytest.raises(RecipeError, match=r"base_model\.path: the folder '/etc' holds no config\.json: it is not a "
                                          "model folder"):
        validate_recipe(hub_recipe, check_files=True)
    (tmp_path / "config.json").write_text("{}")
    assert model_problems(str(tmp_path), None, "judge.local") == [
        f"judge.local.path: the folder '{tmp_path}' holds no weights (*.safetensors or *.bin)"]
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert model_problems(str(tmp_path), None, "base_model") == []
    hub_recipe["base_model"]["path"] = "llm-jp/llm-jp-3-13b {input}\n"  # a hostile sweep value: no traceback
    with pytest.raises(RecipeError, match=r"base_model\.path: 'llm-jp/llm-jp-3-13b \{input\}\\n' is neither a local "
                                          "folder nor a hub id"):
        validate_recipe(copy.deepcopy(hub_recipe), check_files=True)
    for special in ("/proc/self", "/dev"):
        hub_recipe["base_model"]["path"] = special
        with pytest.raises(RecipeError, match=rf"base_model\.path: '{special}' is under /"):
            validate_recipe(copy.deepcopy(hub_recipe), check_files=True)


def test_a_hub_id_missing_from_the_cache_is_refused_at_validation_while_offline(hub_recipe, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from conftest import fake_hub_cache

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(RecipeError, match=r"base_model\.path: 'llm-jp/llm-jp-3-13b' is neither a local folder nor in "
                                          r"the Hugging Face cache .* at revision main, and HF_HUB_OFFLINE is set"):
        validate_recipe(copy.deepcopy(hub_recipe), check_files=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(fake_hub_cache(tmp_path)))
    validate_recipe(copy.deepcopy(hub_recipe), check_files=True)  # cached: fine offline
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    validate_recipe(copy.deepcopy(hub_recipe), check_files=True)  # online: the fetch job downloads it
