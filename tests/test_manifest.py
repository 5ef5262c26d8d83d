"""Manifests: content hashes and the record each job leaves; lineage is tested on a real run in
test_workflow.py."""

import json
from types import SimpleNamespace

import pytest

from tunesmith.manifest import LineageError, content_hash, lineage, manifest_path, recorded


class Job(SimpleNamespace):
    """The parts of Snakemake's `snakemake` object a script hands to `recorded`."""


class Params(dict):
    pass


def test_content_hash_of_a_folder_sees_names_and_bytes(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"1")
    (folder / "b.bin").write_bytes(b"2")
    first = content_hash(folder)
    assert content_hash(folder) == first
    (folder / "b.bin").write_bytes(b"3")
    assert content_hash(folder) != first
    (folder / "b.bin").write_bytes(b"2")
    (folder / "b.bin").rename(folder / "c.bin")
    assert content_hash(folder) != first


def test_manifest_sits_beside_its_output():
    assert str(manifest_path("results/sft/adapter/")) == "results/sft/adapter.manifest.json"
    assert str(manifest_path("submission.jsonl")) == "submission.jsonl.manifest.json"


def test_recorded_writes_the_manifest_only_when_the_job_succeeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text("{}\n")
    job = Job(input=["in.jsonl"], output=["out.jsonl"],
              params=Params(model={"seed": 3, "template": {"kind": "plain", "prompt": "{input}"}}))
    with pytest.raises(RuntimeError):
        with recorded(job, "demo"):
            raise RuntimeError("job failed")
    assert not manifest_path("out.jsonl").exists()
    with recorded(job, "demo"):
        (tmp_path / "out.jsonl").write_text("[]\n")
    manifest = json.loads(manifest_path("out.jsonl").read_text())
    assert manifest["inputs"] == {"in.jsonl": content_hash("in.jsonl")}
    assert manifest["outputs"] == {"out.jsonl": content_hash("out.jsonl")}
    assert manifest["seed"] == 3 and len(manifest["template_hash"]) == 16
    assert manifest["versions"]["torch"].startswith("2.13.0")
    assert lineage("out.jsonl", root=tmp_path)[2].startswith("  in.jsonl  [source, sha256")
    with pytest.raises(LineageError):
        lineage("in.jsonl", root=tmp_path)
