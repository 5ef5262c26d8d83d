"""Recipes: checked completely, by the one validator `tunesmith validate` and the workflow both call.

A recipe file is read by `tunesmith.recipe_file` (safe YAML within bounds, never Snakemake's config
loader). Validation fills every default from `schemas/recipe.schema.yaml` (the only home of defaults)
and checks the schema strictly: an integer is an int (not 42.0, not a bool, within 64 bits), a number
is finite (NaN passes every minimum), a pattern's `$` means the end of the text. Then the rules a
schema cannot say simply (`_cross_key_problems`), then a sweep's variants, each validated the same
way. Every problem is reported with its key path and a bounded excerpt of the value, all at once.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
from pathlib import Path

import yaml

from tunesmith.recipe_file import RecipeError, _excerpt, _RecipeLoader, _unshared, read_recipe
from tunesmith.preference import preference_problems
from tunesmith.schema import load_schema, strict_validator
from tunesmith.sources import check_inputs, check_settings
from tunesmith.tasks import check_task_files

__all__ = ["RecipeError", "apply_overrides", "load_recipe", "load_schema", "parse_overrides", "read_recipe",
           "validate_recipe", "variants", "workflow_recipe"]

MAX_VARIANTS = 64
SEED_MAX = 2**32 - 1  # the schema's maximum of `seed`


def section_hash(section) -> str:
    """A short, stable hash of a recipe section (key order does not matter)."""
    canonical = json.dumps(section, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def load_recipe(path: str | os.PathLike, check_files: bool = False, overrides: dict | None = None) -> dict:
    """Read a recipe file, apply `overrides` ({dotted key: value}, see `parse_overrides`) and validate the
    result (defaults filled); see `validate_recipe`."""
    recipe, origin = read_recipe(path), str(path)
    if overrides:
        apply_overrides(recipe, overrides, origin)
        origin += " with " + ",".join(overrides)
    return validate_recipe(recipe, origin=origin, check_files=check_files)


# ---- overrides: `--config set=sft.epochs=3,dpo.beta=0.2`, `tunesmith validate --set sft.epochs=3` ---------

_DOTTED = r"[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*"
_NEXT_OVERRIDE = re.compile(rf",(?=\s*{_DOTTED}\s*=)")  # a comma that starts the next KEY=VALUE


def parse_overrides(entries) -> dict:
    """`KEY=VALUE` overrides, by dotted key: a string of them joined by commas (Snakemake's `--config`
    keeps one value per name, so `set=` carries them all), or a list of such strings. A value is read
    as YAML like the recipe file (`3` an int, `[a, b]` a list, `null`)."""
    if entries is None:
        return {}
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        raise RecipeError(f"set: takes KEY=VALUE[,KEY=VALUE...] (e.g. set=sft.epochs=3,dpo.beta=0.2), "
                          f"got {_excerpt(entries)}")
    overrides = {}
    for entry in entries:
        for item in _NEXT_OVERRIDE.split(entry):
            key, equals, text = item.partition("=")
            key = key.strip()
            if not equals or not re.fullmatch(_DOTTED, key):
                raise RecipeError(f"set: {_excerpt(item)} is not KEY=VALUE with a dotted recipe key "
                                  "(e.g. sft.epochs=3)")
            if key in overrides:
                raise RecipeError(f"set: {key} is given twice")
            try:
                overrides[key] = yaml.load(text, Loader=_RecipeLoader) if text.strip() else None
            except (yaml.YAMLError, RecipeError) as error:
                raise RecipeError(f"set: {key}: the value {_excerpt(text)} is not valid YAML: "
                                  f"{_excerpt(str(error), limit=200, quote=False)}") from None
    return overrides


def apply_overrides(recipe: dict, overrides: dict, origin: str = "recipe") -> dict:
    """Set each dotted key of `overrides` in the recipe as read (before defaults), making the sections
    it names; the result is then validated like the file, so an unknown key is reported by its path."""
    if not isinstance(recipe, dict):
        return recipe  # validate_recipe says what is wrong with it
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = recipe
        for depth, name in enumerate(parents):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise RecipeError(f"{origin}: set {dotted}: '{'.'.join(parents[:depth + 1])}' is not a "
                                  "recipe section (a list item or a value cannot be set by a dotted key)")
        node[last] = _unshared(value)
    return recipe


# ---- validation -------------------------------------------------------------------------------------

def key_path(parts) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".") or "(top level)"


def _message(error) -> str:
    """The schema error in words, with a bounded excerpt of the offending value."""
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "type":
        expected = " or ".join(value) if isinstance(value, list) else value
        return f"must be {expected}, got {_excerpt(instance)}"
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted((key for key in instance if key not in allowed), key=str)
        return f"unknown key(s) {', '.join(map(_guess, unknown, [allowed] * len(unknown)))} " \
               f"(known: {', '.join(sorted(allowed))})"
    if kind == "enum":
        return f"must be one of {value}, got {_excerpt(instance)}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "above",
                 "exclusiveMaximum": "below"}[kind]
        return f"must be {words} {value}, got {_excerpt(instance)}"
    if kind == "minLength":
        return "must not be empty" if value == 1 else f"must be at least {value} characters"
    if kind == "minItems":
        return f"needs at least {value} item(s)"
    if kind == "required":
        return error.message
    return _excerpt(error.message, limit=200, quote=False)


def _guess(key, allowed) -> str:
    """An unknown key, with the known one it is closest to (`'learning_rte' (did you mean 'learning_rate'?)`)."""
    close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
    return _excerpt(key) + (f" (did you mean {close[0]!r}?)" if close else "")


def validate_recipe(recipe, origin: str = "recipe", check_files: bool = False) -> dict:
    """Fill defaults into `recipe` in place and check it completely: the schema, the cross-key rules,
    and every sweep variant; with `check_files`, also the files it names (run where the workflow
    runs). Raises RecipeError listing every problem with its key path."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping of sections, got {_excerpt(recipe)}")
    problems = _schema_problems(recipe)
    if not problems:
        problems = _cross_key_problems(recipe)
    if not problems and check_files:
        problems = file_problems(recipe)
    if problems:
        raise RecipeError(f"{origin} is not a valid tunesmith recipe:\n" + "\n".join(f"  {p}" for p in problems))
    variants(recipe, origin)
    return recipe


