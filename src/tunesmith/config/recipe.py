"""Recipes: checked completely, by the one validator `tunesmith validate` and the workflow both call.

A recipe file is read by `tunesmith.config.recipe_file` (safe YAML within bounds, never Snakemake's config
loader). Validation fills every default from `schemas/recipe.schema.yaml` (the only home of defaults)
and checks the schema strictly: an integer is an int (not 42.0, not a bool, within 64 bits), a number
is finite (NaN passes every minimum), a pattern's `$` means the end of the text. Then the rules a
schema cannot say simply (`_cross_key_problems`), then a sweep's variants, each validated the same
way. Every problem is reported with its key path and a bounded excerpt of the value, all at once.

Over 350 lines because every check a recipe passes before any job runs reports here, with its key
path (schema, cross-key, text and secrets, bounds, files, sweep variants, seed replicates, `--config set=`
overrides); variants, replicates and overrides are the first pieces to move out when this grows.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import itertools
import json
import math
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tunesmith.config.recipe_file import RecipeError, _excerpt, _RecipeLoader, _unshared, read_recipe, yaml11_reading
from tunesmith.config.schema import load_schema, strict_validator
from tunesmith.config.trl_fields import RENAMED, renamed_problems, trainer_problems
from tunesmith.data.sources import check_inputs, check_settings, special_file_problem
from tunesmith.data.tasks import check_task_files
from tunesmith.hub.fetch import model_problems
from tunesmith.jobs.atomic import section_hash
from tunesmith.judge.rubric import check_judge_settings
from tunesmith.training.launcher import sharding_problem
from tunesmith.training.preference import preference_problems

__all__ = ["RecipeError", "apply_overrides", "load_recipe", "load_schema", "parse_overrides", "read_recipe",
           "validate_recipe", "variants", "workflow_recipe"]

MAX_VARIANTS = 64
SEED_MAX = 2**32 - 1  # the schema's maximum of `seed`
# A key named like one of these holds or names a secret: its value is never printed.
SECRET_KEY = re.compile(r"(^|_)(api_key|secret|password|passwd|token)(_env)?$")
# What an API key looks like, as opposed to the name of the variable that holds it.
KEY_LIKE = re.compile(r"^(sk|hf|ghp|gho|ghs|github_pat|xox[abpr]|AKIA|rk|pk)[-_]|^(?=.*[a-z])(?=.*[A-Z])(?=.*[0-9]).{24,}$")
# Keys whose value is a file or folder (or a hub id) the workflow opens: bounded as the file system bounds names.
PATH_KEYS = ("tasks.path", "tasks.references", "judge.reference_grades", "judge.prompt_template", "base_model.path",
             "judge.local.path")
NAME_MAX_BYTES, PATH_MAX_BYTES = 255, 4095


def load_recipe(path: str | os.PathLike, check_files: bool = False, overrides: dict | None = None) -> dict:
    """Read a recipe file, apply `overrides` ({dotted key: value}, see `parse_overrides`) and validate the
    result (defaults filled); see `validate_recipe`."""
    return load_recipe_and_variants(path, check_files, overrides)[0]


def load_recipe_and_variants(path: str | os.PathLike, check_files: bool = False,
                             overrides: dict | None = None) -> tuple[dict, dict[str, dict]]:
    """`load_recipe`, and the sweep's variants its validation made (validating them once)."""
    recipe, origin = read_recipe(path), str(path)
    if overrides:
        apply_overrides(recipe, overrides, origin)
        origin += " with " + ",".join(overrides)
    return validated(recipe, origin=origin, check_files=check_files)


# ---- overrides: `--config set=sft.num_train_epochs=3,dpo.beta=0.2`, `tunesmith validate --set KEY=VALUE` ----

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
        raise RecipeError(f"set: takes KEY=VALUE[,KEY=VALUE...] (e.g. set=sft.num_train_epochs=3,dpo.beta=0.2), "
                          f"got {_excerpt(entries)}")
    overrides = {}
    for entry in entries:
        for item in _NEXT_OVERRIDE.split(entry):
            key, equals, text = item.partition("=")
            key = key.strip()
            if not equals or not re.fullmatch(_DOTTED, key):
                raise RecipeError(f"set: {_excerpt(item)} is not KEY=VALUE with a dotted recipe key "
                                  "(e.g. sft.num_train_epochs=3)")
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


def is_secret_key(parts) -> bool:
    """Whether the key at this path holds or names a secret (its value is never printed)."""
    return any(isinstance(part, str) and SECRET_KEY.search(part) for part in parts)


