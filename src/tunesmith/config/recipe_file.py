"""Reading a recipe file: YAML data, safely and within bounds.

Snakemake's config loader is never used for recipes: it templates files marked `__use_yte__` (running
the Python they hold) and merges them onto the workflow's own config. Reading here refuses what YAML
allows but a recipe must not be: duplicate keys (the second silently wins), non-string keys, invalid
UTF-8, aliases that expand past a bound (alias bombs), nesting past a bound, and the YTE marker.
Anchors are copied apart, so a sweep over one key never changes another that shared its anchor.

Plain scalars are typed by YAML 1.2's core schema (PyYAML's loader with the 1.2 resolver set), so a
number reads as a person reads it: `3e-3` is a number (YAML 1.1 wants a dot), `1:30` is text (YAML 1.1
reads sexagesimal 90), `yes`/`on` are text, `0777` is 777, `2024-01-01` is text. Where a value the
schema refuses would have been something else in YAML 1.1, the message says so (`yaml11_reading`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver, Resolver
from yaml.scanner import Scanner

MAX_RECIPE_BYTES = 1 << 20
MAX_NODES = 20_000  # nodes of the recipe with every alias expanded; real recipes have a few hundred
MAX_DEPTH = 32
EXCERPT_CHARS = 80
YTE_MARKER = "__use_yte__"


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and every key path at fault."""


def _excerpt(value, limit: int = EXCERPT_CHARS, quote: bool = True) -> str:
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Yaml12Resolver(BaseResolver):
    """The implicit types of YAML 1.2's core schema (spec 10.3.2), plus `<<` merge keys."""

    yaml_implicit_resolvers: dict = {}


for _tag, _pattern, _first in [
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", list("-+.0123456789")),
    ("merge", r"^<<$", ["<"]),
]:
    _Yaml12Resolver.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), _first)


class _Yaml12Constructor(SafeConstructor):
    """SafeConstructor's ints and floats read the 1.2 way: no octal `0777`, no sexagesimal, no `_`."""

    def construct_yaml_int(self, node):
        value = self.construct_scalar(node)
        if value.startswith(("0o", "0x")):
            return int(value[2:], 8 if value[1] == "o" else 16)
        return int(value, 10)

    def construct_yaml_float(self, node):
        value = self.construct_scalar(node)
        special = value.lower().lstrip("+")
        if special in (".inf", "-.inf", ".nan"):
            return {".inf": float("inf"), "-.inf": float("-inf"), ".nan": float("nan")}[special]
        return float(value)


_Yaml12Constructor.add_constructor("tag:yaml.org,2002:int", _Yaml12Constructor.construct_yaml_int)
_Yaml12Constructor.add_constructor("tag:yaml.org,2002:float", _Yaml12Constructor.construct_yaml_float)


def yaml11_reading(text: str) -> str | None:
    """What YAML 1.1 (PyYAML's default, and many a person's expectation) makes of a plain scalar that
    YAML 1.2 reads as text, in words; None when both read it alike."""
    if not isinstance(text, str) or len(text) > EXCERPT_CHARS or "\n" in text:
        return None
    plain = (True, False)
    if (Resolver().resolve(yaml.ScalarNode, text, plain) == "tag:yaml.org,2002:str"
            or _Yaml12Resolver().resolve(yaml.ScalarNode, text, plain) != "tag:yaml.org,2002:str"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if isinstance(value, str):
        return None
    reading = repr(value) if isinstance(value, (bool, int, float)) else f"the {type(value).__name__} {value}"
    return f"YAML 1.1 would read {text} as {reading}"


class _RecipeLoader(Reader, Scanner, Parser, Composer, _Yaml12Constructor, _Yaml12Resolver):
    """A safe YAML 1.2 loader that refuses duplicate and non-string keys, naming their line."""

    def __init__(self, stream):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Yaml12Constructor.__init__(self)
        _Yaml12Resolver.__init__(self)

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
