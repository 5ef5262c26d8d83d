"""The recipe schema (`schemas/recipe.schema.yaml`, package data): loading it, and the one strict
validator that fills its defaults; used by recipe validation and by code called with a bare section.

Strict: an integer is an int (not 42.0, not a bool, within 64 bits), a number is finite (NaN passes
every minimum), a pattern's `$` means the end of the text.
"""

from __future__ import annotations

import copy
import json
import math
import re
from functools import cache
from importlib import resources

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from tunesmith.config.recipe_file import _excerpt


@cache
def load_schema(name: str = "recipe.schema.yaml") -> dict:
    """A schema shipped with the package (package data, so a non-editable install finds it)."""
    text = resources.files("tunesmith").joinpath("schemas", name).read_text(encoding="utf-8")
    if not name.endswith((".yaml", ".yml")):
        return json.loads(text)
    # libyaml's loader when PyYAML has it: the same data, ~10x faster than the pure-Python one, and
    # every workflow start (`snakemake -n`) and validation loads the schema.
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)


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


def with_defaults(section: str, value: dict) -> dict:
    """A copy of one recipe part (`curate`, `sources/items`: a path of schema properties) with the
    schema's defaults filled as validation fills them, for code called directly rather than by a
    validated recipe (tests, benches)."""
    schema = load_schema()
    for name in section.split("/"):
        schema = schema[name] if name == "items" else schema["properties"][name]
    filled = copy.deepcopy(value)
    for _ in strict_validator(schema).iter_errors(filled):
        pass  # a direct call's values are the caller's business; only the defaults are wanted here
    # A validated recipe's part lacks nothing: hand it back itself, so that a job's recorded params
    # (tunesmith.jobs.reads) still record the keys the code looks up (copying and comparing look nothing up).
    # Otherwise the defaults join the caller's own values, each looked up once.
    return value if filled == value else _merged(filled, value)


def _merged(filled, value):
    if isinstance(value, dict) and isinstance(filled, dict):
        return {**filled, **{name: _merged(filled.get(name), value[name]) for name in value}}
    return value


@cache
def _strict_class():
    return _with_defaults_and_strict_types(Draft202012Validator)  # a class made once, not per validation


def strict_validator(schema: dict):
    """A validator of `schema` that fills defaults as it checks (the instance is changed in place)."""
    return _strict_class()(schema)
