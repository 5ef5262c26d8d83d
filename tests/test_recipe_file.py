"""Recipe files read as YAML 1.2: numbers read as a person reads them, YAML 1.1's surprises named."""

import math

import pytest

from tunesmith.config.recipe import RecipeError, load_recipe
from tunesmith.config.recipe_file import read_recipe


def read(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return read_recipe(path)


@pytest.mark.parametrize("text, value", [
    ("3e-3", 0.003), ("1E+2", 100.0), ("-2.5e-1", -0.25), (".5", 0.5), ("1.", 1.0), ("+7", 7), ("0777", 777),
    ("0o17", 15), ("0x1F", 31), ("1:30", "1:30"), ("yes", "yes"), ("on", "on"), ("Off", "Off"), ("1_000", "1_000"),
    ("0b101", "0b101"), ("2024-01-01", "2024-01-01"), ("true", True), ("FALSE", False), ("~", None), ("null", None),
    ("'3e-3'", "3e-3"), ("'1:30'", "1:30"),
])
def test_plain_scalars_take_yaml_12_core_types(tmp_path, text, value):
    found = read(tmp_path, f"value: {text}\n")["value"]
    assert found == value and type(found) is type(value)


def test_infinities_and_nan_are_read_as_yaml_12_spells_them(tmp_path):
    found = read(tmp_path, "a: .inf\nb: -.Inf\nc: .NaN\n")
    assert found["a"] == math.inf and found["b"] == -math.inf and math.isnan(found["c"])


def test_a_learning_rate_in_e_notation_is_a_number(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("sources: [{id: s, path: s.jsonl, role: sft}, {id: t, path: t.txt, format: text, role: pretrain}]\n"
                    "dpo: {enabled: false}\nsft:\n  learning_rate: 3e-3\n")
    assert load_recipe(path)["sft"]["learning_rate"] == 0.003


@pytest.mark.parametrize("key, text, said", [
    ("sft.num_train_epochs", "1:30", "must be number, got '1:30' (recipes are read as YAML 1.2, where it is text; "
                           "YAML 1.1 would read 1:30 as 90)"),
    ("dpo.enabled", "yes", "must be boolean, got 'yes' (recipes are read as YAML 1.2, where it is text; "
                           "YAML 1.1 would read yes as True)"),
    ("seed", "1_000", "YAML 1.1 would read 1_000 as 1000"),
])
def test_yaml_11_only_forms_are_refused_with_what_11_would_have_read(tmp_path, key, text, said):
    section, _, name = key.rpartition(".")
    body = f"{section}:\n  {name}: {text}\n" if section else f"{name}: {text}\n"
    path = tmp_path / "recipe.yaml"
    path.write_text("sources: [{id: s, path: s.jsonl, role: sft}, {id: t, path: t.txt, format: text, role: pretrain}]\n"
                    + "dpo: {enabled: false}\n" * (section != "dpo") + body)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert f"  {key}: " in str(caught.value) and said in str(caught.value)


def test_duplicate_keys_aliases_and_merge_keys_still_behave(tmp_path):
    with pytest.raises(RecipeError, match="given twice"):
        read(tmp_path, "a: 1\na: 2\n")
    assert read(tmp_path, "base: &b {x: 1e-3}\nother:\n  <<: *b\n  y: 2\n")["other"] == {"x": 0.001, "y": 2}
