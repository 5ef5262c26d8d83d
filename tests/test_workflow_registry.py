"""The stage registry (tunesmith.workflow) without Snakemake: a recipe's steps, the rule behind each stage,
and the files a job waits for, with rule outputs stood in by `locate`."""

import copy
import re
from types import SimpleNamespace

import pytest

from conftest import REPO
from tunesmith import workflow
from tunesmith.config import plan
from tunesmith.config.recipe import load_recipe, load_recipe_and_variants


def locate(rule, output, **wildcards):
    """A stand-in for `rules.<rule>.output.<output>` expanded: the rule, output and wildcards, readable."""
    return f"{rule}.{output}:" + ",".join(f"{name}={value}" for name, value in sorted(wildcards.items()))


@pytest.fixture
def recipe(monkeypatch):
    monkeypatch.chdir(REPO)  # the recipe's sources and tasks are relative to the workflow's folder
    return load_recipe(REPO / "recipes/default.yaml")


def registry(recipe, **changes):
    changed = copy.deepcopy(recipe)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = changed
        for name in parents:
            node = node[name]
        node[last] = value
    return workflow.Workflow("recipe.yaml", changed, {}, locate)


def test_every_stage_has_a_rule_and_every_rule_of_the_workflow_a_manifest_label():
    text = "\n".join(path.read_text() for path in (REPO / "rules").glob("*.smk"))
    rules = set(re.findall(r"^(?:use )?rule (\w+)", text, re.MULTILINE))
    rules |= set(re.findall(r"^use rule \w+ as (\w+)", text, re.MULTILINE))
    assert set(workflow.RULES) == set(plan.STAGES)
    assert set(workflow.RULES.values()) <= rules
    scripted = {rule for rule in rules if rule != "fetch_models"}
    for rule in scripted:
        workflow.stage_of_rule(rule)  # raises for a rule the registry does not know
    assert workflow.stage_of_rule("ingest_source") == "ingest"
    assert workflow.stage_of_rule("train_preference_method") == "dpo"
    with pytest.raises(KeyError, match="no_such_rule"):
        workflow.stage_of_rule("no_such_rule")


def test_scripts_name_their_stage_as_the_registry_does():
    for script in (REPO / "scripts").glob("*.py"):
        text = script.read_text()
        if "recorded(" in text:
            assert "with recorded(snakemake, job_label(snakemake)):" in text, script.name


def test_job_labels_name_the_stage_and_what_it_is_for():
    def job(rule, **wildcards):
        return SimpleNamespace(rule=rule, wildcards=wildcards)

    assert workflow.job_label(job("curate_data", key="0" * 12, role="sft")) == "curate_sft"
    assert workflow.job_label(job("generate_answers", key="0" * 12, stage="dpo")) == "generate_dpo"
    assert workflow.job_label(job("ingest_source", key="0" * 12)) == "ingest"
    assert workflow.job_label(job("write_submission")) == "submit"


def test_the_key_pattern_matches_every_steps_key_and_folder(recipe):
    for step in plan.steps(recipe).values():
        assert re.fullmatch(workflow.KEY, step.key)
        assert workflow.KEYED_PATH.match(plan.folder_of(step) + "/x")["key"] == step.key


def test_an_unknown_key_is_an_error_naming_it(recipe):
    with pytest.raises(workflow.WorkflowError, match="under key 0123456789ab"):
        registry(recipe).step("0123456789ab")


def test_inputs_are_the_outputs_of_the_rules_that_make_the_consumed_steps(recipe):
    found = registry(recipe)
    steps = found.plans[""]
    sft, dpo = steps["sft"].key, steps["dpo"].key
    assert found.curated(sft) == f"curate_data.kept:key={steps['curate_sft'].key},role=sft"
    assert found.curated(dpo) == f"curate_data.kept:key={steps['curate_preference'].key},role=preference"
    assert found.consumed(dpo, "sft", "adapter") == [f"train_sft.adapter:key={sft}"]
    assert found.consumed(dpo, "cpt", "adapter") == []
    assert found.ingested(steps["curate_sft"].key) == [f"ingest_source.ingested:key={steps['ingest_sample_sft'].key}"]
    assert found.step_sources(steps["ingest_sample_sft"].key) == ["data/raw/sft.jsonl"]
    assert found.base_model_input("") == [f"pretrain_base.model:key={steps['base_model'].key}"]
    assert found.base_model_path("") == found.base_model_input("")[0]
    assert found.adapter_chain("", "dpo") == [f"train_preference_method.adapter:key={dpo}"]
    assert found.adapter_chain("", "base") == []
    kto = registry(recipe, **{"dpo.method": "kto"})
    unpaired = kto.plans[""]["unpair_preference"].key
    assert kto.curated(kto.plans[""]["dpo"].key) == f"unpair_preferences.kept:key={unpaired}"


