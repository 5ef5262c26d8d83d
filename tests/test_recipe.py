"""Every shipped recipe validates; broken recipes are rejected with the key path named."""

from pathlib import Path

import pytest
import yaml

from tunesmith import plan
from tunesmith.recipe import RecipeError, load_recipe, load_schema, section_hash, validate_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def minimal_recipe(**overrides):
    recipe = {
        "sources": [
            {"id": "sft", "path": "sft.jsonl", "role": "sft"},
            {"id": "pref", "path": "pref.jsonl", "role": "preference"},
            {"id": "text", "path": "text.txt", "format": "text", "role": "pretrain"},
        ]
    }
    recipe.update(overrides)
    return recipe


@pytest.mark.parametrize("path", RECIPES, ids=[path.name for path in RECIPES])
def test_shipped_recipe_validates_and_opens_with_its_command(path):
    recipe = load_recipe(path)
    assert recipe["sources"], "a shipped recipe must name its sources"
    for variant in plan.variants(recipe, origin=str(path)).values():
        assert variant["sources"] == recipe["sources"]
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# snakemake "), "a recipe opens with the command that runs it"
    if path.name != "default.yaml":
        assert f"--configfile recipes/{path.name}" in first_line


def test_both_required_recipes_are_shipped():
    assert {path.name for path in RECIPES} >= {"default.yaml", "llm-jp-3-13b-qlora.yaml"}


