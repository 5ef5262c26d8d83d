"""The stage table says exactly which recipe keys each stage reads: changing a key changes the keys of
the stages that read it and of everything downstream of them, and of nothing else."""

import copy
from types import SimpleNamespace

import pytest

from conftest import REPO
from recipe_keys import generic, leaf_keys
from stage_keys import alternatives, downstream_of as downstream, get as _get, put as _put
from tunesmith.config import plan
from tunesmith.config.recipe import RecipeError, load_recipe, validate_recipe
from tunesmith.data.curate import curate_memory_limit

SHAPES = {
    "default": {},
    "continued pretraining, DPO continuing SFT": {"continued_pretraining": {"enabled": True},
                                                  "dpo": {"start": "continue_sft"}},
    "chat template, sampling, packing": {"template": {"kind": "chat"}, "generate": {"do_sample": True},
                                         "sft": {"packing": True}},
    "DeepSpeed on two processes, vLLM": {"distributed": {"processes": 2, "strategy": "deepspeed"},
                                         "generate": {"backend": "vllm"}},
    "a local judge with reference grades": {"judge": {"backend": "transformers", "local": {"path": "judge-model"},
                                                      "reference_grades": "grades.jsonl"}},
    "an endpoint judge": {"judge": {"backend": "openai", "openai": {"model": "gpt-4o"}}},
    "SimPO on two nodes, tracked in MLflow and W&B": {"dpo": {"method": "simpo"}, "distributed": {"nodes": 2},
                                                       "tracking": {"report_to": ["mlflow", "wandb"]}},
    "ORPO, untracked": {"dpo": {"method": "orpo"}, "tracking": {"report_to": []}},
    "KTO on two processes": {"dpo": {"method": "kto"}, "distributed": {"processes": 2}},
    "on-policy pairs, graded by the judge": {"pairs": {"enabled": True, "grader": {"kind": "judge"}},
                                             "judge": {"backend": "openai", "openai": {"model": "gpt-4o"}}},
    "on-policy pairs from a prompts file": {"pairs": {"enabled": True, "prompts": "data/tasks.jsonl"}},
    "no DPO, no near-dup, no decontamination": {"dpo": {"enabled": False},
                                                "curate": {"near_dedup": {"enabled": False}, "decontaminate": False}},
}


def shaped(name: str, base: str = "default.yaml") -> dict:
    recipe = load_recipe(REPO / "recipes" / base)
    for section, values in SHAPES[name].items():
        for key, value in values.items():
            if isinstance(value, dict):
                recipe[section][key].update(value)
            else:
                recipe[section][key] = value
    return validate_recipe(recipe)


def leaves(recipe):
    return sorted(leaf_keys(recipe, [key for key in recipe if key != "sweep"]))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_changed_key_changes_exactly_the_stages_that_read_it_and_their_downstream(shape):
    recipe = shaped(shape)
    before = plan.steps(recipe)
    readers = {name: leaf_keys(recipe, step.reads) for name, step in before.items()}
    tried = 0
    for dotted in leaves(recipe):
        for value in alternatives(dotted, _get(recipe, dotted)):
            changed_recipe = copy.deepcopy(recipe)
            _put(changed_recipe, dotted, value)
            try:
                validate_recipe(changed_recipe)
            except RecipeError:
                continue
            after = plan.steps(changed_recipe)
            common = before.keys() & after.keys()
            changed = {name for name in common if before[name].key != after[name].key}
            # A switch that adds or removes a stage (continued_pretraining.enabled) changes what its
            # consumers consume: they change as if they read it.
            restructured = {name for name in common if set(before[name].upstream) != set(after[name].upstream)}
            direct = {name for name, keys in readers.items() if dotted in keys} | restructured
            expected = downstream(before, direct) & common
            assert changed == expected, (dotted, value, sorted(changed ^ expected))
            tried += 1
    assert tried > 60