def _message(error) -> str:
    """The schema error in words, with a bounded excerpt of the offending value (none for a key
    named like a secret: a key pasted where its variable's name belongs must not reach a log)."""
    kind, value, instance = error.validator, error.validator_value, error.instance
    if is_secret_key(error.absolute_path):
        if kind == "pattern" and isinstance(instance, str) and KEY_LIKE.search(instance):
            return "looks like a key, not the name of an environment variable: put the key in a variable " \
                   "(export OPENAI_API_KEY=...) and write the variable's name here (the value is not shown)"
        return f"fails the schema's {kind} rule (the value is not shown: the key is named like a secret)"
    if kind == "type":
        expected = " or ".join(value) if isinstance(value, list) else value
        hint = yaml11_reading(instance)
        return f"must be {expected}, got {_excerpt(instance)}" + (
            f" (recipes are read as YAML 1.2, where it is text; {hint})" if hint else "")
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
    return validated(recipe, origin, check_files)[0]


def validated(recipe, origin: str = "recipe", check_files: bool = False, checked_files: dict | None = None,
              sections=None) -> tuple[dict, dict[str, dict]]:
    """`validate_recipe`, returning the sweep's variants too (each validated like a recipe). The file
    problems found are kept in `checked_files` by what they depend on (`file_problems`), when given;
    with `sections`, only those are checked against the schema (the rest are known to be valid)."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping of sections, got {_excerpt(recipe)}")
    renamed = renamed_problems(recipe)  # an old name is reported as such, not as an unknown key
    problems = renamed or _schema_problems(recipe, sections)
    if not problems:
        problems = _cross_key_problems(recipe)
    if not problems and check_files:
        checked_files = {} if checked_files is None else checked_files
        named = json.dumps({name: recipe[name] for name in FILE_SECTIONS}, sort_keys=True, default=repr)
        if named not in checked_files:
            checked_files[named] = file_problems(recipe)
        problems = checked_files[named]
    if problems:
        raise RecipeError(f"{origin} is not a valid tunesmith recipe:\n" + "\n".join(f"  {p}" for p in problems))
    return recipe, variants(recipe, origin, check_files=check_files, checked_files=checked_files)


def _schema_problems(recipe: dict, sections=None) -> list[str]:
    schema = load_schema()
    if sections is not None:  # the recipe's own sections, the rest being valid; the root allows any of them
        schema = {**schema, "properties": {name: schema["properties"][name] for name in sections}}
        recipe = {name: recipe[name] for name in sections}
    validator = strict_validator(schema)
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
    if recipe["dpo"]["enabled"] and "preference" not in roles and not recipe["pairs"]["enabled"]:
        problems.append("dpo.enabled: true, but no source has role 'preference' (nor pairs.enabled)")
    if recipe["pairs"]["enabled"] and not recipe["dpo"]["enabled"]:
        problems.append("pairs.enabled: true makes preference pairs for DPO, but dpo.enabled is false")
    if recipe["pairs"]["enabled"] and "on_policy" in ids:
        problems.append("sources: id 'on_policy' is the on-policy pairs' own (pairs.enabled); rename the source")
    if recipe["base_model"]["path"] is None and "pretrain" not in roles:
        problems.append("base_model.path: null builds the tiny model, which needs a source with role 'pretrain'")
    if recipe["continued_pretraining"]["enabled"] and "pretrain" not in roles:
        problems.append("continued_pretraining.enabled: true trains on the pretrain sources' text, but no source "
                        "has role 'pretrain'")
    problems += filter(None, [sharding_problem(recipe["distributed"], recipe["base_model"])])
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
    return (_text_problems(recipe) + _bound_problems(recipe) + problems + preference_problems(recipe)
            + check_settings(recipe["curate"]) + trainer_problems(recipe))


def _strings(value, path=()):
    """(key path, text) of every string in the recipe, values of lists and mappings included."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _text_problems(recipe: dict) -> list[str]:
    """Text no recipe string may hold, whatever its key: NUL (no file name, variable or prompt can
    hold it), a lone surrogate (no file can store it as UTF-8), credentials in a URL (manifests and
    Snakemake's metadata record the recipe's values), a key where a variable's name belongs, and paths
    longer than the file system takes (each named by its key, the value excerpted unless secret)."""
    problems = []
    for parts, text in _strings(recipe):
        at, shown = key_path(parts), ("(value not shown)" if is_secret_key(parts) else _excerpt(text))
        if "\0" in text:
            problems.append(f"{at}: holds a NUL character (U+0000), which no file name or text may hold: {shown}")
            continue
        if any("\ud800" <= character <= "\udfff" for character in text):
            problems.append(f"{at}: holds a lone surrogate (U+D800..U+DFFF), which is not text: {shown}")
            continue
        if "://" in text[:40] and "@" in text:
            try:
                parts_of_url = urlsplit(text.strip())
                credentials = parts_of_url.username is not None or parts_of_url.password is not None
            except ValueError:
                credentials = False
            if credentials:
                problems.append(f"{at}: the URL holds credentials (user:...@); they would be written into manifests "
                                "and Snakemake's metadata. Name the URL without them and put the key in the variable "
                                "judge.openai.api_key_env names (the value is not shown)")
        if is_secret_key(parts) and parts[-1].endswith("_env") and KEY_LIKE.search(text):
            problems.append(f"{at}: looks like a key, not the name of an environment variable: put the key in a "
                            "variable (export OPENAI_API_KEY=...) and write the variable's name here (the value is "
                            "not shown)")
    paths = [(f"sources[{index}].path", source["path"]) for index, source in enumerate(recipe["sources"])]
    paths += [(key, _get(recipe, key)) for key in PATH_KEYS]
    for at, path in paths:
        if not isinstance(path, str) or "\0" in path:
            continue
        encoded = os.fsencode(path) if not any("\ud800" <= c <= "\udfff" for c in path) else b""
        longest = max((len(part) for part in encoded.split(b"/")), default=0)
        if len(encoded) > PATH_MAX_BYTES or longest > NAME_MAX_BYTES:
            problems.append(f"{at}: a path of {len(encoded)} bytes with a name of {longest}; file systems take names "
                            f"of at most {NAME_MAX_BYTES} bytes and paths of at most {PATH_MAX_BYTES}: "
                            f"{_excerpt(path)}")
    return problems