def _schema_problems(recipe: dict) -> list[str]:
    validator = strict_validator(load_schema())
    errors = sorted(validator.iter_errors(recipe), key=lambda error: [str(part) for part in error.absolute_path])
    return [f"{key_path(error.absolute_path)}: {_message(error)}" for error in errors]


def _cross_key_problems(recipe: dict) -> list[str]:
    """Rules between keys, which a JSON Schema cannot say simply."""
    problems = []
    ids = [source["id"] for source in recipe["sources"]]
    for duplicate in sorted({source_id for source_id in ids if ids.count(source_id) > 1}):
        problems.append(f"sources: id '{duplicate}' is used twice")
    roles = {source["role"] for source in recipe["sources"]}
    if "sft" not in roles:
        problems.append("sources: no source has role 'sft'; SFT needs one")
    if recipe["dpo"]["enabled"] and "preference" not in roles:
        problems.append("dpo.enabled: true, but no source has role 'preference'")
    if recipe["base_model"]["path"] is None and "pretrain" not in roles:
        problems.append("base_model.path: null builds the tiny model, which needs a source with role 'pretrain'")
    if recipe["continued_pretraining"]["enabled"] and "pretrain" not in roles:
        problems.append("continued_pretraining.enabled: true trains on the pretrain sources' text, but no source "
                        "has role 'pretrain'")
    if recipe["distributed"]["strategy"] == "fsdp" and recipe["base_model"]["quantization"] != "none":
        problems.append("distributed.strategy: fsdp cannot shard a quantised base (base_model.quantization); "
                        "use ddp")
    for index, source in enumerate(recipe["sources"]):
        if (source["format"] == "text") != (source["role"] == "pretrain"):
            problems.append(f"sources[{index}].format: '{source['format']}' does not fit role '{source['role']}'")
        if source["path"].strip() in ("", ".", "./", "/"):
            problems.append(f"sources[{index}].path: {_excerpt(source['path'])} names no corpus "
                            "(it would read the whole working directory or file system)")
    if recipe["base_model"]["path"] is None and recipe["base_model"]["revision"] is not None:
        problems.append("base_model.revision: set, but base_model.path is null (the tiny model is built, not fetched)")
    build = recipe["base_model"]["build"]
    if build["hidden_size"] % build["num_attention_heads"]:
        problems.append("base_model.build.num_attention_heads: must divide base_model.build.hidden_size")
    if (recipe["submission"]["stage"] == "best" and not recipe["tasks"]["references"]
            and recipe["judge"]["backend"] == "none"):
        problems.append("submission.stage: best picks the stage that scores highest, which needs a judge "
                        "(judge.backend) or tasks.references")
    if recipe["template"]["kind"] == "plain" and "{input}" not in recipe["template"]["prompt"]:
        problems.append("template.prompt: a plain template needs an {input} placeholder")
    if recipe["repeats"] > 1 and not recipe["tasks"]["references"] and recipe["judge"]["backend"] == "none":
        problems.append("repeats: the seed replicates are compared by their scores, which needs a judge "
                        "(judge.backend) or tasks.references")
    if recipe["seed"] + recipe["repeats"] - 1 > SEED_MAX:
        problems.append(f"repeats: seeds {recipe['seed']} to {recipe['seed'] + recipe['repeats'] - 1} pass "
                        f"{SEED_MAX}, the largest seed; lower seed")
    return problems + preference_problems(recipe) + check_settings(recipe["curate"])