def test_scores_and_submission_inputs_follow_the_recipe(recipe):
    found = registry(recipe)
    steps = found.plans[""]
    assert found.model_stages("") == ["base", "sft", "dpo"]
    assert found.generations("", ["sft"]) == [f"generate_answers.generations:key={steps['generate_sft'].key},stage=sft"]
    assert found.submission_inputs("")["scores"] == [] and found.submission_stages("") == ["dpo"]
    best = registry(recipe, **{"submission.stage": "best"})
    assert best.submission_stages("") == ["base", "sft", "dpo"]
    assert best.submission_inputs("")["scores"] == [f"evaluate_stages.scores:key={best.plans['']['evaluate'].key}"]
    assert set(found.preference_scores("")) == {"sft", "dpo"}
    assert registry(recipe, **{"dpo.enabled": False}).preference_scores("") == {}
    assert workflow.scored_by(recipe) == "references data/references.jsonl"
    assert workflow.scored_by(registry(recipe, **{"tasks.references": None}).recipe) is None
    assert found.submitted() == ("dpo", "submission.stage is dpo")
    off = registry(recipe, **{"dpo.enabled": False})
    assert off.submitted() == ("sft", "submission.stage is dpo, but dpo.enabled is false: SFT's answers")


def test_run_files_name_the_recipes_own_artifacts(recipe):
    found = registry(recipe)
    files = found.run_files({"submission": "submission.jsonl", "scores": "results/eval.json", "replicates": "r.json"})
    assert files["submission"] == "submission.jsonl" and files["scores"] == "results/eval.json"
    assert files["submitted"] == f"write_submission.submission:key={found.plans['']['submit'].key}"
    assert set(files["generations"]) == {"base", "sft", "dpo"} and set(files["cards"]) == {"sft", "preference"}
    assert set(files["adapters"]) == {"sft", "dpo"} and files["replicates"] is None
    assert files["scored"] == found.scored_files()


def test_a_fetched_base_is_waited_for_as_its_snapshot_record(recipe):
    found = registry(recipe, **{"base_model.path": "llm-jp/llm-jp-3-13b"})
    fetch = found.plans[""]["fetch_base"].key
    assert found.base_model_input("") == [f"fetch_model.record:key={fetch}"]
    assert found.base_model_path("") == f"fetch_model.model:key={fetch}"
    assert found.fetch_targets() == [f"fetch_model.record:key={fetch}"]
    assert found.fetch_recipe_key(fetch) == "base_model"
    jobs = [("train_sft", found.plans[""]["sft"].key), ("generate_answers", found.plans[""]["generate_sft"].key)]
    assert list(found.training_bases(jobs)) == [f"train_sft {found.plans['']['sft'].key}"]


def test_publishing_needs_a_repository_and_a_trained_stage(recipe):
    with pytest.raises(workflow.WorkflowError, match="publish.model_repo is null"):
        registry(recipe).publish_repo("model")
    assert registry(recipe, **{"publish.dataset_repo": "me/data"}).publish_repo("dataset") == "me/data"
    with pytest.raises(workflow.WorkflowError, match="dpo.enabled is false"):
        registry(recipe, **{"dpo.enabled": False}).published_model("dpo")


def test_a_hub_dataset_source_has_no_files_to_wait_for(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    sources = [{"path": "org/name", "format": "hf"}, {"path": str(tmp_path / "a.jsonl"), "format": "jsonl"}]
    assert workflow.source_paths(sources) == [str(tmp_path / "a.jsonl")]


def test_loading_validates_the_sweep_once_and_plans_every_variant(monkeypatch):
    import tunesmith.config.recipe as recipe_module

    monkeypatch.chdir(REPO)
    validated = []
    schema_problems = recipe_module._schema_problems
    monkeypatch.setattr(recipe_module, "_schema_problems", lambda *a: validated.append(1) or schema_problems(*a))
    found = workflow.load({"recipe": "recipes/sweep.yaml"}, [], REPO, locate)
    assert len(found.variants) == 4 and len(validated) == 1 + 4
    assert set(found.plans) == {"", *found.variants}
    for name, steps in found.plans.items():
        assert all(found.variant(step.key) in (name, "") or steps[step_name] is step
                   for step_name, step in steps.items())
    assert found.variant(None, "x") == "x"
    with pytest.raises(workflow.RecipeError, match="--configfile"):
        workflow.load({}, ["evil.yaml"], REPO, locate)


def test_the_recipe_and_its_variants_load_together(monkeypatch):
    monkeypatch.chdir(REPO)
    recipe, sweep = load_recipe_and_variants("recipes/sweep.yaml")
    assert recipe["sweep"]["matrix"] and all(variant["sweep"] == {"matrix": {}} for variant in sweep.values())


def test_the_summary_and_a_model_card_wait_only_for_what_the_run_makes(recipe):
    current = {"submission": "submission.jsonl", "scores": "results/eval.json", "replicates": "r.json"}
    found = registry(recipe)
    assert found.summary_inputs(current)["scores"] == ["results/eval.json"]
    assert found.summary_inputs(current)["replicates"] == []
    unscored = registry(recipe, **{"tasks.references": None}, repeats=2)
    assert unscored.summary_inputs(current)["scores"] == []
    assert unscored.summary_inputs(current)["replicates"] == ["r.json"]
    card = found.model_card_inputs("export", "sft", current)
    assert card["sources"] == ["export_model.model:stage=sft"] and card["scores"] == ["results/eval.json"]
    assert set(card) == {"sources", "sft", "preference", "scores", "record"}
    assert found.model_card_inputs("adapter", "dpo", current)["sources"] == found.adapter_chain("", "dpo")
