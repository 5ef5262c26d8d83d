import copy
import json

import pytest

from conftest import REPO
from tunesmith.config import plan
from tunesmith.config import recipe as recipe_module
from tunesmith.config.recipe import RecipeError, combinations, load_recipe, variants
from tunesmith.explain import differences, planned_jobs


@pytest.fixture
def recipe():
    return load_recipe(REPO / "recipes/default.yaml")


def keys(recipe):
    """The keys of the stored artifacts but the evaluation and submission (their own tests are below)."""
    return {name: step.key for name, step in plan.steps(recipe).items() if name not in ("evaluate", "submit")}


def test_the_submission_is_keyed_on_its_stages_answers_or_on_the_evaluation_for_best(recipe):
    before = plan.steps(recipe)
    assert before["submit"].upstream == {"generations": before["generate_dpo"].key}
    assert plan.folder_of(before["submit"]) == f"results/submissions/{before['submit'].key}"
    assert plan.folder_of(before["evaluate"]) == f"results/evaluated/{before['evaluate'].key}"
    # Another stage's answers do not touch the dpo submission; its own do.
    assert plan.steps(edited(recipe, "evaluate.stages", ["dpo"]))["submit"].key == before["submit"].key
    assert plan.steps(edited(recipe, "dpo.beta", 0.3))["submit"].key != before["submit"].key
    best = plan.steps(edited(recipe, "submission.stage", "best"))
    assert best["submit"].upstream == {"evaluation": best["evaluate"].key}
    assert {name for name in best if name.startswith("generate_")} == {"generate_base", "generate_sft", "generate_dpo"}


def test_the_evaluation_reads_its_own_keys_and_follows_what_it_scores(recipe):
    before = plan.steps(recipe)["evaluate"]
    assert set(before.upstream) == {"generate_base", "generate_sft", "generate_dpo", "pair_accuracy_sft", "pair_accuracy_dpo"}
    assert plan.steps(edited(recipe, "generate.max_new_tokens", 8))["evaluate"].key != before.key
    assert plan.steps(edited(recipe, "evaluate.stages", ["dpo"]))["evaluate"].key != before.key
    assert plan.steps(edited(recipe, "dpo.beta", 0.3))["evaluate"].settings == before.settings


def edited(recipe, dotted, value):
    changed = copy.deepcopy(recipe)
    recipe_module._set(changed, dotted, value)
    return changed


def changed_steps(recipe, dotted, value):
    before, after = keys(recipe), keys(edited(recipe, dotted, value))
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def test_keys_are_stable_and_independent_of_key_order(recipe):
    reordered = {name: recipe[name] for name in reversed(list(recipe))}
    reordered["dpo"] = dict(reversed(list(recipe["dpo"].items())))
    assert keys(recipe) == keys(reordered) == keys(copy.deepcopy(recipe))
    assert all(len(key) == 12 for key in keys(recipe).values())
    assert len(set(keys(recipe).values())) == len(keys(recipe)), "two stages share a key"


@pytest.mark.parametrize("dotted, value, expected", [
    ("dpo.beta", 0.3, {"dpo", "generate_dpo", "pair_accuracy_dpo"}),
    ("generate.max_new_tokens", 8, {"generate_base", "generate_sft", "generate_dpo"}),
    ("sft.learning_rate", 0.001, {"sft", "dpo", "generate_sft", "generate_dpo", "pair_accuracy_sft", "pair_accuracy_dpo"}),
    ("curate.dedup", False, {"curate_sft", "curate_preference", "sft", "dpo", "generate_sft", "generate_dpo",
                             "pair_accuracy_sft", "pair_accuracy_dpo"}),
    ("base_model.build.vocab_size", 2000, {"tokenizer", "base_model", "sft", "dpo", "generate_base",
                                           "generate_sft", "generate_dpo", "pair_accuracy_sft", "pair_accuracy_dpo"}),
    ("submission.stage", "sft", set()),
])
def test_a_setting_changes_the_keys_of_its_stage_and_downstream_only(recipe, dotted, value, expected):
    assert changed_steps(recipe, dotted, value) == expected


def test_continuing_the_sft_adapter_merges_only_the_dpo_adapter(recipe):
    assert plan.adapter_stages(recipe, "dpo") == ["sft", "dpo"]
    recipe["dpo"]["start"] = "continue_sft"
    assert plan.adapter_stages(recipe, "dpo") == ["dpo"]


