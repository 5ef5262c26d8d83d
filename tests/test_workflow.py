"""The Snakemake DAG itself: planning, recipe errors at the command line, and one real end-to-end run."""

import json
import subprocess
import sys

import duckdb
import pytest

from conftest import REPO
from tunesmith.submission import validate_submission
from tunesmith.tasks import read_tasks


def snakemake(*args, cwd=REPO, timeout=1800):
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule name -> job count."""
    lines = output.split("Job stats:")[1].splitlines()[3:]
    jobs = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def test_default_recipe_plans_every_stage(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("-n", "--directory", tmp_path, "--configfile", REPO / "recipes/default.yaml")
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result.stdout) == {
        "all": 1, "curate_data": 2, "evaluate_stages": 1, "generate_answers": 3, "pretrain_base": 1,
        "train_dpo": 1, "train_sft": 1, "train_tokenizer": 1, "write_submission": 1,
    }


def test_competition_recipe_plans_without_building_a_base_model(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("-n", "--directory", tmp_path, "--configfile", REPO / "recipes/llm-jp-3-13b-qlora.yaml")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    assert "pretrain_base" not in jobs and "train_tokenizer" not in jobs
    assert jobs["train_sft"] == jobs["train_dpo"] == jobs["write_submission"] == 1


def test_bad_recipe_fails_before_any_job_with_the_key_path(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    recipe = tmp_path / "typo.yaml"
    recipe.write_text((REPO / "recipes/default.yaml").read_text().replace("beta: 0.1", "betta: 0.1"))
    result = snakemake("-n", "--directory", tmp_path, "--configfile", recipe)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "typo.yaml is not a valid tunesmith recipe" in output
    assert "dpo: Additional properties are not allowed ('betta' was unexpected)" in output
    assert "Traceback" not in output
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The user's command on the embedded default recipe, in a fresh working directory."""
    work = tmp_path_factory.mktemp("default_run")
    (work / "data").symlink_to(REPO / "data")
    # Targets first: --configfile and --resources each take several values.
    result = snakemake("submission.jsonl", "--directory", work, "--configfile", REPO / "recipes/default.yaml",
                       "--cores", "1", "--resources", "gpu=1")
    assert result.returncode == 0, result.stderr[-5000:]
    return work


@pytest.mark.e2e
def test_default_run_writes_a_valid_submission(default_run):
    submission = default_run / "submission.jsonl"
    tasks = read_tasks(REPO / "data/tasks.jsonl")
    assert validate_submission(submission, REPO / "data/tasks.jsonl") == len(tasks) == 100
    rows = [json.loads(line) for line in submission.read_text(encoding="utf-8").splitlines()]
    assert [row["task_id"] for row in rows] == list(range(100))
    assert not any("###" in row["output"] for row in rows)


@pytest.mark.e2e
def test_fine_tuning_beats_the_untrained_base(default_run):
    scores = json.loads((default_run / "results/eval.json").read_text())["stages"]
    assert set(scores) == {"base", "sft", "dpo"}
    assert scores["sft"]["exact_match"] > scores["base"]["exact_match"]
    assert scores["sft"]["chrf"] > scores["base"]["chrf"]


@pytest.mark.e2e
def test_curation_accounts_for_every_row(default_run):
    for role in ("sft", "preference"):
        card = json.loads((default_run / f"results/curated/{role}.card.json").read_text())
        totals = card["totals"]
        assert totals["rows_in"] == totals["kept"] + sum(totals["quarantined"].values())
        kept = duckdb.sql(f"SELECT count(*) FROM '{default_run}/results/curated/{role}.parquet'").fetchall()[0][0]
        dropped = duckdb.sql(
            f"SELECT count(*) FROM '{default_run}/results/curated/{role}.quarantine.parquet'").fetchall()[0][0]
        assert (kept, dropped) == (totals["kept"], sum(totals["quarantined"].values()))
        assert card["totals"]["quarantined"].get("duplicate", 0) > 0


@pytest.mark.e2e
def test_every_job_logged_and_adapters_load(default_run):
    from peft import PeftConfig

    for log in ("train_tokenizer", "pretrain_base", "train_sft", "train_dpo", "write_submission", "evaluate_stages"):
        assert (default_run / "logs" / f"{log}.log").is_file()
    for stage in ("sft", "dpo"):
        adapter = default_run / "results" / stage / "adapter"
        assert PeftConfig.from_pretrained(adapter).peft_type == "LORA"
        assert json.loads((adapter / "tunesmith.json").read_text())["stage"] == stage
    assert not list(default_run.rglob("*.partial")), "an atomic write left a temporary file behind"


