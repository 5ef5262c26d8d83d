"""Reading a recipe file: YAML data, safely and within bounds.

Snakemake's config loader is never used for recipes: it templates files marked `__use_yte__` (running
the Python they hold) and merges them onto the workflow's own config. Reading here refuses what YAML
allows but a recipe must not be: duplicate keys (the second silently wins), non-string keys, invalid
UTF-8, aliases that expand past a bound (alias bombs), nesting past a bound, and the YTE marker.
Anchors are copied apart, so a sweep over one key never changes another that shared its anchor.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

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