def tracking_problems(recipe: dict) -> list[str]:
    """Tracking backends (tunesmith.tracking) whose package is not installed: checked with the files, since it
    is the machine the workflow runs on that lacks them."""
    hints = {"mlflow": "pip install 'tunesmith[tracking]'", "tensorboard": "pip install tensorboard",
             "wandb": "pip install wandb", "trackio": "pip install trackio"}
    return [f"tracking.report_to: lists '{name}', but the {name} package is not installed ({hints[name]}, "
            "or remove it from tracking.report_to)"
            for name in recipe["tracking"]["report_to"] if importlib.util.find_spec(name) is None]


def file_problems(recipe: dict) -> list[str]:
    """What only the files can tell, found before any job: each problem names its key path and file."""
    problems = check_inputs(recipe) + check_task_files(recipe) + tracking_problems(recipe)
    workdir = Path.cwd().resolve()
    for index, source in enumerate(recipe["sources"]):
        resolved = Path(source["path"]).resolve()
        if resolved == workdir or resolved in workdir.parents:
            problems.append(f"sources[{index}].path: {source['path']!r} contains the whole working directory "
                            "(its results/ too); name the corpus's own folder or files")
    base = recipe["base_model"]
    if base["path"] is not None and Path(base["path"]).is_dir() and base["revision"] is not None:
        problems.append(f"base_model.revision: {base['revision']!r} is set, but base_model.path {base['path']!r} is a "
                        "local folder, which has no revisions; set it to null")
    return problems


# ---- sweeps -----------------------------------------------------------------------------------------

def combinations(recipe: dict) -> dict[str, dict]:
    """The sweep's variants as overrides ({dotted key: value}), by variant name."""
    matrix = recipe["sweep"]["matrix"]
    if not matrix:  # the product of no lists is one empty combination, not none
        return {}
    count = math.prod(len(values) for values in matrix.values())
    if count > MAX_VARIANTS:
        raise RecipeError(f"sweep.matrix: {count} variants; a sweep builds at most {MAX_VARIANTS}")
    found = {}
    for values in itertools.product(*matrix.values()):
        overrides = dict(zip(matrix, values))
        found[variant_name(overrides)] = overrides
    if len(found) < count:
        raise RecipeError("sweep.matrix: two combinations share a variant name; list each value once")
    return found


