"""Recipes: data, read safely, checked completely, by the one validator `tunesmith validate` and the
workflow both call.

A recipe is a YAML file. It is read here, never by Snakemake's config loader, because that loader
templates files marked `__use_yte__` (running the Python they hold) and merges them onto the
workflow's own config. Reading refuses what YAML allows but a recipe must not be: duplicate keys
(the second silently wins), non-string keys, invalid UTF-8, aliases that expand past a bound
(alias bombs), nesting past a bound, and the YTE marker. Anchors are copied apart, so a sweep over
one key never changes another that shared its anchor.

Validation fills every default from `schemas/recipe.schema.yaml` (the only home of defaults) and
checks the schema strictly: an integer is an int (not 42.0, not a bool, within 64 bits), a number
is finite (NaN passes every minimum), a pattern's `$` means the end of the text. Then the rules a
schema cannot say simply (`_cross_key_problems`), then a sweep's variants, each validated the same
way. Every problem is reported with its key path and a bounded excerpt of the value, all at once.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

MAX_RECIPE_BYTES = 1 << 20
MAX_NODES = 20_000  # nodes of the recipe with every alias expanded; real recipes have a few hundred
MAX_DEPTH = 32
MAX_VARIANTS = 64
EXCERPT_CHARS = 80
YTE_MARKER = "__use_yte__"


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and every key path at fault."""


# ---- schemas ---------------------------------------------------------------------------------------

@cache
def load_schema(name: str = "recipe.schema.yaml") -> dict:
    """A schema shipped with the package (package data, so a non-editable install finds it)."""
    text = resources.files("tunesmith").joinpath("schemas", name).read_text(encoding="utf-8")
    return yaml.safe_load(text) if name.endswith((".yaml", ".yml")) else json.loads(text)


def section_hash(section) -> str:
    """A short, stable hash of a recipe section (key order does not matter)."""
    canonical = json.dumps(section, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# ---- reading ---------------------------------------------------------------------------------------

class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate and non-string keys, naming their line."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise RecipeError(f"line {line}: key {_excerpt(key)} is not a string")
            if key in seen:
                raise RecipeError(f"line {line}: key '{_excerpt(key, quote=False)}' is given twice "
                                  f"(first on line {seen[key]}); YAML would silently keep only the second")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root) -> int:
    """Nodes of the document with every alias expanded (a node reached twice counts twice), refusing
    cycles and deep nesting; computed on the composed graph, so a bomb is measured, never built."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise RecipeError(f"line {node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in on_path:
            raise RecipeError(f"line {node.start_mark.line + 1}: an alias refers to a node that contains it")
        on_path.add(id(node))
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise RecipeError(f"line {node.start_mark.line + 1}: the recipe expands to more than "
                                  f"{MAX_NODES} values (aliases repeat what they refer to)")
        on_path.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root, 0)


def _unshared(value):
    """A copy in which no two places share an object (YAML anchors give shared ones)."""
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def read_recipe(path: str | os.PathLike) -> dict:
    """The recipe file's data, read with the bounds above; RecipeError naming the file otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RecipeError(f"{path}: cannot read the recipe: {error.strerror or error}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {len(data)} bytes; a recipe is at most {MAX_RECIPE_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: not UTF-8 (byte {error.start}: {error.reason})") from None
    try:
        loader = _RecipeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return {}
            _expanded_size(root)
            recipe = loader.construct_document(root)
        finally:
            loader.dispose()
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {_excerpt(str(error), limit=400, quote=False)}") from None
    except RecursionError:
        raise RecipeError(f"{path}: nested too deeply to be a recipe") from None
    if isinstance(recipe, dict) and YTE_MARKER in recipe:
        raise RecipeError(f"{path}: {YTE_MARKER}: recipes are data; tunesmith does not template them "
                          "(YTE would run the Python expressions they hold)")
    return _unshared(recipe)


def load_recipe(path: str | os.PathLike, check_files: bool = False) -> dict:
    """Read and validate a recipe file (defaults filled); see `validate_recipe`."""
    return validate_recipe(read_recipe(path), origin=str(path), check_files=check_files)


# ---- validation -------------------------------------------------------------------------------------

def _is_integer(checker, instance) -> bool:
    return type(instance) is int and -(2**63) <= instance < 2**63


def _is_number(checker, instance) -> bool:
    return (type(instance) is float and math.isfinite(instance)) or _is_integer(checker, instance)


def _with_defaults_and_strict_types(validator_class):
    """Fill `default`s of missing properties before checking them; strict integer and number types;
    a pattern's trailing `$` matches only at the very end (Python's `$` also matches before a '\\n')."""
    check_properties = validator_class.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, properties, instance, schema)

    def pattern(validator, expression, instance, schema):
        if isinstance(instance, str) and not re.search(re.sub(r"(?<!\\)\$$", r"\\Z", expression), instance):
            yield ValidationError(f"{_excerpt(instance)} does not match '{expression}'")

    checker = validator_class.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
    return validators.extend(validator_class, {"properties": fill_then_check, "pattern": pattern},
                             type_checker=checker)


def _excerpt(value, limit: int = EXCERPT_CHARS, quote: bool = True) -> str:
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        return f"unknown key(s) {', '.join(map(_excerpt, unknown))} (known: {', '.join(sorted(allowed))})"
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
    validator = _with_defaults_and_strict_types(Draft202012Validator)(load_schema())
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
    if recipe["template"]["kind"] == "plain" and "{input}" not in recipe["template"]["prompt"]:
        problems.append("template.prompt: a plain template needs an {input} placeholder")
    from tunesmith.sources import check_settings  # sources imports this module

    return problems + check_settings(recipe["curate"])


def file_problems(recipe: dict) -> list[str]:
    """What only the files can tell, found before any job: each problem names its key path and file."""
    from tunesmith.sources import check_inputs  # both import this module
    from tunesmith.tasks import check_task_files

    problems = check_inputs(recipe) + check_task_files(recipe)
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


# ---- the workflow's recipe -----------------------------------------------------------------------------

def workflow_recipe(config: dict, configfiles, basedir: str | os.PathLike) -> tuple[str, dict]:
    """The recipe a Snakemake run builds: `--config recipe=PATH` (relative to the working directory),
    else the workflow's recipes/default.yaml; read and validated here, files included."""
    if configfiles:
        raise RecipeError("a recipe is passed as --config recipe=PATH, not --configfile: Snakemake templates "
                          "--configfile files (YTE, which can run code) and merges them onto the default recipe")
    unknown = sorted(set(config) - {"recipe"})
    if unknown:
        raise RecipeError(f"--config takes only recipe=PATH; unknown: {', '.join(unknown)} "
                          "(settings belong in the recipe file)")
    path = str(config.get("recipe") or Path(basedir) / "recipes" / "default.yaml")
    return path, load_recipe(path, check_files=True)