@pytest.mark.e2e
def test_a_finished_run_is_up_to_date(default_run):
    result = snakemake("submission.jsonl", "-n", "--directory", default_run,
                       "--configfile", REPO / "recipes/default.yaml")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def edited_recipe(directory, old, new):
    """The default recipe with one textual edit, written beside the run."""
    text = (REPO / "recipes/default.yaml").read_text(encoding="utf-8")
    assert old in text, old
    path = directory / "edited.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


RERUNS = [
    ("comment only", "# The embedded default", "# The embedded, edited default", {}),
    ("dpo.beta", "beta: 0.1", "beta: 0.2",
     {"train_dpo": 1, "generate_answers": 1, "evaluate_stages": 1, "write_submission": 1}),
    ("generate.max_new_tokens", "max_new_tokens: 32", "max_new_tokens: 24",
     {"generate_answers": 3, "evaluate_stages": 1, "write_submission": 1}),
    ("curate.max_prompt_chars", "curate:\n", "curate:\n  max_prompt_chars: 1000\n",
     {"curate_data": 2, "train_sft": 1, "train_dpo": 1, "generate_answers": 2, "evaluate_stages": 1,
      "write_submission": 1}),
    ("sft.learning_rate", "learning_rate: 0.003\n  lr_scheduler", "learning_rate: 0.002\n  lr_scheduler",
     {"train_sft": 1, "train_dpo": 1, "generate_answers": 2, "evaluate_stages": 1, "write_submission": 1}),
]


@pytest.mark.e2e
@pytest.mark.parametrize("edit,old,new,expected", RERUNS, ids=[edit for edit, *_ in RERUNS])
def test_an_edit_reruns_exactly_what_depends_on_it(default_run, tmp_path, edit, old, new, expected):
    recipe = edited_recipe(tmp_path, old, new)
    result = snakemake("submission.jsonl", "-n", "--directory", default_run, "--configfile", recipe)
    assert result.returncode == 0, result.stderr
    if not expected:
        assert "Nothing to be done" in result.stdout + result.stderr
    else:
        assert planned_jobs(result.stdout) == expected


@pytest.mark.e2e
def test_every_artifact_has_a_manifest(default_run):
    from tunesmith.manifest import content_hash

    submission = json.loads((default_run / "submission.jsonl.manifest.json").read_text())
    assert submission["stage"] == "submission"
    assert submission["outputs"]["submission.jsonl"] == content_hash(default_run / "submission.jsonl")
    assert "results/generations/dpo.jsonl" in submission["inputs"]
    sft = json.loads((default_run / "results/sft/adapter.manifest.json").read_text())
    assert sft["settings"]["sft"]["learning_rate"] == 0.003 and sft["seed"] == 42
    assert sft["template_hash"] == json.loads((default_run / "results/sft/adapter/tunesmith.json").read_text())[
        "template_hash"]
    assert sft["versions"]["trl"] == "1.16.0" and sft["device"].startswith("cpu")
    assert sft["started"] <= sft["finished"]


@pytest.mark.e2e
def test_lineage_walks_from_a_task_answer_to_the_source_rows(default_run):
    from tunesmith.manifest import LineageError, lineage

    contaminated = json.loads((default_run / "results/curated/sft.card.json").read_text())["contamination"][0]
    task_id = contaminated["task_id"]
    text = "\n".join(lineage("submission.jsonl", task_id=task_id, root=default_run))
    order = ["submission.jsonl  [submission", "results/generations/dpo.jsonl  [generate_dpo",
             "results/dpo/adapter  [dpo", "results/sft/adapter  [sft", "results/curated/sft.parquet  [curate_sft",
             "data/raw/sft.jsonl  [source, sha256"]
    assert text.startswith(order[0]) and all(step in text for step in order), text
    assert f"task {task_id} in submission.jsonl" in text
    assert f"quarantined as a copy of task {task_id}: sample_sft line {contaminated['line']}" in text
    with pytest.raises(LineageError, match="no manifest"):
        lineage("data/tasks.jsonl", root=default_run)


def test_disabled_dpo_submits_the_sft_answers(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    recipe = edited_recipe(tmp_path, "dpo:\n  enabled: true", "dpo:\n  enabled: false")
    result = snakemake("-n", "--directory", tmp_path, "--configfile", recipe)
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    assert "train_dpo" not in jobs and jobs["generate_answers"] == 2
    assert "curate_data" in jobs and jobs["curate_data"] == 1, "no preference data is curated without DPO"


def test_export_plans_a_merged_model_of_the_dpo_chain(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("results/export/dpo", "-n", "--directory", tmp_path,
                       "--configfile", REPO / "recipes/default.yaml")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    assert jobs["export_model"] == 1 and jobs["train_dpo"] == 1 and "write_submission" not in jobs