def test_competition_recipe_matches_the_competition_setup():
    recipe = load_recipe(REPO / "recipes" / "llm-jp-3-13b-qlora.yaml")
    assert recipe["base_model"] | {"build": None} == {
        "path": "llm-jp/llm-jp-3-13b", "dtype": "bfloat16", "quantization": "nf4", "compute_dtype": "bfloat16",
        "trust_remote_code": False, "build": None,
    }
    sft = recipe["sft"]
    assert sft["lora"] == {
        "r": 32, "alpha": 32, "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    assert (sft["max_length"], sft["batch_size"], sft["gradient_accumulation_steps"]) == (512, 2, 4)
    assert (sft["epochs"], sft["learning_rate"], sft["warmup_steps"]) == (1, 2e-4, 10)
    assert recipe["seed"] == 3407
    assert recipe["generate"]["do_sample"] is False
    assert (recipe["generate"]["repetition_penalty"], recipe["generate"]["max_new_tokens"]) == (1.2, 512)


def test_defaults_are_filled_from_the_schema():
    recipe = validate_recipe(minimal_recipe())
    assert recipe["sft"]["lora"]["r"] == 16
    assert recipe["sources"][0]["format"] == "jsonl"
    assert recipe["template"]["prompt"] == "### 指示\n{input}\n### 回答\n"
    assert recipe["dpo"]["learning_rate"] < recipe["sft"]["learning_rate"]


def _walk(schema, path="recipe"):
    """Yield (key path, property schema) for every property in the schema."""
    for name, prop in schema.get("properties", {}).items():
        yield f"{path}.{name}", prop
        yield from _walk(prop, f"{path}.{name}")
    if "items" in schema and isinstance(schema["items"], dict):
        yield from _walk(schema["items"], f"{path}[]")


def test_every_schema_key_has_description_and_default_and_objects_are_closed():
    schema = load_schema()
    for key, prop in _walk(schema):
        assert prop.get("description"), f"{key} has no description"
        assert "default" in prop, f"{key} has no default"
        if prop.get("type") == "object":
            # Closed, or a map whose names are checked (sweep.matrix: dotted keys, each variant validated).
            closed = prop.get("additionalProperties") is False or "propertyNames" in prop
            assert closed, f"{key} accepts unknown keys"
    assert schema["additionalProperties"] is False


BROKEN = [
    ({"sft": {"betta": 1}}, "sft", "'betta' was unexpected"),
    ({"sft": {"lora": {"r": 0}}}, "sft.lora.r", "minimum"),
    ({"dpo": {"beta": "high"}}, "dpo.beta", "not of type 'number'"),
    ({"generate": {"batch_size": 0}}, "generate.batch_size", "minimum"),
    ({"base_model": {"quantization": "nf3"}}, "base_model.quantization", "is not one of"),
    ({"template": {"kind": "plain", "prompt": "no placeholder"}}, "template.prompt", "{input}"),
    ({"tasks": {"path": 7}}, "tasks.path", "not of type 'string'"),
    ({"recipe_name": "x"}, "(top level)", "'recipe_name' was unexpected"),
    ({"base_model": {"build": {"hidden_size": 130, "num_attention_heads": 4}}}, "base_model.build.num_attention_heads", "divide"),
    ({"distributed": {"processes": 2, "strategy": "fsdp"}, "base_model": {"quantization": "nf4"}},
     "distributed.strategy", "cannot shard a quantised base"),
    ({"distributed": {"processes": 0}}, "distributed.processes", "less than the minimum of 1"),
    ({"generate": {"backend": "tgi"}}, "generate.backend", "is not one of"),
]


@pytest.mark.parametrize("change,key,problem", BROKEN, ids=[key for _, key, _ in BROKEN])
def test_broken_recipe_names_key_path_and_problem(change, key, problem):
    with pytest.raises(RecipeError) as caught:
        validate_recipe(minimal_recipe(**change), origin="broken.yaml")
    message = str(caught.value)
    assert message.startswith("broken.yaml is not a valid tunesmith recipe")
    assert f"  {key}" in message and problem in message


def test_broken_source_entry_is_named_by_index():
    recipe = minimal_recipe()
    recipe["sources"].append({"id": "x", "path": "x.jsonl", "role": "rlhf"})
    with pytest.raises(RecipeError, match=r"sources\[3\]\.role: 'rlhf' is not one of"):
        validate_recipe(recipe)


def test_missing_roles_and_duplicate_ids_are_reported():
    recipe = {"sources": [{"id": "a", "path": "a.jsonl"}, {"id": "a", "path": "b.jsonl"}]}
    with pytest.raises(RecipeError) as caught:
        validate_recipe(recipe)
    assert "id 'a' is used twice" in str(caught.value)
    assert "no source has role 'preference'" in str(caught.value)
    assert "needs a source with role 'pretrain'" in str(caught.value)


def test_continued_pretraining_needs_a_pretrain_source():
    recipe = minimal_recipe(continued_pretraining={"enabled": True}, base_model={"path": "some/model"})
    recipe["sources"] = [source for source in recipe["sources"] if source["role"] != "pretrain"]
    with pytest.raises(RecipeError, match=r"continued_pretraining.enabled: .*no source has role 'pretrain'"):
        validate_recipe(recipe)
    recipe["continued_pretraining"]["enabled"] = False
    validate_recipe(recipe)


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(path)


def test_section_hash_ignores_key_order_and_sees_values():
    assert section_hash({"a": 1, "b": 2}) == section_hash({"b": 2, "a": 1})
    assert section_hash({"a": 1}) != section_hash({"a": 2})


def test_every_schema_key_is_read_by_the_code():
    """A recipe key no code reads is a silent no-op; every leaf key must appear in src/ or rules/."""
    code = "\n".join(path.read_text(encoding="utf-8") for pattern in ("src/tunesmith/*.py", "rules/*.smk")
                     for path in REPO.glob(pattern))
    for key, prop in _walk(load_schema()):
        leaf = key.rsplit(".", 1)[-1].removesuffix("[]")
        assert f'"{leaf}"' in code or f"'{leaf}'" in code or f"{leaf}=" in code, f"{key} is read nowhere"


def test_cli_validate_reports_key_paths_and_shows_defaults(tmp_path, capsys):
    from tunesmith.cli import main

    assert main(["validate", str(REPO / "recipes" / "default.yaml"), "--show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["sft"]["gradient_accumulation_steps"] == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  batch_size: -1\n")
    assert main(["validate", str(bad)]) == 1
    assert "generate.batch_size: -1 is less than the minimum of 1" in capsys.readouterr().err