def test_disabled_dpo_has_no_preference_or_dpo_stage_and_submits_sft(recipe):
    recipe["dpo"]["enabled"] = False
    assert set(plan.steps(recipe)) == {"tokenizer", "base_model", "ingest_sample_sft", "curate_sft", "sft",
                                       "generate_base", "generate_sft", "evaluate", "submit"}
    assert plan.submitted_stage(recipe) == "sft"


def test_a_hub_model_has_no_build_steps_and_keys_on_its_id(recipe):
    recipe["base_model"]["path"] = "llm-jp/llm-jp-3-13b"
    steps = plan.steps(recipe)
    assert "base_model" not in steps and "base_model" not in steps["sft"].upstream
    other = edited(recipe, "base_model.path", "llm-jp/llm-jp-3-1.8b")
    assert plan.steps(other)["sft"].key != steps["sft"].key
    assert plan.steps(other)["curate_sft"].key == steps["curate_sft"].key


def test_a_matrix_makes_every_combination_validated(recipe):
    recipe["sweep"]["matrix"] = {"dpo.beta": [0.1, 0.3], "generate.repetition_penalty": [1.0, 1.1, 1.2]}
    found = variants(recipe)
    assert len(found) == 6
    assert "dpo.beta=0.3,generate.repetition_penalty=1.1" in found
    variant = found["dpo.beta=0.3,generate.repetition_penalty=1.1"]
    assert variant["dpo"]["beta"] == 0.3 and variant["generate"]["repetition_penalty"] == 1.1
    assert variant["sweep"]["matrix"] == {} and recipe["dpo"]["beta"] == 0.1, "the recipe itself was changed"
    shared = {plan.steps(v)["sft"].key for v in found.values()}
    assert shared == {plan.steps(recipe)["sft"].key}, "variants that differ downstream must share SFT"
    assert len({plan.steps(v)["dpo"].key for v in found.values()}) == 2


def test_the_shipped_sweep_is_the_default_recipe_plus_a_matrix():
    """Its variants reuse a finished default run's curation, base model and SFT only while the two agree."""
    sweep = load_recipe(REPO / "recipes/sweep.yaml")
    assert sweep.pop("sweep")["matrix"]
    default = load_recipe(REPO / "recipes/default.yaml")
    default.pop("sweep", None)
    assert sweep == default


def test_no_matrix_is_no_sweep(recipe):
    assert variants(recipe) == {} and combinations(recipe) == {}


@pytest.mark.parametrize("matrix, message", [
    ({"dpo.betta": [0.2]}, "sweep variant dpo.betta=0.2:\n  sweep.matrix.dpo.betta: 'betta' is not a key of 'dpo'"),
    ({"dpo.beta": ["high"]}, "sweep variant dpo.beta=high is not a valid tunesmith recipe:\n  dpo.beta: must be number, got 'high'"),
    ({"dpo.lora.r.x": [1]}, "sweep.matrix.dpo.lora.r.x: 'dpo.lora.r' is not a recipe section"),
])
def test_a_bad_matrix_entry_names_the_variant_and_key(recipe, matrix, message):
    recipe["sweep"]["matrix"] = matrix
    with pytest.raises(RecipeError) as error:
        variants(recipe, origin="sweep.yaml")
    assert message in str(error.value)


def with_judge(recipe, **changes):
    judged = copy.deepcopy(recipe)
    judged["judge"].update(backend="openai", **changes)
    judged["judge"]["openai"].update(base_url="http://127.0.0.1:8000/v1", model="judge-model")
    return judged


def test_each_scored_stage_gets_a_judge_step_on_its_generations(recipe):
    assert not any(name.startswith("judge_") for name in plan.steps(recipe))
    steps = plan.steps(with_judge(recipe))
    assert [name for name in steps if name.startswith("judge_")] == ["judge_base", "judge_sft", "judge_dpo"]
    for stage in ("base", "sft", "dpo"):
        assert steps[f"judge_{stage}"].upstream == {"generations": steps[f"generate_{stage}"].key}
    assert "bootstrap_samples" not in steps["judge_dpo"].settings["judge"]


@pytest.mark.parametrize("dotted, value, expected", [
    ("judge.openai.model", "another-judge", {"judge_base", "judge_sft", "judge_dpo"}),
    ("judge.bootstrap_samples", 500, set()),  # evaluation only: regrades nothing
    ("dpo.beta", 0.3, {"dpo", "generate_dpo", "judge_dpo", "pair_accuracy_dpo"}),
])
def test_judge_keys_follow_their_settings_and_answers(recipe, dotted, value, expected):
    assert changed_steps(with_judge(recipe), dotted, value) == expected


