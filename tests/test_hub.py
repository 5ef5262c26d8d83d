"""Cards, staged folders, the upload plan and the push, with the real huggingface_hub client against a
hub on 127.0.0.1 (tests/hub_server.py): nothing here touches the network."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, snakemake
from hub_server import FakeHub
from tiny_model import dpo_adapter, dpo_run, sft_adapter, tiny  # noqa: F401  (fixtures)
from tunesmith.hub.hub import HubError, stage_dataset, stage_model, upload_plan
from tunesmith.jobs.atomic import content_hash as file_sha256

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PUBLISH = {"model_repo": "me/tiny-dpo", "dataset_repo": "me/tiny-sft-data", "private": True, "license": "apache-2.0"}


def write_json(path: Path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def scores(tmp_path) -> str:
    return write_json(tmp_path / "eval.json", {"stages": {"base": {"exact_match": 0.0, "chrf": 0.1, "n": 100},
                                                          "dpo": {"exact_match": 0.06, "chrf": 1.5, "n": 100}}})


def hub_record(tmp_path) -> str:
    return write_json(tmp_path / "snapshot.json", {"source": "hub", "repo_id": "tiny-org/tiny-llama",
                                                   "revision": "main", "commit": COMMIT, "files": {}})


def sections(tiny):  # noqa: F811
    from tunesmith.hub.hub import MODEL_SECTIONS

    return {name: tiny.recipe[name] for name in MODEL_SECTIONS}


def keyed_adapter(folder: str, tmp_path: Path, stage: str) -> str:
    """An adapter at the path shape the workflow gives it (results/<stage>/<key>/adapter)."""
    target = tmp_path / "results" / stage / "0123456789ab" / "adapter"
    target.parent.mkdir(parents=True)
    target.symlink_to(folder)
    return str(target)


def data_cards(tiny):  # noqa: F811
    return {"sft": tiny.sft_data.replace(".parquet", ".card.json"),
            "preference": tiny.preference_data.replace(".parquet", ".card.json")}


def test_an_adapter_is_staged_with_its_card_and_a_hub_base(tiny, dpo_adapter, tmp_path):  # noqa: F811
    """The DPO folder holds its whole stack as one standalone adapter (tunesmith.model.adapters): staged at
    the root, it loads onto the hub base exactly as the workflow's own folder does."""
    import torch
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    before = Path(dpo_adapter, "adapter_config.json").read_text()
    staged = stage_model("adapter", "dpo", [keyed_adapter(dpo_adapter, tmp_path, "dpo")], sections(tiny),
                         data_cards(tiny), scores(tmp_path), hub_record(tmp_path), PUBLISH, str(tmp_path / "staged"))
    folder = tmp_path / "staged"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(staged)
    # Weights are linked, not copied; the config that names the base is a new file, the original untouched.
    assert (folder / "adapter_model.safetensors").stat().st_ino == \
        Path(dpo_adapter, "adapter_model.safetensors").stat().st_ino
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("tiny-org/tiny-llama", COMMIT)
    assert Path(dpo_adapter, "adapter_config.json").read_text() == before

    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "tiny-org/tiny-llama" and card.data.library_name == "peft"
    assert card.data.license == "apache-2.0" and "dpo" in card.data.tags
    text = card.text
    assert f'revision="{COMMIT}"' in text and 'PeftModel.from_pretrained(model, "me/tiny-dpo")' in text
    assert "| dpo | 6.0% | 1.5 | 100 |" in text, "scores"
    sft_card = json.loads(Path(data_cards(tiny)["sft"]).read_text())
    source, counts = next(iter(sft_card["sources"].items()))
    assert f"| sft | {source} | {counts['rows_in']} | {counts['kept']} |" in text, "data card counts"
    assert f"beta: {tiny.recipe['dpo']['beta']}" in text and "### 指示" in text, "recipe sections and template"

    # The card's way of loading works on the staged folder (the local base standing in for the hub's).
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.base_dir), str(folder))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.base_dir), dpo_adapter)
    for (name, weight), (_, expected) in zip(model.merge_and_unload().state_dict().items(),
                                             reference.merge_and_unload().state_dict().items()):
        assert torch.equal(weight, expected), name


