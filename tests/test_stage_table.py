"""The stage table says exactly which recipe keys each stage reads: changing a key changes the keys of
the stages that read it and of everything downstream of them, and of nothing else."""

import copy

import pytest

from conftest import REPO
from stage_keys import alternatives, downstream_of as downstream, get as _get, put as _put
from tunesmith import plan
from tunesmith.recipe import RecipeError, load_recipe, validate_recipe

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
    return sorted(plan.leaf_keys(recipe, [key for key in recipe if key != "sweep"]))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_changed_key_changes_exactly_the_stages_that_read_it_and_their_downstream(shape):
    recipe = shaped(shape)
    before = plan.steps(recipe)
    readers = {name: plan.leaf_keys(recipe, step.reads) for name, step in before.items()}
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
            read |= {plan.generic(key) for step in plan.steps(recipe).values()
                     for key in plan.leaf_keys(recipe, step.reads)}
    declared = {plan.generic(key) for key in leaves(shaped("default"))}
    # Switches that decide which stages exist, and the opt-in push rules' own section (rules/publish.smk).
    unused = {key for key in declared - read
              if not key.startswith(("dpo.enabled", "continued_pretraining.enabled", "publish."))}
    assert not unused, f"no stage reads {sorted(unused)}"