def test_reference_grades_add_a_reference_judge_step(recipe):
    steps = plan.steps(with_judge(recipe, reference_grades="gpt4.csv"))
    assert steps["judge_reference"].upstream == {} and "gpt4.csv" in steps["judge_reference"].files


def test_only_the_submitted_stage_is_scored_unless_more_are_asked_for(recipe):
    recipe["evaluate"]["stages"] = []
    assert plan.model_stages(recipe) == ["dpo"]
    assert [name for name in plan.steps(recipe) if name.startswith("generate_")] == ["generate_dpo"]
    recipe["evaluate"]["stages"] = ["base"]
    assert plan.model_stages(recipe) == ["base", "dpo"]
    recipe["dpo"]["enabled"] = False
    recipe["evaluate"]["stages"] = ["sft", "dpo"]
    assert plan.model_stages(recipe) == ["sft"]


def test_a_sweep_can_rank_by_a_judge_without_references(recipe):
    judged = with_judge(recipe)
    judged["sweep"]["matrix"] = {"dpo.beta": [0.2, 0.3]}
    judged["tasks"]["references"] = None
    assert len(variants(judged)) == 2


def test_a_sweep_needs_references_to_rank_by(recipe):
    recipe["sweep"]["matrix"] = {"dpo.beta": [0.2]}
    recipe["tasks"]["references"] = None
    with pytest.raises(RecipeError, match=r"needs a judge \(judge.backend\) or tasks.references"):
        variants(recipe)


DRY_RUN = """
Building DAG of jobs...
[Fri Nov 27 20:47:01 2026]
rule train_sft:
    input: results/base_model/f4fbe9475a31, results/curated/66c7edf2f3ff/sft.parquet
    output: results/sft/80db4e8f1a72/adapter
    log: logs/train_sft/80db4e8f1a72.log
    reason: Missing output files: results/sft/80db4e8f1a72/adapter
    wildcards: key=80db4e8f1a72
[Fri Nov 27 20:47:01 2026]
rule write_variant_submission:
    input: results/generations/48a4d4548f92/dpo.jsonl, data/tasks.jsonl
    output: results/sweep/dpo.beta=0.1,generate.repetition_penalty=1.0/submission.jsonl
    reason: Code has changed since last execution
"""


def test_dry_run_jobs_are_parsed_with_commas_inside_paths():
    jobs = planned_jobs(DRY_RUN)
    assert [job.rule for job in jobs] == ["train_sft", "write_variant_submission"]
    assert jobs[0].inputs == ["results/base_model/f4fbe9475a31", "results/curated/66c7edf2f3ff/sft.parquet"]
    assert jobs[1].outputs == ["results/sweep/dpo.beta=0.1,generate.repetition_penalty=1.0/submission.jsonl"]
    assert jobs[1].reason == "Code has changed since last execution"


def test_differences_name_recipe_keys():
    old = {"template": {"prompt": "A"}, "seed": 1, "curate": {"dedup": True}, "base_model": {"build": {"vocab_size": 3000}}}
    new = {"template": {"prompt": "B"}, "seed": 1, "curate": {"dedup": False}, "base_model": {"build": {"vocab_size": 2000}}}
    assert differences(old, new) == [
        'base_model.build.vocab_size: 3000 → 2000', "curate.dedup: true → false", 'template.prompt: "A" → "B"']
    assert differences(old, copy.deepcopy(old)) == []


def test_continued_pretraining_sits_under_sft_and_dpo_and_ignores_the_template(recipe):
    recipe["continued_pretraining"]["enabled"] = True
    steps = plan.steps(recipe)
    assert steps["sft"].upstream["cpt"] == steps["dpo"].upstream["cpt"] == steps["cpt"].key
    assert plan.adapter_stages(recipe, "sft") == ["cpt", "sft"]
    assert plan.adapter_stages(recipe, "dpo") == ["cpt", "sft", "dpo"]
    assert changed_steps(recipe, "template.prompt", "### Q\n{input}\n### A\n") >= {"sft", "dpo"}
    assert "cpt" not in changed_steps(recipe, "template.prompt", "### Q\n{input}\n### A\n")
    assert changed_steps(recipe, "continued_pretraining.learning_rate", 0.01) == {
        "cpt", "sft", "dpo", "generate_sft", "generate_dpo", "pair_accuracy_sft", "pair_accuracy_dpo"}


