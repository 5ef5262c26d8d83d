"""Helpers for tests that change recipe keys: other valid values of a key, and what is downstream."""

import math

from tunesmith.config.recipe import key_parts, load_schema, lookup


def schema_at(dotted: str) -> dict:
    node = load_schema()
    for part in key_parts(dotted):
        node = node["items"] if isinstance(part, int) else node["properties"][part]
    return node


def alternatives(dotted: str, value) -> list:
    """Other values the key may take (the recipe may still refuse one through another key)."""
    schema = schema_at(dotted)
    if "enum" in schema:
        return [choice for choice in schema["enum"] if choice != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        up = value + 1
        return [up if up <= schema.get("maximum", math.inf) else value - 1]
    if isinstance(value, float):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -math.inf))
        return [value / 2 if value / 2 > low else value + (schema.get("maximum", value + 1) - value) / 2]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [value + ["extra"]] if "target_modules" not in dotted else [value[:1]]
    if isinstance(value, str) and dotted.startswith("template."):
        return [value + " "]
    if value is None and dotted in ("template.system", "tasks.references"):
        return ["系統"] if dotted == "template.system" else []
    return []  # paths and ids: another value names other files


def downstream_of(steps: dict, names: set[str]) -> set[str]:
    """The steps named and every step that consumes one of them, transitively."""
    found = set(names)
    changed = True
    while changed:
        changed = False
        by_key = {steps[name].key: name for name in found}
        for name, step in steps.items():
            if name not in found and any(key in by_key for key in step.upstream.values()):
                found.add(name)
                changed = True
    return found


get = lookup


def put(recipe, dotted, value):
    """Set a key, creating the sections on the way (a recipe file may leave them to their defaults)."""
    *parents, last = key_parts(dotted)
    node = recipe
    for part in parents:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[last] = value
    return recipe