def test_a_single_adapter_sits_at_the_repository_root(tiny, sft_adapter, tmp_path):  # noqa: F811
    staged = stage_model("adapter", "sft", [keyed_adapter(sft_adapter.path, tmp_path, "sft")], sections(tiny),
                         {"sft": data_cards(tiny)["sft"]}, None, None, {**PUBLISH, "license": None},
                         str(tmp_path / "staged"))
    assert "adapter_config.json" in staged and "README.md" in staged
    text = (tmp_path / "staged/README.md").read_text()
    assert 'PeftModel.from_pretrained(model, "me/tiny-dpo")' in text
    assert "No reference answers were given" in text and "a local base model" in text
    assert "beta:" not in text and "continued_pretraining:" not in text, "only the sections that made it"
    assert "license" not in text.split("---")[1], "no license unless publish.license names one"


def test_a_dataset_is_staged_with_its_card_and_loads_from_the_stage(tiny, tmp_path):  # noqa: F811
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    from tunesmith.hub.hub import export_curated

    card_path = data_cards(tiny)["sft"]
    export_curated(tiny.sft_data, card_path, "sft", tiny.recipe["sources"], tiny.recipe["curate"],
                   str(tmp_path / "sft.dataset"))
    stage_dataset(str(tmp_path / "sft.dataset"), card_path, "sft", tiny.recipe["sources"], tiny.recipe["curate"],
                  PUBLISH, str(tmp_path / "staged"))
    card = DatasetCard.load(tmp_path / "staged/README.md")
    assert card.data.license == "apache-2.0"
    assert [config["config_name"] for config in card.data.configs] == ["prompt_completion", "messages"]
    totals = json.loads(Path(card_path).read_text())["totals"]
    assert f"{totals['rows_in']} records in, {totals['kept']} kept" in card.text
    loaded = load_dataset(str(tmp_path / "staged"), cache_dir=str(tmp_path / "cache"))
    assert {split: len(rows) for split, rows in loaded.items()} == totals["written"]


def test_the_upload_plan_lists_every_file_and_refuses_an_unnamed_repo(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "README.md").write_text("card")
    (tmp_path / "sub/weights.bin").write_bytes(b"\0" * 10)
    plan = upload_plan(tmp_path, "me/repo", "model", True, "adapter dpo")
    assert plan["files"] == [{"path": "README.md", "size": 4, "sha256": file_sha256(tmp_path / "README.md")},
                             {"path": "sub/weights.bin", "size": 10, "sha256": file_sha256(tmp_path / "sub/weights.bin")}]
    with pytest.raises(HubError, match=r"publish.model_repo is null"):
        upload_plan(tmp_path, None, "model", True, "adapter dpo")
    with pytest.raises(HubError, match=r"publish.dataset_repo is null"):
        upload_plan(tmp_path, None, "dataset", True, "dataset sft")
    (tmp_path / "README.md").unlink()
    with pytest.raises(HubError, match="no README.md"):
        upload_plan(tmp_path, "me/repo", "model", True, "adapter dpo")


def run_push(folder: Path, env: dict, receipt: Path, repo_type: str = "model") -> subprocess.CompletedProcess:
    code = ("import sys; from tunesmith.hub.hub import push; "
            "push(sys.argv[1], 'me/repo', sys.argv[3], True, 'adapter dpo', sys.argv[2])")
    return subprocess.run([sys.executable, "-c", code, str(folder), str(receipt), repo_type], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_push_creates_the_repo_and_uploads_every_staged_file_in_one_commit(tmp_path):
    folder = tmp_path / "staged"
    (folder / "sft").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# card\n")
    (folder / "sft/adapter_model.safetensors").write_bytes(os.urandom(4096))
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test_token",
               "HF_HUB_DISABLE_XET": "1"}
        result = run_push(folder, env, tmp_path / "receipt.json")
        assert result.returncode == 0, result.stderr
    assert [(created["name"], created["visibility"]) for created in hub.created] == [("repo", "private")]
    assert len(hub.commits) == 1
    assert hub.validated and {(request["repoType"], request["content"]) for request in hub.validated} == \
        {("model", (folder / "README.md").read_text())}, "the card's metadata went through the hub's check"
    commit = hub.commits[0]
    assert commit["repo"] == "me/repo" and commit["summary"] == "tunesmith: adapter dpo"
    assert commit["files"] == {str(path.relative_to(folder)): path.read_bytes()
                               for path in folder.rglob("*") if path.is_file()}
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["commit_url"].startswith(f"{hub.url}/me/repo/commit/")
    assert [entry["path"] for entry in receipt["files"]] == ["README.md", "sft/adapter_model.safetensors"]