def test_the_process_count_keys_training_but_not_curation(recipe):
    assert changed_steps(recipe, "distributed.processes", 2) == {"sft", "dpo", "generate_sft", "generate_dpo",
                                                                 "pair_accuracy_sft", "pair_accuracy_dpo"}


def test_editing_one_source_reingests_that_source_only(recipe):
    recipe["sources"].append({**recipe["sources"][0], "id": "more_sft", "path": "data/raw/more.jsonl"})
    before = keys(recipe)
    recipe["sources"][-1]["path"] = "data/raw/other.jsonl"
    after = keys(recipe)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"ingest_more_sft", "curate_sft", "sft", "dpo", "generate_sft", "generate_dpo",
                       "pair_accuracy_sft", "pair_accuracy_dpo"}


def test_curation_settings_of_a_source_do_not_reingest_it(recipe):
    recipe["sources"][0]["weight"] = 0.5
    assert "ingest_sample_sft" not in changed_steps(recipe, "sources", recipe["sources"])
    before = keys(load_recipe(REPO / "recipes/default.yaml"))
    assert before["ingest_sample_sft"] == keys(recipe)["ingest_sample_sft"]
    assert before["curate_sft"] != keys(recipe)["curate_sft"]


def test_unkeyed_reasons_become_files_and_code(tmp_path):
    from tunesmith.explain import Job, causes

    job = Job("ingest_source", ["data/raw/sft.jsonl"], ["results/ingested/668af66c95dc.parquet"],
              "Updated input files: data/raw/sft.jsonl; Code has changed since last execution")
    assert causes(job, {}, tmp_path, set()) == ["changed file data/raw/sft.jsonl",
                                                "the code of rule ingest_source changed"]
    later = Job("write_submission", ["results/generations/48a4d4548f92/dpo.jsonl"], ["submission.jsonl"],
                "Input files updated by another job: results/generations/48a4d4548f92/dpo.jsonl")
    assert causes(later, {}, tmp_path, set()) == ["consumes rebuilt results/generations/48a4d4548f92/dpo.jsonl"]


def test_a_keyed_job_never_built_says_so(tmp_path, recipe):
    from tunesmith.explain import Job, causes

    step = plan.steps(recipe)["sft"]
    job = Job("train_sft", [], [f"results/sft/{step.key}/adapter"], f"Missing output files: results/sft/{step.key}/adapter")
    assert causes(job, {step.key: step}, tmp_path, set()) == ["never built with any settings"]


def test_explain_shows_only_the_keys_that_really_differ(tmp_path, recipe):
    """The earlier build's manifest records the sections its rule got as params: curation gets `lengths`
    instead of `sft`, the task file as an input. Those are no change; a key the earlier build lacked is said so."""
    from tunesmith.explain import Job, causes

    step = plan.steps(recipe)["curate_sft"]
    assert {"sft", "tasks", "curate", "seed"} <= set(step.settings)
    earlier = "results/curated/000000000000/sft.parquet"
    (tmp_path / earlier).parent.mkdir(parents=True)
    (tmp_path / earlier).write_text("rows")
    settings = {name: copy.deepcopy(step.settings[name]) for name in ("sources", "curate", "seed")}
    settings["curate"]["near_dedup"]["threshold"] = 0.8
    del settings["curate"]["min_kept_share"]
    (tmp_path / f"{earlier}.manifest.json").write_text(json.dumps(
        {"stage": "curate", "outputs": {earlier: "0"}, "settings": {**settings, "lengths": {"max_length": 1}},
         "finished": "2026-01-01T00:00:00+00:00"}))
    output = f"results/curated/{step.key}/sft.parquet"
    job = Job("curate_data", [], [output], f"Missing output files: {output}")
    share = json.dumps(step.settings["curate"]["min_kept_share"])
    assert causes(job, {step.key: step}, tmp_path, set()) == [
        f"curate.min_kept_share: {share} (the earlier build had no such key)",
        f"curate.near_dedup.threshold: 0.8 → {step.settings['curate']['near_dedup']['threshold']}",
        f"(replaces {earlier} for this recipe; that one stays cached)"]


def test_differences_of_lists_name_the_item():
    assert differences({"sources": [{"weight": 1}, {"weight": 2}]}, {"sources": [{"weight": 1}, {"weight": 3}]}) == [
        "sources[1].weight: 2 → 3"]
