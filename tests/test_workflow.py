"""The Snakemake DAG itself: planning, recipe errors at the command line, and one real end-to-end run."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys

import duckdb
import pytest
import torch

from conftest import REPO, snakemake
from recipe_keys import leaf_keys
from tunesmith.data.tasks import read_tasks
from tunesmith.generation.submission import validate_submission


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
    result = snakemake("-n", "--directory", tmp_path, "--config", f"recipe={REPO / 'recipes/default.yaml'}")
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result.stdout) == {
        "all": 1, "ingest_source": 2, "curate_data": 2, "export_dataset": 2, "evaluate_stages": 1, "generate_answers": 3, "pretrain_base": 1,
        "train_preference_method": 1, "train_sft": 1, "train_tokenizer": 1, "write_submission": 1, "trace_lineage": 1,
        "summarise_run": 1, "score_pair_accuracy": 2, "current_submission": 1, "current_evaluation": 1,
    }


def test_competition_recipe_plans_without_building_a_base_model(tmp_path, cached_hub_models):
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("-n", "--directory", tmp_path, "--config", f"recipe={REPO / 'recipes/llm-jp-3-13b-qlora.yaml'}")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    assert "pretrain_base" not in jobs and "train_tokenizer" not in jobs
    assert jobs["train_sft"] == jobs["train_preference_method"] == jobs["write_submission"] == 1


QUANTISED_REFUSAL = "base_model.quantization is 'nf4', which needs a CUDA GPU to train"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: a quantised recipe trains here")
def test_a_quantised_recipe_is_refused_before_any_job_when_it_would_train_here(tmp_path, cached_hub_models):
    """Not when training starts, after curation and a 26 GB fetch: when the workflow starts. A dry run plans it
    (test_competition_recipe_plans_without_building_a_base_model)."""
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("--cores", 1, "--directory", tmp_path, "--config",
                       f"recipe={REPO / 'recipes/llm-jp-3-13b-qlora.yaml'}", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and QUANTISED_REFUSAL in output, output[-3000:]
    assert "train_sft" in output.split(QUANTISED_REFUSAL)[1].splitlines()[0], "the message names the jobs"
    assert "Traceback" not in output and "WorkflowError" not in output and "common.smk" not in output, output[-3000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists(), "a job ran"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: a quantised recipe trains here")
def test_a_quantised_recipe_sent_to_a_cluster_is_submitted(tmp_path, cached_hub_models):
    """Through the Slurm profile the jobs run on GPU nodes: nothing is refused here, jobs reach sbatch (a fake one
    on PATH that records its calls and fails, so nothing runs)."""
    (tmp_path / "data").symlink_to(REPO / "data")
    fake = tmp_path / "bin"
    fake.mkdir()
    for command in ("sbatch", "sacct", "squeue", "sinfo", "sacctmgr", "scontrol", "scancel"):
        (fake / command).write_text(f'#!/bin/sh\necho "{command} $*" >> {tmp_path}/calls.txt\nexit 1\n')
        (fake / command).chmod(0o755)
    environment = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    result = snakemake("--profile", REPO / "profiles/slurm", "--directory", tmp_path, "--config",
                       f"recipe={REPO / 'recipes/llm-jp-3-13b-qlora.yaml'}", env=environment, timeout=300)
    assert QUANTISED_REFUSAL not in result.stdout + result.stderr
    assert "sbatch --parsable" in (tmp_path / "calls.txt").read_text()


def test_bad_recipe_fails_before_any_job_with_the_key_path(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    recipe = tmp_path / "typo.yaml"
    recipe.write_text((REPO / "recipes/default.yaml").read_text().replace("beta: 0.1", "betta: 0.1"))
    result = snakemake("-n", "--directory", tmp_path, "--config", f"recipe={recipe}")
    assert_refused_before_any_job(result, tmp_path, "typo.yaml is not a valid tunesmith recipe",
                                  "dpo: unknown key(s) 'betta'")


def assert_refused_before_any_job(result, work, *messages) -> None:
    """A recipe error: a failed run whose output says each of `messages`, with no traceback and no results."""
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for message in messages:
        assert message in output, (message, output[-3000:])
    assert "Traceback" not in output
    # our message alone: not Snakemake's header around it ("WorkflowError in file .../common.smk, line 23:")
    assert "WorkflowError" not in output and "common.smk" not in output and 'File "' not in output, output[-3000:]
    assert not (work / "results").exists()


# default_run (tests/conftest.py): the README's first command, once for the session.


@pytest.mark.e2e
def test_default_run_writes_a_valid_submission(default_run):
    submission = default_run / "submission.jsonl"
    tasks = read_tasks(REPO / "data/tasks.jsonl")
    assert validate_submission(submission, REPO / "data/tasks.jsonl") == len(tasks) == 100
    rows = [json.loads(line) for line in submission.read_text(encoding="utf-8").splitlines()]
    assert [row["task_id"] for row in rows] == list(range(100))
    assert not any("###" in row["output"] for row in rows)


def check_default_margins(report: dict) -> None:
    """What each stage of the default run buys, with room for another CPU's rounding and another seed (the
    same recipe under seeds 1, 2, 3, 4, 42: SFT 46-67% exact, DPO 55-72%, DPO above SFT by 3-16 points;
    capitals SFT 0%, DPO 38-88%; preference accuracy SFT 56-73%, DPO 82-100%), but none for a lost adapter,
    a template mismatch or a DPO that un-learns."""
    scores = report["stages"]
    assert set(scores) == {"base", "sft", "dpo"}
    base, sft, dpo = (scores[stage] for stage in ("base", "sft", "dpo"))
    assert base["exact_match"] <= 0.05, "the untrained base answers tasks: the template leaked into pretraining?"
    assert sft["exact_match"] >= 0.4 and sft["exact_match"] - base["exact_match"] >= 0.4, scores
    assert sft["chrf"] - base["chrf"] >= 55, scores
    assert dpo["exact_match"] >= sft["exact_match"] - 0.05, "DPO un-learned what SFT taught"
    # What the preference data teaches: the bare capital, not SFT's sentence.
    assert dpo["families"]["capital"]["exact_match"] >= sft["families"]["capital"]["exact_match"] + 0.25, scores
    preference = report["preference"]
    assert preference["dpo"]["accuracy"] >= preference["sft"]["accuracy"] + 0.05, preference


@pytest.mark.e2e
def test_each_stage_buys_its_margin(default_run):
    check_default_margins(json.loads((default_run / "results/eval.json").read_text()))


def one(directory, pattern):
    """The one file of a run matching `pattern` (stage artifacts live under content keys)."""
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


@pytest.mark.e2e
def test_curation_accounts_for_every_row(default_run):
    for role in ("sft", "preference"):
        card = json.loads(one(default_run, f"results/curated/*/{role}.card.json").read_text())
        totals = card["totals"]
        assert totals["rows_in"] == totals["kept"] + sum(totals["quarantined"].values())
        kept = duckdb.sql(f"SELECT count(*) FROM '{one(default_run, f'results/curated/*/{role}.parquet')}'").fetchall()[0][0]
        dropped = duckdb.sql(
            f"SELECT count(*) FROM '{one(default_run, f'results/curated/*/{role}.quarantine.parquet')}'").fetchall()[0][0]
        assert (kept, dropped) == (totals["kept"], sum(totals["quarantined"].values()))
        assert card["totals"]["quarantined"].get("duplicate", 0) > 0


@pytest.mark.e2e
def test_every_job_logged_and_adapters_load(default_run):
    from peft import PeftConfig

    for log in ("train_tokenizer/*", "pretrain_base/*", "train_sft/*", "train_preference_method/*", "write_submission/*",
                "evaluate_stages/*", "current_submission", "current_evaluation"):
        assert one(default_run, f"logs/{log}.log").is_file()
    for stage in ("sft", "dpo"):
        adapter = one(default_run, f"results/{stage}/*/adapter")
        assert PeftConfig.from_pretrained(adapter).peft_type == "LORA"
        metadata = json.loads((adapter / "tunesmith.json").read_text())
        assert metadata["stage"] == stage and [step["stage"] for step in metadata["chain"]][-1] == stage
        assert metadata["rows"] + sum(metadata["rows_dropped"].values()) == metadata["rows_curated"] > 0
    assert (one(default_run, "results/dpo/*/adapter") / "trained" / "adapter_model.safetensors").is_file()
    assert not list(default_run.rglob("*.partial")), "an atomic write left a temporary file behind"


@pytest.mark.e2e
def test_the_dpo_adapter_loads_standalone_from_elsewhere_and_reproduces_our_greedy_answers(default_run, tmp_path,
                                                                                          monkeypatch):
    """What a user does with results/dpo/<key>/adapter: the standard peft API, from another folder."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from tunesmith.config.recipe import load_recipe
    from tunesmith.model.template import PromptTemplate

    adapter = one(default_run, "results/dpo/*/adapter").resolve()
    rows = [json.loads(line) for line in one(default_run, "results/generations/*/dpo.jsonl").read_text(
        encoding="utf-8").splitlines()]
    monkeypatch.chdir(tmp_path)  # nothing relative to the workflow folder may be needed
    model = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(model.peft_config["default"].base_model_name_or_path)
    recipe = load_recipe(REPO / "recipes/default.yaml")
    template = PromptTemplate(recipe["template"])
    tasks = {task.task_id: task for task in read_tasks(REPO / "data/tasks.jsonl")}
    assert recipe["generate"]["repetition_penalty"] == 1.0 and not recipe["generate"]["do_sample"]
    for row in rows:
        encoded = tokenizer(template.render_prompt(tasks[row["task_id"]].prompt_text, tokenizer), return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=recipe["generate"]["max_new_tokens"], do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answer = tokenizer.decode(output[0, encoded.input_ids.shape[1]:], skip_special_tokens=True)
        assert answer == row["attempts"][0]["raw_output"], row["task_id"]  # the first attempt is the greedy one
    assert len({row["attempts"][0]["raw_output"] for row in rows}) > 5, "answers that do not depend on the task"


@pytest.mark.e2e
def test_a_finished_run_is_up_to_date(default_run):
    result = snakemake("submission.jsonl", "-n", "--directory", default_run,
                       "--config", f"recipe={REPO / 'recipes/default.yaml'}")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def edited_recipe(directory, old, new):
    """The default recipe with one textual edit, written beside the run."""
    text = (REPO / "recipes/default.yaml").read_text(encoding="utf-8")
    assert old in text, old
    path = directory / "edited.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


# `snakemake submission.jsonl` builds the submitted stage's chain only; scores are a separate target.
RERUNS = [
    ("comment only", "# The embedded default", "# The embedded, edited default", {}),
    ("dpo.beta", "beta: 0.1", "beta: 0.2", {"train_preference_method": 1, "generate_answers": 1, "write_submission": 1, "current_submission": 1}),
    ("generate.max_new_tokens", "max_new_tokens: 32", "max_new_tokens: 24",
     {"generate_answers": 1, "write_submission": 1, "current_submission": 1}),
    ("curate.max_prompt_chars", "curate:\n", "curate:\n  max_prompt_chars: 1000\n",
     {"curate_data": 2, "train_sft": 1, "train_preference_method": 1, "generate_answers": 1, "write_submission": 1,
      "current_submission": 1}),
    ("sft.learning_rate", "learning_rate: 0.003\n  lr_scheduler", "learning_rate: 0.002\n  lr_scheduler",
     {"train_sft": 1, "train_preference_method": 1, "generate_answers": 1, "write_submission": 1, "current_submission": 1}),
]


@pytest.mark.e2e
@pytest.mark.parametrize("edit,old,new,expected", RERUNS, ids=[edit for edit, *_ in RERUNS])
def test_an_edit_reruns_exactly_what_depends_on_it(default_run, tmp_path, edit, old, new, expected):
    recipe = edited_recipe(tmp_path, old, new)
    result = snakemake("submission.jsonl", "-n", "--directory", default_run, "--config", f"recipe={recipe}")
    assert result.returncode == 0, result.stderr
    if not expected:
        assert "Nothing to be done" in result.stdout + result.stderr
    else:
        assert planned_jobs(result.stdout) == expected


# Keys a rule's input functions read (the files they name), not its job.
READ_BY_INPUT_FILES = {"tokenizer": re.compile(r"sources\[\d+\]\.(path|format)"),
                       "base_model": re.compile(r"sources\[\d+\]\.(path|format)"),
                       **{f"generate_{stage}": re.compile(r"tasks\.path") for stage in ("base", "sft", "dpo")},
                       # the task file (decontamination) is an input; the length histograms' max_length
                       # and token counter are worked out for the rule's params (plan.curation_lengths)
                       **{f"curate_{role}": re.compile(rf"tasks\.path|curate\.tokens\.count|{stage}\.max_length")
                          for role, stage in (("sft", "sft"), ("preference", "dpo"))},
                       # which stages' answers, grades and pairs are scored (plan.model_stages), and the files
                       "evaluate": re.compile(r"evaluate\.stages|submission\.stage|dpo\.enabled|tasks\.(path|references)"
                                              r"|judge\.backend")}


@pytest.mark.e2e
def test_every_job_reads_every_recipe_key_its_stage_declares(default_run):
    """The stage table declares no key its code ignores (reading an undeclared key fails the job)."""
    from tunesmith.config import plan
    from tunesmith.config.recipe import load_recipe

    steps = {step.key: step for step in plan.steps(load_recipe(REPO / "recipes/default.yaml")).values()}
    checked, problems = set(), []
    for path in default_run.glob("results/**/*.manifest.json"):
        match = re.search(r"results/[^/]+/([0-9a-f]{12})", str(path.relative_to(default_run)))
        if not match or match[1] not in steps:
            continue
        step, manifest = steps[match[1]], json.loads(path.read_text(encoding="utf-8"))
        if manifest["stage"].startswith("export_"):
            continue  # export_dataset's, stored beside the curated data it exports
        read = set(manifest["settings_read"])
        unread = leaf_keys(step.settings, list(step.settings)) - read
        if step.name in READ_BY_INPUT_FILES:
            unread = {key for key in unread if not READ_BY_INPUT_FILES[step.name].fullmatch(key)}
        if unread:
            problems.append(f"{step.name} declares keys it never reads: {sorted(unread)}")
        checked.add(step.name)
    assert not problems, "\n".join(problems)
    assert checked >= {"tokenizer", "base_model", "ingest", "curate_sft", "curate_preference", "sft", "dpo",
                       "generate_base", "generate_sft", "generate_dpo", "pair_accuracy_sft", "pair_accuracy_dpo",
                       "evaluate", "submit"}


STRUCTURAL = ("dpo.enabled", "continued_pretraining.enabled", "base_model.path", "sources", "sweep", "tasks",
              "repeats")  # repeats adds replicates of every stage that reads the seed


@pytest.mark.e2e
@pytest.mark.parametrize("stage", ["tokenizer", "base_model", "ingest_sample_sft", "curate_sft", "curate_preference",
                                   "sft", "dpo", "generate_base", "generate_sft", "generate_dpo"])
def test_changing_every_key_a_stage_does_not_read_plans_no_job_of_it(default_run, tmp_path, stage, monkeypatch):
    """Every recipe key that neither the stage nor anything upstream of it reads, changed at once (where
    the recipe stays valid): a dry run on the finished default run plans no job of that stage."""
    import yaml

    from stage_keys import alternatives, downstream_of, get, put
    from tunesmith.config import plan
    from tunesmith.config.recipe import RecipeError, validate_recipe

    monkeypatch.chdir(default_run)
    recipe = yaml.safe_load((REPO / "recipes/default.yaml").read_text(encoding="utf-8"))
    filled = validate_recipe(yaml.safe_load((REPO / "recipes/default.yaml").read_text(encoding="utf-8")))
    steps = plan.steps(filled)
    upstream = {name for name in steps if stage in downstream_of(steps, {name})}
    read = set().union(*(leaf_keys(filled, steps[name].reads) for name in upstream))
    changed = []
    for dotted in sorted(leaf_keys(filled, [key for key in filled if key != "sweep"]) - read):
        if dotted.startswith(STRUCTURAL):
            continue
        for value in alternatives(dotted, get(filled, dotted)):
            candidate = put(copy.deepcopy(recipe), dotted, value)
            try:  # as the workflow validates it: with the files, from the run's folder
                validate_recipe(copy.deepcopy(candidate), check_files=True)
            except RecipeError:
                continue  # another key forbids this value (e.g. heads must divide the width)
            recipe = candidate
            changed.append(dotted)
            break
    assert len(changed) > 20, changed
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    result = snakemake("-n", "--directory", default_run, "--config", f"recipe={edited}")
    assert result.returncode == 0, result.stderr[-3000:]
    from tunesmith.explain import planned_jobs as parsed

    key = steps[stage].key
    rerun = [job.rule for job in parsed(result.stdout) if any(key in output for output in job.outputs)]
    assert not rerun, f"changing {changed} reruns {stage}"


@pytest.mark.e2e
def test_every_artifact_has_a_manifest(default_run):
    from tunesmith.jobs.atomic import content_hash

    current = json.loads((default_run / "submission.jsonl.manifest.json").read_text())
    assert current["stage"] == "current"  # submission.jsonl is a copy of the recipe's keyed submission
    assert current["outputs"]["submission.jsonl"] == content_hash(default_run / "submission.jsonl")
    keyed = one(default_run, "results/submissions/*/submission.jsonl")
    assert keyed.read_bytes() == (default_run / "submission.jsonl").read_bytes()
    assert str(keyed.relative_to(default_run)) in current["inputs"]
    submission = json.loads(keyed.with_name("submission.jsonl.manifest.json").read_text())
    assert submission["stage"] == "submit"  # the stage registry's name (tunesmith.workflow.job_label)
    dpo_generations = one(default_run, "results/generations/*/dpo.jsonl").relative_to(default_run)
    assert str(dpo_generations) in submission["inputs"]
    sft_adapter = one(default_run, "results/sft/*/adapter")
    sft = json.loads(one(default_run, "results/sft/*/adapter.manifest.json").read_text())
    assert sft["settings"]["sft"]["learning_rate"] == 0.003 and sft["seed"] == 42
    assert sft["template_hash"] == json.loads((sft_adapter / "tunesmith.json").read_text())[
        "template_hash"]
    assert sft["versions"]["trl"] == "1.16.0" and sft["device"].startswith("cpu")
    assert sft["started"] <= sft["finished"]


@pytest.mark.e2e
def test_lineage_walks_from_a_task_answer_to_the_source_rows(default_run):
    from tunesmith.lineage import LineageError, lineage

    contaminated = json.loads(one(default_run, "results/curated/*/sft.card.json").read_text())["contamination"][0]
    task_id = contaminated["task_id"]
    text = "\n".join(lineage("submission.jsonl", task_id=task_id, root=default_run))
    key = "[0-9a-f]{12}"
    order = ["submission.jsonl  \\[current", f"results/submissions/{key}/submission.jsonl  \\[submit",
             f"results/generations/{key}/dpo.jsonl  \\[generate_dpo",
             f"results/dpo/{key}/adapter  \\[dpo", f"results/sft/{key}/adapter  \\[sft",
             f"results/curated/{key}/sft.parquet  \\[curate_sft", "data/raw/sft.jsonl  \\[source, sha256"]
    assert text.startswith("submission.jsonl") and all(re.search(step, text) for step in order), text
    assert f"task {task_id} in submission.jsonl" in text
    assert f"quarantined as a copy of task {task_id}: sample_sft line {contaminated['line']}" in text
    with pytest.raises(LineageError, match="no manifest"):
        lineage("data/tasks.jsonl", root=default_run)


def test_disabled_dpo_submits_the_sft_answers(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    recipe = edited_recipe(tmp_path, "dpo:\n  enabled: true", "dpo:\n  enabled: false")
    result = snakemake("-n", "--directory", tmp_path, "--config", f"recipe={recipe}")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    assert "train_preference_method" not in jobs and jobs["generate_answers"] == 2
    assert "curate_data" in jobs and jobs["curate_data"] == 1, "no preference data is curated without DPO"


def test_kto_trains_on_the_unpaired_answers_curation_makes_of_the_pairs(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    recipe = edited_recipe(tmp_path, "  beta: 0.1\n", "  beta: 0.1\n  method: kto\n")
    result = snakemake("-n", "--directory", tmp_path, "--config", f"recipe={recipe}")
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result.stdout)["unpair_preferences"] == 1
    unpair = re.search(r"rule unpair_preferences:\n    input: (\S+)\n    output: (\S+?),", result.stdout)
    assert unpair and unpair[1].endswith("/preference.parquet") and unpair[2].endswith("/unpaired.parquet"), \
        result.stdout
    dpo = re.search(r"rule train_preference_method:\n    input: ([^\n]+)", result.stdout)
    assert unpair[2] in dpo[1] and "preference.parquet" not in dpo[1], dpo[1]


def test_export_plans_a_merged_model_of_the_dpo_chain(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("results/export/dpo", "-n", "--directory", tmp_path,
                       "--config", f"recipe={REPO / 'recipes/default.yaml'}")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    assert jobs["export_model"] == 1 and jobs["train_preference_method"] == 1 and "write_submission" not in jobs


SWEEP = """
sweep:
  matrix:
    dpo.beta: [0.1, 0.3]
    generate.repetition_penalty: [1.0, 1.2]
"""


def sweep_recipe(directory):
    path = directory / "sweep.yaml"
    path.write_text((REPO / "recipes/default.yaml").read_text(encoding="utf-8") + SWEEP, encoding="utf-8")
    return path


def test_a_sweep_builds_shared_upstream_once(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("-n", "--directory", tmp_path, "--config", f"recipe={sweep_recipe(tmp_path)}")
    assert result.returncode == 0, result.stderr
    # Four variants and the recipe itself: curation, the base model and SFT once; DPO once per beta;
    # answers once per (model, generation settings): base and sft x 2 penalties, dpo x 2 betas x 2.
    assert planned_jobs(result.stdout) == {
        "all": 1, "ingest_source": 2, "curate_data": 2, "export_dataset": 2, "train_tokenizer": 1, "pretrain_base": 1, "train_sft": 1, "train_preference_method": 2,
        # The recipe is one of its own variants (beta 0.1, penalty 1.0): its keyed scores and submission are that one's.
        "generate_answers": 8, "evaluate_stages": 4, "write_submission": 4, "trace_lineage": 1, "summarise_run": 1,
        "current_evaluation": 1, "current_submission": 1, "variant_evaluation": 4, "variant_submission": 4,
        "rank_variants": 1, "score_pair_accuracy": 3,
    }
    assert "results/sweep/dpo.beta=0.3,generate.repetition_penalty=1.2/submission.jsonl" in result.stdout


def test_a_misspelt_sweep_key_names_the_variant(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    recipe = sweep_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("dpo.beta:", "dpo.betta:"))
    result = snakemake("-n", "--directory", tmp_path, "--config", f"recipe={recipe}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "sweep variant dpo.betta=0.1,generate.repetition_penalty=1.0" in output
    assert "'betta' is not a key of 'dpo'" in output


def test_leaderboard_ranks_variants_by_the_submitted_stage(tmp_path):
    from tunesmith.evaluation.leaderboard import leaderboard

    scores = {}
    for name, chrf in (("a", 10.0), ("b", 30.0), ("c", 20.0)):
        scores[name] = tmp_path / f"{name}.json"
        stages = {"sft": {"exact_match": 0.5, "chrf": 99.0, "n": 2}, "dpo": {"exact_match": 0.0, "chrf": chrf, "n": 2}}
        scores[name].write_text(json.dumps({"stages": stages}))
    overrides = {"a": {"dpo.beta": 0.1}, "b": {"dpo.beta": 0.2}, "c": {"dpo.beta": 0.3}}
    rows = leaderboard(scores, overrides, {"a": "dpo", "b": "dpo", "c": "dpo"}, tmp_path / "board.json",
                       tmp_path / "board.md")
    assert [row["variant"] for row in rows] == ["b", "c", "a"]
    table = (tmp_path / "board.md").read_text().splitlines()
    assert table[0] == "| rank | dpo.beta | submitted | exact match | interval | chrF | interval |"
    assert table[2] == "| 1 | 0.2 | dpo | 0.0% | – | 30.0 | – |"


@pytest.mark.e2e
def test_recipes_that_differ_downstream_share_upstream_artifacts(default_run, tmp_path):
    """Build a second recipe (another DPO beta) for real beside the first; then the first needs no training."""
    work = tmp_path / "run"
    shutil.copytree(default_run, work, symlinks=True)
    beta = edited_recipe(tmp_path, "beta: 0.1", "beta: 0.2")
    built = snakemake("submission.jsonl", "--directory", work, "--config", f"recipe={beta}", "--cores", "1",
                      "--resources", "gpu=1")
    assert built.returncode == 0, built.stderr[-5000:]
    assert len(list(work.glob("results/dpo/*/adapter"))) == 2
    assert len(list(work.glob("results/sft/*/adapter"))) == 1, "the second recipe trained SFT again"
    back = snakemake("submission.jsonl", "-n", "--directory", work, "--config", f"recipe={REPO / 'recipes/default.yaml'}")
    # Both recipes' submissions stay under their keys: switching back only copies the first one's again.
    assert planned_jobs(back.stdout) == {"current_submission": 1}


@pytest.mark.e2e
def test_explain_names_the_recipe_key_behind_each_rebuild(default_run, tmp_path):
    from tunesmith.cli import main

    assert main(["explain", "submission.jsonl", "--directory", str(default_run),
                 "--recipe", str(REPO / "recipes/default.yaml"), "--snakefile", str(REPO / "Snakefile")]) == 0
    from tunesmith.explain import explain

    assert explain(REPO / "recipes/default.yaml", ["submission.jsonl"], root=default_run, snakefile=REPO / "Snakefile") == [
        "Nothing to rebuild: every target is up to date."]
    lines = explain(edited_recipe(tmp_path, "learning_rate: 0.003\n  lr_scheduler", "learning_rate: 0.002\n  lr_scheduler"),
                    ["submission.jsonl"], root=default_run, snakefile=REPO / "Snakefile")
    text = "\n".join(lines)
    sft = text.split("train_sft: ")[1].split("\n", 3)
    assert sft[1].strip() == "sft.learning_rate: 0.003 → 0.002", text
    dpo = text.split("train_preference_method: ")[1].split("\n", 2)
    assert dpo[1].strip().startswith("consumes results/sft/") and dpo[1].strip().endswith("which is rebuilt"), text
    assert lines[-1] == "5 jobs would run."  # sft, dpo, the dpo answers, the keyed submission and its copy


@pytest.mark.e2e
def test_two_clean_runs_are_byte_identical(quick_run, tmp_path):
    """The default recipe with a few steps per stage (tests/quick_recipe.py), twice from nothing: quick_run
    (every target) and the submission alone in another folder."""
    first_run, recipe = quick_run
    second_run = tmp_path / "second_run"
    second_run.mkdir()
    (second_run / "data").symlink_to(REPO / "data")
    result = snakemake("submission.jsonl", "--directory", second_run, "--config", f"recipe={recipe}",
                       "--cores", "1", "--resources", "gpu=1")
    assert result.returncode == 0, result.stderr[-5000:]
    compared = ["submission.jsonl", "results/curated/*/sft.parquet", "results/curated/*/preference.parquet",
                "results/base_model/*/model.safetensors", "results/sft/*/adapter/adapter_model.safetensors",
                "results/dpo/*/adapter/adapter_model.safetensors"]
    for pattern in compared:
        first, second = one(first_run, pattern), one(second_run, pattern)
        assert first.relative_to(first_run) == second.relative_to(second_run), "the same recipe gave another key"
        assert first.read_bytes() == second.read_bytes(), pattern


@pytest.mark.e2e
def test_changing_a_stage_script_reruns_that_stage(default_run, tmp_path):
    workflow = tmp_path / "workflow"
    workflow.mkdir()
    for part in ("Snakefile", "rules", "scripts", "report", "recipes"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copyfile)(REPO / part, workflow / part)
    script = workflow / "scripts/train_preference_method.py"
    script.write_text(script.read_text().replace("log_to(snakemake.log[0])", "log_to(snakemake.log[0])  # edited"))
    command = [sys.executable, "-m", "snakemake", "-s", str(workflow / "Snakefile"), "submission.jsonl", "-n",
               "--directory", str(default_run), "--config", f"recipe={REPO / 'recipes/default.yaml'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result.stdout) == {"train_preference_method": 1, "generate_answers": 1, "write_submission": 1,
                                           "current_submission": 1}


def test_continued_pretraining_plans_an_adapter_under_sft(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    recipe = tmp_path / "cpt.yaml"
    recipe.write_text((REPO / "recipes/default.yaml").read_text() + "\ncontinued_pretraining:\n  enabled: true\n")
    result = snakemake("submission.jsonl", "-n", "--directory", tmp_path, "--config", f"recipe={recipe}")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    # the submission answers with its own stage only: the other stages' answers are for the scores
    assert jobs["train_cpt"] == 1 and jobs["train_sft"] == 1 and jobs["generate_answers"] == 1
    sft_inputs = result.stdout.split("rule train_sft:")[1].split("output:")[0]
    assert re.search(r"results/cpt/[0-9a-f]{12}/adapter", sft_inputs), sft_inputs


@pytest.mark.e2e
def test_the_shipped_sweep_builds_every_variant_and_a_leaderboard(default_run, tmp_path):
    """recipes/sweep.yaml beside a finished default run: only what the variants change is built."""
    work = tmp_path / "run"
    shutil.copytree(default_run, work, symlinks=True)
    plan_only = snakemake("-n", "--directory", work, "--config", f"recipe={REPO / 'recipes/sweep.yaml'}")
    jobs = planned_jobs(plan_only.stdout)
    assert not {"ingest_source", "curate_data", "pretrain_base", "train_sft"} & set(jobs), jobs
    assert jobs["train_preference_method"] == 1 and jobs["generate_answers"] == 5 and jobs["rank_variants"] == 1
    built = snakemake("--directory", work, "--config", f"recipe={REPO / 'recipes/sweep.yaml'}", "--cores", "1",
                      "--resources", "gpu=1")
    assert built.returncode == 0, built.stderr[-5000:]
    board = json.loads((work / "results/sweep/leaderboard.json").read_text())
    assert [row["rank"] for row in board] == [1, 2, 3, 4]
    assert {json.dumps(row["overrides"], sort_keys=True) for row in board} == {
        json.dumps({"dpo.beta": beta, "generate.repetition_penalty": penalty}, sort_keys=True)
        for beta in (0.1, 0.3) for penalty in (1.0, 1.2)}
    assert [row["chrf"] for row in board] == sorted((row["chrf"] for row in board), reverse=True)
    for row in board:
        assert validate_submission(work / "results/sweep" / row["variant"] / "submission.jsonl",
                                   REPO / "data/tasks.jsonl") == 100
    same_as_recipe = work / "results/sweep/dpo.beta=0.1,generate.repetition_penalty=1.0/submission.jsonl"
    assert same_as_recipe.read_bytes() == (work / "submission.jsonl").read_bytes()
    assert "Sweep leaderboard" in built.stdout + built.stderr


# ---- the judge (issue 10) ----------------------------------------------------------------------

def judge_recipe(directory, url="http://127.0.0.1:9/v1", model="judge-model", references="null", extra=""):
    """The default recipe with an OpenAI-compatible judge and the given references (null: none)."""
    text = (REPO / "recipes/default.yaml").read_text(encoding="utf-8")
    text = text.replace("references: data/references.jsonl", f"references: {references}")
    text += (f"\njudge:\n  backend: openai\n  max_new_tokens: 16\n  parse_retries: 1\n"
             f"  openai:\n    base_url: {url}\n    model: {model}\n    concurrency: 4\n{extra}")
    path = directory / "judged.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_submission_does_not_wait_for_the_scores(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("submission.jsonl", "-n", "--directory", tmp_path, "--config", f"recipe={judge_recipe(tmp_path)}")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    assert "evaluate_stages" not in jobs and "judge_answers" not in jobs and jobs["generate_answers"] == 1
    everything = planned_jobs(snakemake("-n", "--directory", tmp_path, "--config", f"recipe={judge_recipe(tmp_path)}").stdout)
    assert everything["judge_answers"] == 3 and everything["generate_answers"] == 3
    assert everything["evaluate_stages"] == 1


def test_bad_task_side_files_fail_the_dry_run_naming_key_file_and_line(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / "refs.csv").write_text('input,output,eval_aspect\n"どの課題にもない問題","答え",\n', encoding="utf-8")
    recipe = judge_recipe(tmp_path, references="refs.csv", extra="  reference_grades: gpt4.jsonl\n")
    result = snakemake("-n", "--directory", tmp_path, "--config", f"recipe={recipe}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "tasks.references: refs.csv:2: input 'どの課題にもない問題…' matches no task of the task file" in output
    assert "judge.reference_grades: gpt4.jsonl: file not found" in output
    from tunesmith.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)  # the recipe's paths are relative to the working directory
        assert main(["validate", str(recipe)]) == 1


@pytest.mark.e2e
def test_a_judge_grades_every_stage_without_references(default_run, tmp_path):
    """Beside a finished default run: a recipe with no references and a judge served by `transformers
    serve` grades the stages' answers (no retraining) and scores them; a judge setting that changes no
    grade reruns the judge jobs, which the cache answers without a request; and the end-of-run message
    never passes another recipe's table off as this one's."""
    from judge_server import build_tiny_judge, serving

    work = tmp_path / "run"
    shutil.copytree(default_run, work, symlinks=True)
    model = build_tiny_judge(tmp_path / "judge")
    # Continuous batching: the server generates the concurrent requests together (2 shared cores).
    with serving(model, tmp_path / "serve.log", continuous_batching=True) as url:
        recipe = judge_recipe(tmp_path, url=url, model=model)
        plan_only = planned_jobs(snakemake("-n", "--directory", work, "--config", f"recipe={recipe}").stdout)
        # The submission is the default run's (same models, same answers): only the grades, the evaluation and its
        # copy as the current recipe's results/eval.json are new.
        assert plan_only == {"judge_answers": 3, "evaluate_stages": 1, "current_evaluation": 1, "summarise_run": 1,
                             "all": 1}, plan_only
        built = snakemake("--directory", work, "--config", f"recipe={recipe}", "--cores", "3", "--resources", "gpu=1")
        assert built.returncode == 0, built.stderr[-5000:]
        report = json.loads((work / "results/eval.json").read_text(encoding="utf-8"))
        assert report["references"] is None and list(report["stages"]) == ["base", "sft", "dpo"]
        for stage, result in report["stages"].items():
            judge = result["judge"]
            assert judge["graded"] + judge["unparseable"] == 100, stage
            assert "chrf" not in result
        assert "Scores (judge " in built.stdout + built.stderr
        table = (work / "results/eval.md").read_text(encoding="utf-8")
        assert "| task | input | base answer | base grade | base reason |" in table
        assert len(list(work.glob("results/judged/*/*.jsonl.manifest.json"))) == 3
        faster = judge_recipe(tmp_path, url=url, model=model).read_text().replace("concurrency: 4", "concurrency: 2")
        recipe.write_text(faster, encoding="utf-8")
        rerun = snakemake("results/eval.json", "--directory", work, "--config", f"recipe={recipe}", "--cores", "1")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert planned_jobs(rerun.stdout + rerun.stderr)["judge_answers"] == 3
        logs = [path.read_text() for path in work.glob("logs/judge_answers/*/*.log")]
        assert sum("100 from the cache, 0 requests sent" in log for log in logs) == 3, logs
    # The default recipe again, with one job to run: results/eval.json is the judged recipe's.
    back = snakemake("submission.jsonl", "--forcerun", "write_submission", "--directory", work,
                     "--config", f"recipe={REPO / 'recipes/default.yaml'}", "--cores", "1")
    assert "holds the scores of another recipe or of older answers, not shown" in back.stdout + back.stderr
    assert "| base |" not in back.stdout + back.stderr
    no_scores = edited_recipe(tmp_path, "references: data/references.jsonl", "references: null")
    bare = snakemake("submission.jsonl", "--forcerun", "write_submission", "--directory", work,
                     "--config", f"recipe={no_scores}", "--cores", "1")
    assert "No scores: this recipe has no judge" in bare.stdout + bare.stderr
    assert "| base |" not in bare.stdout + bare.stderr and "Scores on None" not in bare.stdout + bare.stderr


def test_config_set_overrides_a_recipe_key_and_is_validated_like_the_file(tmp_path):
    """`--config set=KEY=VALUE[,KEY=VALUE...]` (issue 21): a bad override fails before any job, naming its key."""
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("-n", "--directory", tmp_path, "--config", f"recipe={REPO / 'recipes/default.yaml'}",
                       "set=sft.num_train_epochs=2,sft.learning_rte=1e-4")
    assert_refused_before_any_job(result, tmp_path, "with sft.num_train_epochs,sft.learning_rte is not a valid tunesmith recipe",
                                  "sft: unknown key(s) 'learning_rte' (did you mean 'learning_rate'?)")


def test_an_old_key_and_a_bad_trainer_field_fail_before_any_job(tmp_path):
    """trl's names (tunesmith.config.trl_fields): an old key names the new one, and a `trainer:` field is checked against
    the installed trl's config when the workflow starts, not when the training job builds it."""
    (tmp_path / "data").symlink_to(REPO / "data")
    recipe = f"recipe={REPO / 'recipes/default.yaml'}"
    result = snakemake("-n", "--directory", tmp_path, "--config", recipe, "set=sft.epochs=2")
    assert_refused_before_any_job(result, tmp_path, "sft.epochs: renamed to sft.num_train_epochs")
    result = snakemake("-n", "--directory", tmp_path, "--config", recipe,
                       "set=sft.trainer.neftune_noise_alfa=5,dpo.trainer.beta=0.2")
    assert_refused_before_any_job(result, tmp_path, "sft.trainer.neftune_noise_alfa: not a field of trl's SFTConfig",
                                  "did you mean 'neftune_noise_alpha'?",
                                  "dpo.trainer.beta: tunesmith sets trl's beta itself; use dpo.beta instead")


@pytest.mark.e2e
def test_the_merged_export_loads_in_transformers_and_answers_as_the_run_did(tmp_path):
    """`snakemake results/export/sft` for real (a quick recipe: a few steps, no DPO), then the folder alone through
    transformers (AutoModelForCausalLM, its tokenizer and saved chat template), as a user of the upload would:
    its greedy answers are the run's own greedy answers for that stage."""
    import yaml
    from quick_recipe import quick_recipe
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.model.template import PromptTemplate

    recipe_path = quick_recipe(REPO / "recipes/default.yaml", tmp_path / "quick.yaml")
    recipe = yaml.safe_load(open(recipe_path, encoding="utf-8"))
    recipe["dpo"]["enabled"] = False  # the submission is SFT's
    yaml.safe_dump(recipe, open(recipe_path, "w", encoding="utf-8"), allow_unicode=True, sort_keys=False)
    work = tmp_path / "run"
    work.mkdir()
    (work / "data").symlink_to(REPO / "data")
    result = snakemake("submission.jsonl", "results/export/sft", "--directory", work, "--config",
                       f"recipe={recipe_path}", "--cores", "2", "--resources", "gpu=1")
    assert result.returncode == 0, result.stderr[-5000:]

    folder = work / "results/export/sft"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    generated = [json.loads(line) for line in one(work, "results/generations/*/sft.jsonl").read_text().splitlines()]
    tasks = {task.task_id: task for task in read_tasks(REPO / "data/tasks.jsonl")}
    template = PromptTemplate(_validated(recipe)["template"])
    same, differ = 0, []
    for row in generated:
        prompt_text = tasks[row["task_id"]].prompt_text
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt_text}], tokenize=False,
                                             add_generation_prompt=True)
        # The saved chat template reproduces the training prompt, BOS included (written once, by the template).
        assert text == tokenizer.bos_token + template.render_prompt(prompt_text, tokenizer)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**ids, do_sample=False, max_new_tokens=recipe["generate"]["max_new_tokens"],
                                    repetition_penalty=recipe["generate"]["repetition_penalty"],
                                    pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        greedy = row["attempts"][0]
        assert not greedy["retry"]
        if answer == greedy["raw_output"]:
            same += 1
        else:
            differ.append((row["task_id"], answer, greedy["raw_output"]))
    print(f"\nexported model: {same} of {len(generated)} greedy answers equal the run's")
    # The merge is exact up to float rounding (W + BA against Wx + B(Ax)), which can flip a near-tie.
    assert same >= 0.95 * len(generated), differ[:5]


def _validated(raw: dict) -> dict:
    from tunesmith.config.recipe import validate_recipe

    return validate_recipe(raw)