def test_every_schema_key_is_read_by_some_stage_of_some_recipe_shape():
    read = set()
    for shape in SHAPES:
        for base in ("default.yaml", "llm-jp-3-13b-qlora.yaml"):
            try:
                recipe = shaped(shape, base)
            except RecipeError:
                continue  # e.g. continued pretraining without a pretrain source
            read |= {generic(key) for step in plan.steps(recipe).values()
                     for key in leaf_keys(recipe, step.reads + step.unkeyed)}
    declared = {generic(key) for key in leaves(shaped("default"))}
    # Switches that decide which stages exist (repeats: the seed replicates, rules/common.smk), and the
    # opt-in push rules' own section (rules/publish.smk).
    unused = {key for key in declared - read
              if not key.startswith(("dpo.enabled", "continued_pretraining.enabled", "repeats", "publish.", "pairs.enabled"))}
    assert not unused, f"no stage reads {sorted(unused)}"


def test_each_preference_method_reads_its_own_settings_only():
    reads = {method: leaf_keys(recipe, plan.steps(recipe)["dpo"].reads) for method, recipe in (
        ("dpo", shaped("default")), ("simpo", shaped("SimPO on two nodes, tracked in MLflow and W&B")),
        ("orpo", shaped("ORPO, untracked")), ("kto", shaped("KTO on two processes")))}
    own = {"dpo": {"dpo.loss_type"}, "simpo": {"dpo.simpo_gamma", "dpo.cpo_alpha"}, "orpo": set(),
           "kto": {"dpo.desirable_weight", "dpo.undesirable_weight"}}
    everyone = set().union(*own.values())
    for method, keys in reads.items():
        assert "dpo.method" in keys and "dpo.beta" in keys
        assert keys & everyone == own[method], method


def test_kto_trains_on_the_unpaired_answers_curation_makes_of_the_pairs():
    kto = plan.steps(shaped("KTO on two processes"))
    assert kto["unpair_preference"].upstream == {"pairs": kto["curate_preference"].key}
    assert kto["unpair_preference"].reads == ("seed",)
    assert kto["dpo"].upstream["dataset"] == kto["unpair_preference"].key
    # Preference accuracy still compares the stages on the curated pairs.
    assert kto["pair_accuracy_dpo"].upstream["dataset"] == kto["curate_preference"].key
    for name in ("default", "ORPO, untracked", "no DPO, no near-dup, no decontamination"):
        assert "unpair_preference" not in plan.steps(shaped(name)), name


def test_several_nodes_read_the_strategy_even_with_one_process_each():
    recipe = shaped("default")
    recipe["distributed"]["nodes"] = 2
    assert {"distributed.nodes", "distributed.strategy"} <= set(plan.steps(recipe)["sft"].reads)
    assert "distributed.strategy" not in plan.steps(shaped("default"))["sft"].reads


def test_tracking_is_declared_for_the_training_stages_and_changes_no_key():
    """A training job reads where it reports (Stage.unkeyed; tunesmith.training.tracking.run_of picks those keys), but
    tracking cannot change the weights: switching backends or project reruns nothing."""
    tracked = shaped("SimPO on two nodes, tracked in MLflow and W&B")
    steps = plan.steps(tracked)
    for name in ("sft", "dpo"):
        assert set(steps[name].unkeyed) == {"tracking.report_to", "tracking.project", "tracking.mlflow",
                                            "tracking.wandb"}
    assert plan.steps(shaped("ORPO, untracked"))["sft"].unkeyed == ("tracking.report_to",)
    assert not [name for name, step in steps.items()
                if name not in ("cpt", "sft", "dpo") and set(step.unkeyed) - {"curate.memory_limit"}]
    untracked = copy.deepcopy(tracked)
    untracked["tracking"] = {"report_to": [], "project": "other"}
    after = plan.steps(validate_recipe(untracked))
    assert {name: step.key for name, step in after.items()} == {name: step.key for name, step in steps.items()}


def test_curation_memory_limit_is_declared_and_changes_no_key():
    """curate.memory_limit reaches the curation jobs (Stage.unkeyed, read from the config by
    tunesmith.data.curate.curate_memory_limit), but the rows are the same under any limit: it reruns nothing."""
    recipe = shaped("default")
    before = plan.steps(recipe)
    assert all(step.unkeyed == ("curate.memory_limit",) for name, step in before.items() if name.startswith("curate_"))
    recipe["curate"]["memory_limit"] = "1GB"
    job = SimpleNamespace(config=recipe, wildcards=SimpleNamespace(role="preference"))
    assert curate_memory_limit(job) == "1GB"
    assert {name: step.key for name, step in plan.steps(recipe).items()} == {name: step.key for name, step in before.items()}
