"""Training noise measured (`repeats`): seed replicates share their data and differ in what trains, and
each stage's spread over the seeds is reported (tunesmith.evaluation.replicates)."""

import json
import re
import statistics

import pytest
import yaml

from conftest import README_COMMAND, REPO, copied_run, snakemake
from quick_recipe import quick_recipe
from tunesmith.config import plan
from tunesmith.config.recipe import RecipeError, replicate_seeds, replicates, validate_recipe
from tunesmith.evaluation.replicates import summarise_replicates

DATA_STEPS = ("ingest_sample_sft", "ingest_sample_preference", "tokenizer", "curate_sft", "curate_preference")
TRAINED_STEPS = ("base_model", "sft", "dpo", "generate_base", "generate_sft", "generate_dpo", "pair_accuracy_sft",
                 "pair_accuracy_dpo")


def quick(tmp_path, **changes) -> dict:
    path = quick_recipe(REPO / "recipes/default.yaml", tmp_path / "quick.yaml")
    recipe = yaml.safe_load(open(path, encoding="utf-8"))
    recipe.update(changes)
    return validate_recipe(recipe, origin="quick.yaml")


def test_seed_replicates_of_the_quick_recipe_share_curation_and_differ_in_training(tmp_path):
    recipe = quick(tmp_path, repeats=3)
    assert replicate_seeds(recipe) == [42, 43, 44]
    found = replicates(recipe)
    assert list(found) == ["seed=43", "seed=44"]
    own = plan.steps(recipe)
    keys = {name: plan.steps(replicate, data_of=recipe) for name, replicate in found.items()}
    for name, replicate_plan in keys.items():
        assert set(replicate_plan) == set(own), name
        for step in DATA_STEPS:
            assert replicate_plan[step].key == own[step].key, (name, step)
        for step in TRAINED_STEPS:
            assert replicate_plan[step].key != own[step].key, (name, step)
        # Training differs in the seed alone: the same settings otherwise, on the same curated rows.
        settings = {**replicate_plan["sft"].settings, "seed": own["sft"].settings["seed"]}
        assert settings == own["sft"].settings
        assert replicate_plan["sft"].upstream["dataset"] == own["sft"].upstream["dataset"]
        assert replicate_plan["sft"].settings["seed"] == int(name.removeprefix("seed="))
    assert keys["seed=43"]["sft"].key != keys["seed=44"]["sft"].key
    # A replicate's own plan (without its recipe's data) would re-curate: curation reads the seed.
    assert plan.steps(found["seed=43"])["curate_sft"].key != own["curate_sft"].key


def test_one_run_has_no_replicates(tmp_path):
    assert replicates(quick(tmp_path)) == {}


@pytest.mark.parametrize("changes,message", [
    ({"repeats": 2, "tasks": {"path": "data/tasks.jsonl", "references": None}}, "needs a judge"),
    ({"repeats": 3, "seed": 2**32 - 2}, "repeats: seeds 4294967294 to 4294967296"),
    ({"repeats": 0}, "repeats"),
    ({"repeats": 11}, "repeats"),
])
def test_repeats_that_cannot_be_built_are_refused(tmp_path, changes, message):
    with pytest.raises(RecipeError, match=message):
        quick(tmp_path, **changes)


