"""Recipes: YAML files validated against `schemas/recipe.schema.yaml`, which holds every default.

Validation fills the defaults in place (Snakemake's `config` is the same dict) and turns schema
errors into one message that names each offending key path, so a typo never reaches a job.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from functools import cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


class RecipeError(ValueError):
    """A recipe that does not match the schema; the message lists every key path at fault."""


def _with_defaults(validator_class):
    """A validator that fills `default` values of missing properties before validating them."""
    check_properties = validator_class.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": fill_then_check})


@cache
def load_schema(name: str = "recipe.schema.yaml") -> dict:
    with open(SCHEMA_DIR / name, encoding="utf-8") as handle:
        return yaml.safe_load(handle) if name.endswith((".yaml", ".yml")) else json.load(handle)


def _key_path(error) -> str:
    parts = [str(part) if not isinstance(part, int) else f"[{part}]" for part in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def validate_recipe(recipe: dict, origin: str = "recipe", check_files: bool = False) -> dict:
    """Fill defaults into `recipe` in place and check it; raise RecipeError naming the key paths.
    `check_files` also checks what the sources name on disk (`tunesmith.sources.check_inputs`: each
    path names files, the first record has the mapped columns), relative to the working directory."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping, got {type(recipe).__name__}")
    validator = _with_defaults(Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(recipe), key=lambda error: list(map(str, error.absolute_path)))
    if errors:
        lines = [f"  {_key_path(error)}: {error.message}" for error in errors]
        raise RecipeError(f"{origin} is not a valid tunesmith recipe:\n" + "\n".join(lines))
    _check_consistency(recipe, origin)
    if check_files:
        from tunesmith.sources import check_inputs  # sources imports this module

        problems = check_inputs(recipe)
        if problems:
            raise RecipeError(f"{origin} is not a valid tunesmith recipe:\n" + "\n".join(f"  {p}" for p in problems))
    return recipe


def _check_consistency(recipe: dict, origin: str) -> None:
    """Rules a JSON Schema cannot say simply."""
    problems = []
    ids = [source["id"] for source in recipe["sources"]]
    for duplicate in sorted({source_id for source_id in ids if ids.count(source_id) > 1}):
        problems.append(f"  sources: id '{duplicate}' is used twice")
    roles = {source["role"] for source in recipe["sources"]}
    if "sft" not in roles:
        problems.append("  sources: no source has role 'sft'; SFT needs one")
    if recipe["dpo"]["enabled"] and "preference" not in roles:
        problems.append("  sources: dpo.enabled is true but no source has role 'preference'")
    if recipe["base_model"]["path"] is None and "pretrain" not in roles:
        problems.append("  base_model.path: null builds the tiny model, which needs a source with role 'pretrain'")
    if recipe["continued_pretraining"]["enabled"] and "pretrain" not in roles:
        problems.append("  continued_pretraining.enabled: true trains on the pretrain sources' text, but no source "
                        "has role 'pretrain'")
    distributed = recipe["distributed"]
    if distributed["strategy"] == "fsdp" and recipe["base_model"]["quantization"] != "none":
        problems.append("  distributed.strategy: fsdp cannot shard a quantised base (base_model.quantization); "
                        "use ddp")
    for index, source in enumerate(recipe["sources"]):
        if (source["format"] == "text") != (source["role"] == "pretrain"):
            problems.append(f"  sources[{index}].format: '{source['format']}' does not fit role '{source['role']}'")
    build = recipe["base_model"]["build"]
    if build["hidden_size"] % build["num_attention_heads"]:
        problems.append("  base_model.build.num_attention_heads: must divide base_model.build.hidden_size")
    if recipe["template"]["kind"] == "plain" and "{input}" not in recipe["template"]["prompt"]:
        problems.append("  template.prompt: a plain template needs an {input} placeholder")
    from tunesmith.sources import check_settings  # sources imports this module

    problems += [f"  {problem}" for problem in check_settings(recipe["curate"])]
    if problems:
        raise RecipeError(f"{origin} is not a valid tunesmith recipe:\n" + "\n".join(problems))


def load_recipe(path: str | os.PathLike, check_files: bool = False) -> dict:
    """Read and validate a recipe file (`check_files`: see validate_recipe)."""
    try:
        with open(path, encoding="utf-8") as handle:
            recipe = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    return validate_recipe(recipe if recipe is not None else {}, origin=str(path), check_files=check_files)


def section_hash(section) -> str:
    """A short, stable hash of a recipe section (key order does not matter)."""
    canonical = json.dumps(section, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