def test_a_push_refused_by_the_hub_leaves_no_receipt(tmp_path):
    folder = tmp_path / "staged"
    folder.mkdir()
    (folder / "README.md").write_text("card")
    with FakeHub() as hub:
        hub.handle = lambda handler, *args: (handler._json(401, {"error": "Invalid credentials"}), True)[1]
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_wrong"}
        result = run_push(folder, env, tmp_path / "receipt.json")
    assert result.returncode != 0 and "pushing to model me/repo failed" in result.stderr
    assert not (tmp_path / "receipt.json").exists()


def test_a_push_with_the_hub_switched_off_says_so(tmp_path):
    (tmp_path / "README.md").write_text("card")
    result = run_push(tmp_path, {**os.environ, "HF_HUB_OFFLINE": "1"}, tmp_path / "receipt.json")
    assert result.returncode != 0 and "HF_HUB_OFFLINE is set: a push needs the network" in result.stderr


# ---- the workflow's push target --------------------------------------------------------------------

def test_a_push_target_without_a_repository_fails_before_any_job(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("--directory", tmp_path, "results/pushed/dataset/sft.json", "-n",
                       "--config", f"recipe={REPO / 'recipes/default.yaml'}")
    assert result.returncode != 0
    assert "publish.dataset_repo is null: name the hub repository (owner/name) to push to" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.e2e
def test_the_workflow_pushes_the_curated_dataset_with_its_card(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    recipe = tmp_path / "publish.yaml"
    recipe.write_text((REPO / "recipes/default.yaml").read_text()
                      + "\npublish:\n  dataset_repo: me/tiny-sft-data\n  license: cc-by-4.0\n")
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test_token",
               "HF_HUB_DISABLE_XET": "1"}
        result = snakemake("--directory", tmp_path, "results/pushed/dataset/sft.json", "--cores", "1",
                           "--config", f"recipe={recipe}", env=env, timeout=1200)
        assert result.returncode == 0, result.stderr[-4000:]
    assert len(hub.commits) == 1 and hub.commits[0]["repo_type"] == "dataset"
    files = hub.commits[0]["files"]
    assert {"README.md", "prompt_completion/train.parquet", "prompt_completion/validation.parquet",
            "messages/train.parquet", "messages/validation.parquet"} == set(files)
    assert b"license: cc-by-4.0" in files["README.md"]
    staged = tmp_path / "results/publish/dataset/sft"
    assert files == {str(path.relative_to(staged)): path.read_bytes() for path in staged.rglob("*")
                     if path.is_file() and path.name != ".snakemake_timestamp"}
    receipt = json.loads((tmp_path / "results/pushed/dataset/sft.json").read_text())
    assert sorted(entry["path"] for entry in receipt["files"]) == sorted(files), "the plan is what was sent"


def test_a_merged_export_is_staged_as_a_transformers_model(tiny, tmp_path):  # noqa: F811
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    staged = stage_model("export", "sft", [tiny.base_dir], sections(tiny), {"sft": data_cards(tiny)["sft"]},
                         scores(tmp_path), hub_record(tmp_path), PUBLISH, str(tmp_path / "staged"))
    assert "model.safetensors" in staged and "README.md" in staged
    card = ModelCard.load(tmp_path / "staged/README.md")
    assert card.data.library_name == "transformers" and card.data.base_model == "tiny-org/tiny-llama"
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-dpo")' in card.text
    AutoModelForCausalLM.from_pretrained(tmp_path / "staged")