def variant_name(overrides: dict) -> str:
    """`dpo.beta=0.2,generate.max_new_tokens=24`: readable, and a safe folder name."""
    parts = [f"{key}={json.dumps(value, ensure_ascii=False, separators=(',', ':'))}" for key, value in overrides.items()]
    return ",".join(parts).replace("/", "_").replace('"', "")


def _set(recipe: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = recipe
    for depth, name in enumerate(parents):
        if not isinstance(node.get(name), dict):
            raise RecipeError(f"sweep.matrix.{dotted}: '{'.'.join(parents[:depth + 1])}' is not a recipe section")
        node = node[name]
    if last not in node:
        raise RecipeError(f"sweep.matrix.{dotted}: '{last}' is not a key of '{'.'.join(parents)}'")
    node[last] = _unshared(value)


def variants(recipe: dict, origin: str = "recipe") -> dict[str, dict]:
    """The sweep's variants, by name: the recipe with each combination of `sweep.matrix` values,
    each validated like a recipe; empty when there is no sweep."""
    found = {}
    try:
        named = combinations(recipe)
    except RecipeError as error:
        raise RecipeError(f"{origin} is not a valid tunesmith recipe:\n  {error}") from None
    for name, overrides in named.items():
        if not recipe["tasks"]["references"] and recipe["judge"]["backend"] == "none":
            raise RecipeError(f"{origin}: sweep.matrix ranks variants by their scores, which needs a judge "
                              "(judge.backend) or tasks.references")
        variant = _unshared(recipe)
        variant["sweep"] = {"matrix": {}}
        try:
            for dotted, value in overrides.items():
                _set(variant, dotted, value)
        except RecipeError as error:
            raise RecipeError(f"{origin}, sweep variant {name}:\n  {error}") from None
        validate_recipe(variant, origin=f"{origin}, sweep variant {name}")
        found[name] = variant
    return found


def replicate_seeds(recipe: dict) -> list[int]:
    """The seeds a recipe is trained under (`repeats`): its own first."""
    return [recipe["seed"] + index for index in range(recipe["repeats"])]


def replicates(recipe: dict) -> dict[str, dict]:
    """The recipe's seed replicates beyond its own seed, by name (`seed=43`): the recipe with only `seed`
    changed (and `repeats` 1, no sweep), so that every stage that reads no seed is shared with it."""
    found = {}
    for seed in replicate_seeds(recipe)[1:]:
        replicate = _unshared(recipe)
        replicate.update(seed=seed, repeats=1, sweep={"matrix": {}})
        found[variant_name({"seed": seed})] = replicate
    return found


# ---- the workflow's recipe -----------------------------------------------------------------------------

def workflow_recipe(config: dict, configfiles, basedir: str | os.PathLike) -> tuple[str, dict]:
    """The recipe a Snakemake run builds: `--config recipe=PATH` (relative to the working directory),
    else the workflow's recipes/default.yaml, with `--config set=KEY=VALUE[,KEY=VALUE...]` applied; read
    and validated here, files included."""
    if configfiles:
        raise RecipeError("a recipe is passed as --config recipe=PATH, not --configfile: Snakemake merges "
                          "--configfile files onto the default recipe, and it has already run any YTE Python in "
                          "them (__use_yte__: true) while loading them; never pass a file you do not trust")
    unknown = sorted(set(config) - {"recipe", "set"})
    if unknown:
        raise RecipeError(f"--config takes only recipe=PATH and set=KEY=VALUE[,KEY=VALUE...]; unknown: "
                          f"{', '.join(unknown)} (to override a recipe key: --config set={unknown[0]}=VALUE)")
    path = str(config.get("recipe") or Path(basedir) / "recipes" / "default.yaml")
    return path, load_recipe(path, check_files=True, overrides=parse_overrides(config.get("set")))
