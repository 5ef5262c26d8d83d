"""Fuzzed recipes: every verdict is a clean accept or an error naming a key path, never a traceback or a
hang, every mutation the schema forbids is refused, and `tunesmith validate` and the workflow agree.
The mutations and their expected verdicts are in tests/recipe_fuzz.py."""

import copy
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

import recipe_fuzz
from conftest import REPO
from tunesmith.config.recipe import load_schema, validate_recipe

pytestmark = pytest.mark.usefixtures("cached_hub_models")  # offline, the 13B recipe's hub model must be cached

@pytest.fixture(scope="module")
def work():
    return recipe_fuzz.scratch_directory()


@pytest.fixture(scope="module")
def labelled():
    found = recipe_fuzz.mutations("default.yaml") + recipe_fuzz.mutations("llm-jp-3-13b-qlora.yaml")
    # sweep.yaml is default.yaml with a matrix: its own cases are the document-level ones
    return found + [m for m in recipe_fuzz.mutations("sweep.yaml") if m.key.startswith("sweep") or not m.key]


def test_every_labelled_mutation_gets_the_verdict_the_schema_promises(labelled, work, monkeypatch):
    monkeypatch.chdir(work)
    wrong = []
    for index, mutation in enumerate(labelled):
        path = work / f"labelled-{index}.yaml"
        path.write_bytes(mutation.text)
        found = recipe_fuzz.verdict(path)
        expected = {"reject": {"rejected"}, "accept": {"accepted"}, "either": {"accepted", "rejected"}}
        if found not in expected[mutation.expect]:
            wrong.append(f"{found}: {mutation.name} at {mutation.key or '(document)'}")
    assert len(labelled) > 3000
    assert not wrong, f"{len(wrong)} wrong verdicts:\n" + "\n".join(wrong[:40])
    assert not (work / "yte-marker").exists(), "a YTE expression ran"


RECIPE_TEXTS = {name: (REPO / "recipes" / name).read_text(encoding="utf-8") for name in recipe_fuzz.RECIPES}
LEAVES = {name: list(recipe_fuzz.leaves(validate_recipe(yaml.safe_load(text)), load_schema()))
          for name, text in RECIPE_TEXTS.items()}
KEY_LINE = re.compile(r"^  (\(top level\)|[a-z_]+(\[\d+\])?(\.[a-z_0-9]+(\[\d+\])?)*): ", re.MULTILINE)

values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_at_any_key_gets_a_clean_verdict(data, work, monkeypatch):
    monkeypatch.chdir(work)
    name = data.draw(st.sampled_from(sorted(RECIPE_TEXTS)))
    path, _ = data.draw(st.sampled_from(LEAVES[name]))
    value = data.draw(values)
    document = recipe_fuzz._put(copy.deepcopy(yaml.safe_load(RECIPE_TEXTS[name])), path, value)
    file = work / "hypothesis.yaml"
    file.write_bytes(recipe_fuzz._dump(document))
    found = recipe_fuzz.verdict(file)
    assert found in ("accepted", "rejected"), (found, recipe_fuzz.dotted(path), value)
    if found == "rejected":
        from tunesmith.config.recipe import RecipeError, load_recipe

        with pytest.raises(RecipeError) as caught:
            load_recipe(file, check_files=True)
        assert KEY_LINE.search(str(caught.value)) or str(caught.value).startswith(str(file)), str(caught.value)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validate_and_the_workflow_agree(data, work, monkeypatch, labelled):
    monkeypatch.chdir(work)
    mutation = data.draw(st.sampled_from(labelled))
    file = work / "agree.yaml"
    file.write_bytes(mutation.text)
    assert recipe_fuzz.workflow_verdict(file, work) == recipe_fuzz.verdict(file), mutation.name


SWEEPS = [mutation for mutation in recipe_fuzz.mutations("default.yaml") if mutation.name == "sweep over a string key"]


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=st.sampled_from(SWEEPS))
def test_a_sweep_over_any_string_key_gets_the_same_verdict_from_validate_and_the_workflow(mutation, work, monkeypatch):
    """Issue 19: variant names were built from the values, and a value holding {input} validated but broke the
    workflow's wildcards. Each sweep pairs a key's value with one holding braces, a slash and a newline."""
    monkeypatch.chdir(work)
    file = work / "sweep-agree.yaml"
    file.write_bytes(mutation.text)
    assert recipe_fuzz.workflow_verdict(file, work) == recipe_fuzz.verdict(file), mutation.key