_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@functools.cache
def key_parts(dotted: str) -> tuple:
    """`sources[2].path` -> ("sources", 2, "path")."""
    return tuple(name if name else int(index) for name, index in _KEY_PART.findall(dotted))


def lookup(recipe: dict, dotted: str):
    """The value at a dotted key (`dpo.beta`, `sources[2].path`); KeyError, IndexError or TypeError where
    the recipe has no such key. The one walk of a dotted key (plan, summary and validation use it)."""
    value = recipe
    for part in key_parts(dotted):
        value = value[part]
    return value


def _get(recipe: dict, dotted: str):
    try:
        return lookup(recipe, dotted)
    except (KeyError, IndexError, TypeError):
        return None


def _bound_problems(recipe: dict) -> list[str]:
    """A `min_X` above its sibling `max_X` (curation's lengths and tokens, generation's guards...):
    every row or answer would fail it, so the recipe cannot work."""
    problems = []

    def walk(node, parts):
        for name, value in node.items():
            if isinstance(value, dict):
                walk(value, (*parts, name))
            elif name.startswith("min_") and type(value) in (int, float):
                ceiling = node.get("max_" + name.removeprefix("min_"))
                if type(ceiling) in (int, float) and value > ceiling:
                    problems.append(f"{key_path((*parts, name))}: {value} is above "
                                    f"{key_path((*parts, 'max_' + name.removeprefix('min_')))} ({ceiling}); nothing "
                                    "could pass both")

    walk(recipe, ())
    judge_url = recipe["judge"]["openai"]["base_url"]
    if recipe["judge"]["backend"] == "openai" and isinstance(judge_url, str):
        try:
            url = urlsplit(judge_url)
            scheme, host = url.scheme, url.hostname
        except ValueError:
            scheme, host = "", None
        if scheme not in ("http", "https") or not host:
            problems.append(f"judge.openai.base_url: {_excerpt(judge_url) if not ('@' in judge_url) else '(not shown)'} "
                            "is not an http(s) URL with a host (e.g. http://127.0.0.1:8000/v1)")
    return problems


def tracking_problems(recipe: dict) -> list[str]:
    """Tracking backends (tunesmith.training.tracking) whose package is not installed: checked with the files, since it
    is the machine the workflow runs on that lacks them."""
    hints = {"mlflow": "pip install 'tunesmith[tracking]'", "tensorboard": "pip install tensorboard",
             "wandb": "pip install wandb", "trackio": "pip install trackio"}
    return [f"tracking.report_to: lists '{name}', but the {name} package is not installed ({hints[name]}, "
            "or remove it from tracking.report_to)"
            for name in recipe["tracking"]["report_to"] if importlib.util.find_spec(name) is None]