def evaluation(path, stages: dict, preference: dict | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stages": stages, "preference": preference}), encoding="utf-8")
    return path


def test_each_stages_mean_and_spread_over_the_seeds_is_reported(tmp_path):
    exact = {"sft": [0.65, 0.57, 0.61], "dpo": [0.67, 0.60, 0.70]}
    accuracy = [0.93, 0.96, 0.89]
    files = {seed: evaluation(tmp_path / f"{seed}/eval.json",
                              {stage: {"exact_match": values[index], "chrf": 40.0 + index, "n": 100}
                               for stage, values in exact.items()},
                              {"dpo": {"accuracy": accuracy[index], "pairs": 27}})
             for index, seed in enumerate((42, 43, 44))}
    result = summarise_replicates(files, tmp_path / "replicates.json", tmp_path / "replicates.md")
    written = json.loads((tmp_path / "replicates.json").read_text(encoding="utf-8"))
    assert written["seeds"] == [42, 43, 44] and written == json.loads(json.dumps(result))
    assert written["evaluations"] == {str(seed): str(path) for seed, path in files.items()}
    for stage, values in exact.items():
        entry = written["stages"][stage]["exact_match"]
        assert entry["per_seed"] == {"42": values[0], "43": values[1], "44": values[2]}
        assert entry["mean"] == pytest.approx(sum(values) / 3)
        assert entry["sd"] == pytest.approx(statistics.stdev(values))
        assert (entry["min"], entry["max"]) == (min(values), max(values))
    assert written["stages"]["dpo"]["preference_accuracy"]["sd"] == pytest.approx(0.0351188, abs=1e-6)
    assert "preference_accuracy" not in written["stages"]["sft"]
    table = (tmp_path / "replicates.md").read_text(encoding="utf-8")
    sft_row = next(line for line in table.splitlines() if line.startswith("| sft | exact match"))
    # mean 61.0%, sd 4.0 points, range 57.0%-65.0%, then each seed's figure
    assert sft_row == "| sft | exact match | 61.0% | 4.0 pt | 57.0%–65.0% | 65.0% | 57.0% | 61.0% |"


def test_a_spread_needs_two_seeds(tmp_path):
    with pytest.raises(ValueError, match="at least two seeds"):
        summarise_replicates({42: evaluation(tmp_path / "eval.json", {})}, tmp_path / "r.json", tmp_path / "r.md")


@pytest.mark.e2e
def test_the_quick_recipe_under_two_seeds_reports_each_stages_spread(quick_run, tmp_path):
    """The workflow end to end, after a run of the recipe alone (quick_run): one curation, two trainings, and
    results/replicates.json with both seeds."""
    recipe = quick(tmp_path, repeats=2)
    path = tmp_path / "repeated.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    work = copied_run(quick_run[0], tmp_path / "run")
    result = snakemake("--directory", work, "--config", f"recipe={path}", *README_COMMAND, timeout=3600)
    assert result.returncode == 0, result.stderr[-5000:]
    assert len(list(work.glob("results/curated/*/sft.parquet"))) == 1
    assert len(list(work.glob("results/sft/*/adapter"))) == 2
    written = json.loads((work / "results/replicates.json").read_text(encoding="utf-8"))
    assert written["seeds"] == [42, 43]
    # Each seed's evaluation under its key (the recipe's own is what results/eval.json copies).
    assert set(written["evaluations"]) == {"42", "43"}
    assert all(re.fullmatch(r"results/evaluated/[0-9a-f]{12}/eval.json", path) for path in written["evaluations"].values())
    assert (work / written["evaluations"]["42"]).read_bytes() == (work / "results/eval.json").read_bytes()
    for stage in ("base", "sft", "dpo"):
        entry = written["stages"][stage]["exact_match"]
        assert set(entry["per_seed"]) == {"42", "43"} and entry["sd"] is not None
    own = json.loads((work / "results/eval.json").read_text(encoding="utf-8"))["stages"]
    assert written["stages"]["sft"]["chrf"]["per_seed"]["42"] == own["sft"]["chrf"]
    assert "| sft | exact match |" in (work / "results/replicates.md").read_text(encoding="utf-8")
    # `tunesmith compare` finds both seeds from the recipe and from a result key (results/replicates.json).
    from tunesmith.evaluation.compare import compare

    key = written["evaluations"]["42"].split("/")[2]
    text, facts, _ = compare(path, key, root=work)
    assert facts["seeds"]["a"] == facts["seeds"]["b"] == [42, 43] and "Seeds: 2 vs 2" in text
    for stage in ("sft", "dpo"):
        exact = facts["seeds"]["scores"][stage]["overall"]["exact match"]
        assert exact["a"] == pytest.approx(written["stages"][stage]["exact_match"]["mean"])
        assert exact["difference"] == 0 and exact["verdict"] == "within noise"
        assert exact["seeds"]["a"]["per_seed"] == pytest.approx(written["stages"][stage]["exact_match"]["per_seed"])
