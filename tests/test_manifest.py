"""Manifests: content hashes and the record each job leaves; lineage is tested on a real run in
test_workflow.py."""

import json
import shutil
from types import SimpleNamespace

import pytest

from tunesmith.jobs.atomic import content_hash
from tunesmith.jobs.manifest import current_manifest, index_manifests, manifest_path, recorded
from tunesmith.lineage import LineageError, lineage, task_overview


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
              params=Params(seed=3, template={"kind": "plain", "prompt": "{input}"}))
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


def test_a_job_starting_again_clears_what_a_killed_attempt_left(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    job = Job(input=[], output=["results/adapter", "results/rows.jsonl"], params=Params())
    leftovers = [
        tmp_path / "results/.adapter.a1b2c3d4.partial",  # a folder output's temporary, half written
        tmp_path / "results/.rows.jsonl.x7_k2m9q.partial",
        tmp_path / "results/.adapter.manifest.json.p0q1r2s3.partial",
    ]
    leftovers[0].mkdir()
    (leftovers[0] / "weights.bin").write_bytes(b"half")
    leftovers[1].write_text('{"task_id": 0}\n')
    leftovers[2].write_text("{")
    old_manifest = tmp_path / manifest_path("results/adapter")
    old_manifest.write_text(json.dumps({"outputs": {"results/adapter": "0" * 64}}))
    unrelated = tmp_path / "results/.other.jsonl.x7_k2m9q.partial"  # another job's: maybe still writing
    unrelated.write_text("")
    with pytest.raises(RuntimeError):
        with recorded(job, "demo"):
            raise RuntimeError("this attempt fails too")
    assert not any(path.exists() for path in leftovers)
    assert not old_manifest.exists(), "a failed rerun must not leave the previous build's manifest"
    assert unrelated.exists()


def built(tmp_path, name, inputs, text):
    """A job of the workflow, run through `recorded`: its output and manifest."""
    with recorded(Job(input=inputs, output=[name], params=Params()), name.split(".")[0]):
        (tmp_path / name).write_text(text)


def test_a_manifest_beside_a_deleted_output_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "source.jsonl").write_text("{}\n")
    built(tmp_path, "curated.jsonl", ["source.jsonl"], "[]\n")
    built(tmp_path, "answers.jsonl", ["curated.jsonl"], "[1]\n")
    assert "curated.jsonl  [curated, sha256" in lineage("answers.jsonl", root=tmp_path)[2]
    (tmp_path / "curated.jsonl").unlink()
    assert manifest_path("curated.jsonl").exists()  # what a user's `rm` leaves
    assert "curated.jsonl" not in index_manifests(tmp_path)
    assert lineage("answers.jsonl", root=tmp_path)[2] == "  curated.jsonl  [missing]"
    assert current_manifest("curated.jsonl", tmp_path) is None
    assert current_manifest("answers.jsonl", tmp_path)["stage"] == "answers"
    (tmp_path / "answers.jsonl").unlink()
    with pytest.raises(LineageError, match="answers.jsonl: no such file"):
        lineage("answers.jsonl", root=tmp_path)


def test_explain_does_not_take_a_deleted_build_for_the_one_it_replaces(tmp_path, monkeypatch):
    from tunesmith.explain import previous_build

    monkeypatch.chdir(tmp_path)
    for key, finished in (("aaaaaaaaaaaa", "2026-01-01"), ("bbbbbbbbbbbb", "2026-02-01")):
        folder = tmp_path / "results/sft" / key / "adapter"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(key.encode())
        manifest = {"stage": "sft", "outputs": {f"results/sft/{key}/adapter": content_hash(folder)},
                    "settings": {"sft": {"key": key}}, "finished": finished}
        (tmp_path / manifest_path(f"results/sft/{key}/adapter")).write_text(json.dumps(manifest))
    wanted = "results/sft/cccccccccccc/adapter"
    assert previous_build(wanted, tmp_path)[0] == "results/sft/bbbbbbbbbbbb/adapter"
    shutil.rmtree(tmp_path / "results/sft/bbbbbbbbbbbb/adapter")  # the newer build was deleted by hand
    assert previous_build(wanted, tmp_path)[0] == "results/sft/aaaaaaaaaaaa/adapter"


def a_scored_run(tmp_path, exact=True):
    """A run's files as the workflow leaves them: tasks and references (sources), a stage's answers, the
    submission and results/eval.json, each with its manifest."""
    (tmp_path / "tasks.jsonl").write_text('{"task_id": 0, "input": "1+1は？"}\n{"task_id": 1, "input": "日本の首都は？"}\n')
    (tmp_path / "references.jsonl").write_text('{"task_id": 0, "output": "2"}\n{"task_id": 1, "output": "東京"}\n')
    (tmp_path / "results/generations/abc").mkdir(parents=True)
    answers = '{"task_id": 0, "output": "2"}\n{"task_id": 1, "output": "%s"}\n' % ("東京" if exact else "大阪")
    built(tmp_path, "results/generations/abc/dpo.jsonl", ["tasks.jsonl"], answers)
    built(tmp_path, "submission.jsonl", ["results/generations/abc/dpo.jsonl", "tasks.jsonl"], answers)
    report = {"references": {"path": "references.jsonl"}, "inputs": ["results/generations/abc/dpo.jsonl"],
              "per_task": {"dpo": [{"task_id": 0, "exact": True, "chrf": 100.0},
                                   {"task_id": 1, "exact": exact, "chrf": 100.0 if exact else 0.0}]}}
    built(tmp_path, "results/eval.json", ["results/generations/abc/dpo.jsonl", "tasks.jsonl", "references.jsonl"],
          json.dumps(report, ensure_ascii=False))


def test_lineage_of_a_task_shows_input_reference_answer_and_whether_it_was_correct(tmp_path, monkeypatch, capsys):
    from tunesmith.cli import main

    monkeypatch.chdir(tmp_path)
    a_scored_run(tmp_path, exact=False)
    text = task_overview("submission.jsonl", 1, root=tmp_path)
    assert text == ["task 1 (tasks.jsonl line 2)", '  input:     "日本の首都は？"', '  reference: "東京"',
                        '  answer:    "大阪"  (submission.jsonl)',
                        "  correct:   no (exact match; chrF 0.0)  (results/eval.json, stage dpo)"]
    assert main(["lineage", "submission.jsonl", "--task-id", "0"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[4] == "  correct:   yes (exact match; chrF 100.0)  (results/eval.json, stage dpo)"
    assert shown[5].startswith("submission.jsonl  [submission, sha256")  # then the lineage
    assert main(["lineage", "submission.jsonl", "--task-id", "7"]) == 1
    assert capsys.readouterr().err.strip() == "task 7 is not in tasks.jsonl (2 tasks, ids 0–1)"
    # no evaluation: the reference and the verdict say why they are missing
    (tmp_path / "results/eval.json").unlink()
    assert main(["lineage", "gone.jsonl", "--task-id", "0"]) == 1  # the file is not there (not "no task file")
    assert capsys.readouterr().err.strip() == "gone.jsonl: no such file under ."
    text = task_overview("submission.jsonl", 0, root=tmp_path)
    assert text[2].startswith("  reference: none (the recipe sets no tasks.references, and there is no current")
    assert text[4].startswith("  correct:   not scored (results/eval.json is not built")