# The sections `file_problems` reads, and all it is given: variants of a sweep that name the same files
# (most change training or generation settings) are checked once (`validated`).
FILE_SECTIONS = ("sources", "tasks", "judge", "base_model", "tracking")


def file_problems(recipe: dict) -> list[str]:
    """What only the files can tell, found before any job: each problem names its key path and file."""
    recipe = {name: recipe[name] for name in FILE_SECTIONS}
    special = [f"{key}: {reason}" for key, path in [(key, _get(recipe, key)) for key in PATH_KEYS[:4]]
               if isinstance(path, str) and (reason := special_file_problem(path))]
    if special:  # a FIFO would block the task reader; /proc/self/environ would be read as data
        return special
    judge = recipe["judge"]  # a configured judge's prompt template and the keys its backend needs
    problems = (check_inputs(recipe) + check_task_files(recipe)
                + (check_judge_settings(judge) if judge["backend"] != "none" else []) + tracking_problems(recipe))
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
    for role, (path, revision) in fetched_models(recipe).items():
        key = "base_model" if role == "base" else "judge.local"
        reason = special_file_problem(path)
        problems += [f"{key}.path: {reason}"] if reason else model_problems(path, revision, key)
    return problems


def fetched_models(recipe: dict) -> dict[str, tuple[str, str | None]]:
    """The models the fetch_model stage snapshots, by role: (path, revision). A local judge model
    (judge.backend transformers or vllm) is fetched the same way as the base."""
    models = {}
    if recipe["base_model"]["path"] is not None:
        models["base"] = (recipe["base_model"]["path"], recipe["base_model"]["revision"])
    judge = recipe["judge"]
    if judge["backend"] in ("transformers", "vllm") and judge["local"]["path"]:
        models["judge"] = (judge["local"]["path"], judge["local"]["revision"])
    return models


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


SAFE_VARIANT = re.compile(r"^[A-Za-z0-9._=,+-]{1,120}$")


def variant_name(overrides: dict) -> str:
    """`dpo.beta=0.2,generate.max_new_tokens=24`: readable, and a safe folder name and Snakemake
    wildcard value whatever the values (no braces, slashes, spaces or control characters, at most
    120 characters): where the readable form is not, its safe part cut short, then a hash of the
    values (`template.prompt=___input___-1a2b3c4d`)."""
    parts = [f"{key}={json.dumps(value, ensure_ascii=False, separators=(',', ':'))}" for key, value in overrides.items()]
    readable = ",".join(parts).replace("/", "_").replace('"', "")
    if SAFE_VARIANT.match(readable):
        return readable
    prefix = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", readable)[:80].rstrip("_")
    return f"{prefix}-{section_hash(overrides)[:8]}"


def _set(recipe: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = recipe
    for depth, name in enumerate(parents):
        if not isinstance(node.get(name), dict):
            raise RecipeError(f"sweep.matrix.{dotted}: '{'.'.join(parents[:depth + 1])}' is not a recipe section")
        node = node[name]
    if last not in node:
        renamed = f" (renamed to {RENAMED[dotted]}: trl's and peft's own name)" if dotted in RENAMED else ""
        raise RecipeError(f"sweep.matrix.{dotted}: '{last}' is not a key of '{'.'.join(parents)}'{renamed}")
    node[last] = _unshared(value)


def variants(recipe: dict, origin: str = "recipe", check_files: bool = False,
             checked_files: dict | None = None) -> dict[str, dict]:
    """The sweep's variants of a validated recipe, by name: the recipe with each combination of
    `sweep.matrix` values, each validated like a recipe (with `check_files`, the files it names too,
    once per distinct set of the sections naming them: `checked_files`); empty when there is no sweep.
    The sections no override touches are the recipe's, already checked: only the changed ones are
    checked against the schema again. `validated` (and `load_recipe_and_variants`) return them from
    the recipe's own validation."""
    found, checked_files = {}, {} if checked_files is None else checked_files
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
        validated(variant, origin=f"{origin}, sweep variant {name}", check_files=check_files, checked_files=checked_files,
                  sections=sorted({"sweep", *(dotted.split(".")[0] for dotted in overrides)}))
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

def workflow_recipe(config: dict, configfiles, basedir: str | os.PathLike,
                    loader=load_recipe) -> tuple[str, dict]:
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
    return path, loader(path, check_files=True, overrides=parse_overrides(config.get("set")))
