"""Every shipped recipe validates; broken recipes are rejected with the key path named."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from tunesmith.config.recipe import RecipeError, load_recipe, load_schema, validate_recipe, variants
from tunesmith.jobs.atomic import section_hash

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
    for variant in variants(recipe, origin=str(path)).values():
        assert variant["sources"] == recipe["sources"]
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# snakemake "), "a recipe opens with the command that runs it"
    if path.name != "default.yaml":
        assert f"--config recipe=recipes/{path.name}" in first_line


def test_both_required_recipes_are_shipped():
    assert {path.name for path in RECIPES} >= {"default.yaml", "llm-jp-3-13b-qlora.yaml"}


def test_competition_recipe_matches_the_competition_setup():
    recipe = load_recipe(REPO / "recipes" / "llm-jp-3-13b-qlora.yaml")
    assert recipe["base_model"] | {"build": None} == {
        "path": "llm-jp/llm-jp-3-13b", "revision": None, "dtype": "bfloat16", "quantization": "nf4", "compute_dtype": "bfloat16",
        "trust_remote_code": False, "build": None,
    }
    sft = recipe["sft"]
    assert sft["lora"] == {
        "r": 32, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    assert (sft["max_length"], sft["per_device_train_batch_size"], sft["gradient_accumulation_steps"]) == (512, 2, 4)
    assert (sft["num_train_epochs"], sft["learning_rate"], sft["warmup_steps"]) == (1, 2e-4, 10)
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
    ({"sft": {"betta": 1}}, "sft", "unknown key(s) 'betta'"),
    ({"sft": {"lora": {"r": 0}}}, "sft.lora.r", "must be at least 1, got 0"),
    ({"dpo": {"beta": "high"}}, "dpo.beta", "must be number, got 'high'"),
    ({"generate": {"batch_size": 0}}, "generate.batch_size", "must be at least 1, got 0"),
    ({"base_model": {"quantization": "nf3"}}, "base_model.quantization", "must be one of ['none', 'nf4', 'int8'], got 'nf3'"),
    ({"template": {"kind": "plain", "prompt": "no placeholder"}}, "template.prompt", "{input}"),
    ({"tasks": {"path": 7}}, "tasks.path", "must be string, got 7"),
    ({"recipe_name": "x"}, "(top level)", "unknown key(s) 'recipe_name'"),
    ({"base_model": {"build": {"hidden_size": 130, "num_attention_heads": 4}}}, "base_model.build.num_attention_heads", "divide"),
    ({"distributed": {"processes": 2, "strategy": "fsdp"}, "base_model": {"quantization": "nf4"}},
     "distributed.strategy", "cannot shard a quantised base"),
    ({"distributed": {"processes": 0}}, "distributed.processes", "must be at least 1, got 0"),
    ({"generate": {"backend": "tgi"}}, "generate.backend", "must be one of"),
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
    with pytest.raises(RecipeError, match=r"sources\[3\]\.role: must be one of \['sft', 'preference', 'pretrain'\], got 'rlhf'"):
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
    code = "\n".join(path.read_text(encoding="utf-8") for pattern in ("src/tunesmith/**/*.py", "rules/*.smk")
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
    assert "generate.batch_size: must be at least 1, got -1" in capsys.readouterr().err


# ---- reading: a recipe is data, read within bounds --------------------------------------------------

def write(tmp_path, text: str | bytes, name="recipe.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_a_duplicate_key_is_refused_with_both_lines(tmp_path):
    path = write(tmp_path, "seed: 1\ndpo:\n  beta: 0.1\nsft: {}\ndpo:\n  beta: 0.5\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml: line 5: key 'dpo' is given twice \(first on line 2\)"):
        load_recipe(path)


def test_non_string_keys_and_invalid_utf8_are_refused_by_line(tmp_path):
    with pytest.raises(RecipeError, match="line 2: key 1 is not a string"):
        load_recipe(write(tmp_path, "seed: 1\n1: x\n"))
    with pytest.raises(RecipeError, match=r"recipe.yaml:2: not UTF-8 \(byte 8"):
        load_recipe(write(tmp_path, b"seed: 1\n\xff\xfe: x\n"))


def test_a_yte_recipe_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = write(tmp_path, f"__use_yte__: true\nseed: ?__import__('pathlib').Path({str(marker)!r}).touch() or 42\n")
    with pytest.raises(RecipeError, match="__use_yte__: recipes are data"):
        load_recipe(path)
    assert not marker.exists()


@pytest.mark.parametrize("text", [
    # the "billion laughs": nine levels of nine aliases
    "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
        for previous, name in zip("abcdefgh", "bcdefghi")),
    "a: &a [1]\nb: " + "[" * 200 + "1" + "]" * 200 + "\n",
], ids=["alias bomb", "deep nesting"])
def test_alias_bombs_and_deep_nesting_are_refused_quickly(tmp_path, text):
    import time

    started = time.perf_counter()
    with pytest.raises(RecipeError, match="expands to more than|nested more than"):
        load_recipe(write(tmp_path, text))
    assert time.perf_counter() - started < 5


def test_anchors_are_copied_apart_so_a_sweep_changes_one_key(tmp_path):
    recipe = (REPO / "recipes" / "default.yaml").read_text(encoding="utf-8")
    recipe = recipe.replace("sft:\n  lora:\n", "sft:\n  lora: &lora\n").replace(
        "dpo:\n  enabled: true\n  beta: 0.1\n  lora:\n    r: 8\n    lora_alpha: 16\n    lora_dropout: 0.0\n",
        "dpo:\n  enabled: true\n  beta: 0.1\n  lora: *lora\n")
    assert "*lora" in recipe
    loaded = load_recipe(write(tmp_path, recipe + "sweep:\n  matrix:\n    sft.lora.r: [4, 8]\n"))
    assert loaded["sft"]["lora"] is not loaded["dpo"]["lora"]
    for variant in variants(loaded).values():
        assert variant["dpo"]["lora"]["r"] == 16, "the sweep over sft.lora.r changed dpo.lora.r"


@pytest.mark.parametrize("change, problem", [
    ({"seed": 42.0}, "seed: must be integer, got 42.0"),
    ({"seed": True}, "seed: must be integer, got True"),
    ({"seed": 2**32}, "seed: must be at most 4294967295"),
    ({"seed": -1}, "seed: must be at least 0"),
    ({"curate": {"japanese": {"min_share": float("nan")}}}, "curate.japanese.min_share: must be number, got nan"),
    ({"sft": {"learning_rate": float("inf")}}, "sft.learning_rate: must be number, got inf"),
    ({"sft": {"max_steps": 2**70}}, "sft.max_steps: must be integer"),
    ({"curate": {"near_dedup": {"ngram": 5.0}}}, "curate.near_dedup.ngram: must be integer, got 5.0"),
])
def test_numbers_are_strict_and_finite(change, problem):
    with pytest.raises(RecipeError) as caught:
        validate_recipe(minimal_recipe(**change))
    assert problem in str(caught.value)


@pytest.mark.parametrize("field, value, problem", [
    ("id", "abc\n", "does not match"),
    ("path", "", "must not be empty"),
    ("path", ".", "names no corpus"),
    ("path", "/", "names no corpus"),
])
def test_a_source_entry_that_names_nothing_is_refused(field, value, problem):
    recipe = minimal_recipe()
    recipe["sources"][0][field] = value
    with pytest.raises(RecipeError, match=rf"sources\[0\]\.{field}: (.* )?{problem}"):
        validate_recipe(recipe)


def test_a_folder_holding_the_working_directory_is_refused_when_files_are_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = minimal_recipe()
    recipe["sources"][0]["path"] = str(tmp_path.parent)
    validate_recipe(copy.deepcopy(recipe))  # the files are not looked at unless asked
    with pytest.raises(RecipeError, match=r"sources\[0\]\.path: .* contains the whole working directory"):
        validate_recipe(recipe, check_files=True)


def test_a_configured_judge_is_checked_with_the_files_even_when_the_task_file_is_broken(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(REPO / "recipes/default.yaml")
    recipe["judge"].update(backend="openai")
    recipe["judge"]["openai"]["base_url"] = "http://127.0.0.1:8000/v1"
    recipe["tasks"]["path"] = str(tmp_path / "no-tasks.jsonl")
    with pytest.raises(RecipeError) as caught:
        validate_recipe(recipe, check_files=True)
    assert "tasks.path: " in str(caught.value) and "judge.openai.model: judge.backend openai needs it" in str(caught.value)


def test_cli_validate_no_files_checks_a_recipe_away_from_its_data(tmp_path, monkeypatch, capsys):
    """`--no-files` once still read the task file (and failed where the data is not); without it, the
    files are checked, the task file among them."""
    from tunesmith.cli import main

    monkeypatch.chdir(tmp_path)
    default = str(REPO / "recipes" / "default.yaml")
    assert main(["validate", default, "--no-files"]) == 0
    assert capsys.readouterr().out == f"{default}: valid\n"
    assert main(["validate", default]) == 1
    assert "tasks.path: data/tasks.jsonl: file not found" in capsys.readouterr().err


def test_an_error_shows_a_bounded_excerpt_of_the_value():
    with pytest.raises(RecipeError) as caught:
        validate_recipe(minimal_recipe(seed="x" * 1_000_000))
    assert len(str(caught.value)) < 400 and "seed: must be integer, got 'xxx" in str(caught.value)


def test_a_sweep_bomb_is_refused_before_it_is_expanded(tmp_path):
    import time

    matrix = {f"generate.{key}": [1, 2, 3] for key in ("batch_size", "max_new_tokens")}
    matrix |= {"sft.lora.r": list(range(1, 11)), "dpo.lora.r": list(range(1, 11))}
    started = time.perf_counter()
    with pytest.raises(RecipeError, match="sweep.matrix: 900 variants; a sweep builds at most 64"):
        validate_recipe(minimal_recipe(tasks={"references": "refs.jsonl"}, sweep={"matrix": matrix}))
    assert time.perf_counter() - started < 2


def test_validate_expands_the_sweep_like_the_workflow():
    recipe = minimal_recipe(tasks={"references": "refs.jsonl"}, sweep={"matrix": {"dpo.beta": [0.1, -1]}})
    with pytest.raises(RecipeError, match=r"sweep variant dpo.beta=-1 .*\n  dpo.beta: must be above 0, got -1"):
        validate_recipe(recipe)


def test_validate_show_piped_to_head_ends_quietly(tmp_path):
    import subprocess
    import sys

    command = (f"{sys.executable} -m tunesmith.cli validate --show --no-files {REPO / 'recipes' / 'default.yaml'}"
               " | head -n 1")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.stdout == "seed: 42\n" and result.stderr == "", result.stderr


# ---- issue 19: hostile and careless recipes ----------------------------------------------------------

DEFAULT_TEXT = (REPO / "recipes" / "default.yaml").read_text(encoding="utf-8")


def run_command(command: str, recipe: Path, work: Path):
    """`tunesmith validate RECIPE` or `snakemake -n` with it, in `work` (which has the shipped data)."""
    import subprocess
    import sys

    binary = str(Path(sys.executable).parent / command)
    arguments = ([binary, "validate", str(recipe)] if command == "tunesmith" else
                 [binary, "-s", str(REPO / "Snakefile"), "-n", "--cores", "1", "--config", f"recipe={recipe}"])
    if not (work / "data").exists():
        (work / "data").symlink_to(REPO / "data")
    result = subprocess.run(arguments, cwd=work, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("command", ["tunesmith", "snakemake"])
@pytest.mark.parametrize("path, said", [
    ('"data/raw/sft\\0.jsonl"', "sources[0].path: holds a NUL character (U+0000)"),
    ("data/" + "x" * 6000 + ".jsonl", "sources[0].path: a path of 6011 bytes with a name of 6006; file systems take"),
    ("data/" + "/".join(["y" * 200] * 25) + ".jsonl", "sources[0].path: a path of 5035 bytes with a name of 206"),
])
def test_nul_and_overlong_paths_get_a_clean_error_naming_the_key(tmp_path, command, path, said):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(DEFAULT_TEXT.replace("path: data/raw/sft.jsonl", f"path: {path}"), encoding="utf-8")
    code, output = run_command(command, recipe, tmp_path)
    assert code != 0 and said in output, output[-2000:]
    assert "Traceback" not in output


def test_a_sweep_over_the_prompt_plans_with_safe_variant_names(tmp_path):
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(DEFAULT_TEXT + '\nsweep:\n  matrix:\n    template.prompt: ["### 指示\\n{input}\\n### 回答\\n", '
                      '"Q: {input} / {output}?\\nA: "]\n', encoding="utf-8")
    names = list(variants(load_recipe(recipe), origin="sweep"))
    assert len(names) == 2 and all(re.fullmatch(r"template\.prompt=[A-Za-z0-9._=,+-]+-[0-9a-f]{8}", n) for n in names)
    code, output = run_command("snakemake", recipe, tmp_path)
    assert code == 0, output[-3000:]
    assert all(f"results/sweep/{name}/submission.jsonl" in output for name in names)


def test_variant_names_are_unchanged_where_already_safe_and_bounded_and_distinct_otherwise():
    from tunesmith.config.recipe import variant_name

    assert variant_name({"dpo.beta": 0.2, "generate.max_new_tokens": 24}) == "dpo.beta=0.2,generate.max_new_tokens=24"
    long = [variant_name({"template.prompt": "{input}" + "長" * 500 + tail}) for tail in "ab"]
    assert long[0] != long[1] and all(len(name) <= 100 and "{" not in name for name in long)


def test_a_key_in_api_key_env_is_never_printed(tmp_path):
    for key in ("sk-proj-AbC123dEf456GhI789jKl012mNo345", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"):
        recipe = load_recipe(REPO / "recipes" / "default.yaml")
        recipe["judge"].update(backend="openai")
        recipe["judge"]["openai"].update(base_url="http://127.0.0.1:8000/v1", model="m", api_key_env=key)
        with pytest.raises(RecipeError) as caught:
            validate_recipe(recipe)
        message = str(caught.value)
        assert "judge.openai.api_key_env: looks like a key, not the name of an environment variable" in message
        assert key not in message and key[:12] not in message


@pytest.mark.parametrize("key, url", [("judge.openai.base_url", "https://user:s3cr3t-pass@api.example.com/v1"),
                                      ("judge.openai.base_url", "http://tok3n-abc@127.0.0.1:8000/v1"),
                                      ("tracking.mlflow.tracking_uri", "https://bob:hunter2-pw@mlflow.example.com")])
def test_credentials_in_a_url_are_refused_without_printing_them(key, url):
    recipe = load_recipe(REPO / "recipes" / "default.yaml")
    recipe["judge"].update(backend="openai")
    recipe["judge"]["openai"].update(base_url="http://127.0.0.1:8000/v1", model="m")
    section, name = key.rsplit(".", 1)
    node = recipe
    for part in section.split("."):
        node = node[part]
    node[name] = url
    with pytest.raises(RecipeError) as caught:
        validate_recipe(recipe)
    assert f"{key}: the URL holds credentials" in str(caught.value)
    assert "s3cr3t" not in str(caught.value) and "tok3n" not in str(caught.value) and "hunter2" not in str(caught.value)


@pytest.mark.parametrize("change, problem", [
    (lambda r: r["curate"].update(min_prompt_chars=500, max_prompt_chars=100),
     "curate.min_prompt_chars: 500 is above curate.max_prompt_chars (100)"),
    (lambda r: r["curate"].update(min_response_chars=3000),
     "curate.min_response_chars: 3000 is above curate.max_response_chars (2048)"),
    (lambda r: r["curate"].update(tokens={"min_prompt": 10, "max_prompt": 5}),
     "curate.tokens.min_prompt: 10 is above curate.tokens.max_prompt (5)"),
    (lambda r: r["generate"].update(guards={"min_chars": 3000}),
     "generate.guards.min_chars: 3000 is above generate.guards.max_chars (2000)"),
    (lambda r: r["judge"].update(backend="openai", openai={"base_url": "ftp://127.0.0.1/v1", "model": "m"}),
     "judge.openai.base_url: 'ftp://127.0.0.1/v1' is not an http(s) URL with a host"),
    (lambda r: r["judge"].update(backend="openai", openai={"base_url": "127.0.0.1:8000/v1", "model": "m"}),
     "judge.openai.base_url: '127.0.0.1:8000/v1' is not an http(s) URL with a host"),
])
def test_settings_that_cannot_work_are_refused_at_validation(change, problem):
    recipe = yaml.safe_load(DEFAULT_TEXT)
    recipe.setdefault("generate", {})
    validate_recipe(recipe)
    change(recipe)
    with pytest.raises(RecipeError) as caught:
        validate_recipe(recipe)
    assert problem in str(caught.value)
    assert validate_recipe(yaml.safe_load(DEFAULT_TEXT))  # the shipped values pass


def test_the_workflow_gets_the_variants_validation_made_without_validating_them_again(monkeypatch):
    """Loading a sweep validates every variant once and hands them over with the recipe (a 64-variant sweep
    was validated twice per `snakemake -n`); `variants` alone validates again, from the recipe it is given."""
    import tunesmith.config.recipe as recipe_module
    from tunesmith.config.recipe import load_recipe_and_variants

    validated = []
    schema_problems = recipe_module._schema_problems
    monkeypatch.setattr(recipe_module, "_schema_problems", lambda *a: validated.append(1) or schema_problems(*a))
    recipe, first = load_recipe_and_variants(REPO / "recipes/sweep.yaml")
    assert len(first) == 4 and len(validated) == 1 + 4
    again = variants(recipe)
    assert again == first and again is not first and len(validated) == 1 + 4 + 4
    changed = copy.deepcopy(recipe)
    changed["seed"] += 1
    assert all(variant["seed"] == changed["seed"] for variant in variants(changed).values())


# ---- overrides: `--config set=KEY=VALUE[,KEY=VALUE...]`, `tunesmith validate --set` --------------------

def test_overrides_are_parsed_as_yaml_values_split_at_each_key():
    from tunesmith.config.recipe import parse_overrides

    assert parse_overrides("sft.num_train_epochs=3,dpo.beta=0.2") == {"sft.num_train_epochs": 3, "dpo.beta": 0.2}
    # a comma inside a value stays there; a value is YAML like the file's
    assert parse_overrides(["sft.lora.target_modules=[q_proj, v_proj],generate.do_sample=true", "seed="]) == {
        "sft.lora.target_modules": ["q_proj", "v_proj"], "generate.do_sample": True, "seed": None}
    for bad, problem in [("sft.num_train_epochs", "is not KEY=VALUE"), ("sft.num_train_epochs=1,sft.num_train_epochs=2", "given twice"),
                         ("sft.num_train_epochs=[1", "not valid YAML"), ({"sft.num_train_epochs": "3"}, "takes KEY=VALUE")]:
        with pytest.raises(RecipeError, match=problem):
            parse_overrides(bad)


def test_workflow_recipe_applies_set_and_validates_it_like_the_file(tmp_path):
    from tunesmith.config import plan
    from tunesmith.config.recipe import workflow_recipe

    default = REPO / "recipes" / "default.yaml"
    _, plain = workflow_recipe({"recipe": str(default)}, [], REPO)
    _, changed = workflow_recipe({"recipe": str(default), "set": "sft.num_train_epochs=3,dpo.beta=0.2"}, [], REPO)
    assert (changed["sft"]["num_train_epochs"], changed["dpo"]["beta"]) == (3, 0.2)
    # the stages' settings (what each job's manifest records) and keys follow the override
    assert plan.steps(changed)["sft"].settings["sft"]["num_train_epochs"] == 3
    assert plan.steps(changed)["sft"].key != plan.steps(plain)["sft"].key
    with pytest.raises(RecipeError, match=r"sft\.num_train_epochs: must be above 0, got 0"):
        workflow_recipe({"recipe": str(default), "set": "sft.num_train_epochs=0"}, [], REPO)
    with pytest.raises(RecipeError, match=r"sft: unknown key\(s\) 'learning_rte' \(did you mean 'learning_rate'\?\)"):
        workflow_recipe({"recipe": str(default), "set": "sft.learning_rte=1e-4"}, [], REPO)
    # a key Snakemake lets through (no dot) that is not ours points to the supported form
    with pytest.raises(RecipeError, match=r"--config set=seed=VALUE"):
        workflow_recipe({"recipe": str(default), "seed": 3}, [], REPO)


def test_unknown_key_suggests_the_closest_known_one():
    with pytest.raises(RecipeError, match=r"'learning_rte' \(did you mean 'learning_rate'\?\)"):
        validate_recipe(minimal_recipe(sft={"learning_rte": 1e-4}))
    with pytest.raises(RecipeError) as caught:
        validate_recipe(minimal_recipe(sft={"zzzzzz": 1}))
    assert "did you mean" not in str(caught.value)


def test_cli_validate_set_and_show_without_null_column_mappings(tmp_path, capsys):
    from tunesmith.cli import main

    default = str(REPO / "recipes" / "default.yaml")
    assert main(["validate", default, "--no-files", "--show", "--set", "sft.num_train_epochs=3", "--set", "dpo.beta=0.2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["sft"]["num_train_epochs"], shown["dpo"]["beta"]) == (3, 0.2)
    assert all(source["columns"] == {} for source in shown["sources"])
    assert shown["sources"][0]["max_rows"] is None  # a null that is a setting stays
    mapped = tmp_path / "mapped.yaml"
    mapped.write_text(Path(default).read_text(encoding="utf-8").replace(
        "role: sft\n", "role: sft\n    columns: {instruction: question}\n", 1))
    assert main(["validate", str(mapped), "--no-files", "--show"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["sources"][0]["columns"] == {"instruction": "question"}
    assert main(["validate", default, "--no-files", "--set", "sft.learning_rte=1"]) == 1
    assert "did you mean 'learning_rate'" in capsys.readouterr().err


def test_a_configfile_is_refused_saying_its_python_has_already_run():
    from tunesmith.config.recipe import workflow_recipe

    with pytest.raises(RecipeError, match=r"--config recipe=PATH, not --configfile.*already run any YTE Python"):
        workflow_recipe({}, ["evil.yaml"], REPO)


def test_sweep_variants_naming_the_recipes_files_read_them_once(monkeypatch):
    """A no-op start of a 64-variant sweep read every source and task file 64 times more (issue 22's
    dag bench); a variant that names other files is still checked, and refused naming itself."""
    from tunesmith.config import recipe as recipe_module

    monkeypatch.chdir(REPO)
    calls = []
    real = recipe_module.file_problems
    monkeypatch.setattr(recipe_module, "file_problems", lambda recipe: calls.append(1) or real(recipe))
    recipe = load_recipe(REPO / "recipes/default.yaml")
    recipe["sweep"] = {"matrix": {"generate.max_new_tokens": [8, 16], "dpo.beta": [0.1, 0.2]}}
    assert len(validate_recipe(copy.deepcopy(recipe), check_files=True) and calls) == 1
    recipe["sweep"]["matrix"]["tasks.path"] = ["data/tasks.jsonl", "data/no-such-tasks.jsonl"]
    calls.clear()
    with pytest.raises(RecipeError, match=r"sweep variant generate.max_new_tokens=8,dpo.beta=0.1,"
                                          r"tasks.path=data_no-such-tasks.jsonl .*\n  tasks.path: data/no-such-tasks.jsonl: file not found"):
        validate_recipe(recipe, check_files=True)
    assert len(calls) == 2


def test_a_variant_checks_and_fills_the_sections_its_overrides_change():
    """Variants are checked against the schema only in the sections their overrides change (the rest
    are the validated recipe's): a changed section still gets its defaults and its unknown keys refused."""
    recipe = load_recipe(REPO / "recipes/default.yaml")
    recipe["sweep"] = {"matrix": {"dpo.lora": [{"r": 4}], "generate.max_new_tokens": [8, 16]}}
    found = variants(recipe)
    assert [variant["dpo"]["lora"]["lora_alpha"] for variant in found.values()] == [32, 32]
    assert [variant["generate"]["max_new_tokens"] for variant in found.values()] == [8, 16]
    recipe["sweep"]["matrix"]["dpo.lora"] = [{"r": 4, "alphx": 3}]
    with pytest.raises(RecipeError, match=r"sweep variant .*\n  dpo.lora: unknown key\(s\) 'alphx'"):
        variants(recipe)
    recipe["sweep"]["matrix"] = {"generate.max_new_tokens": [8, -1]}
    with pytest.raises(RecipeError, match=r"sweep variant generate.max_new_tokens=-1 .*\n  generate.max_new_tokens: "):
        variants(recipe)
