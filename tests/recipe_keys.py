"""Test helpers over dotted recipe keys: the leaves under some keys, and the leaves of a read log."""

import re

from tunesmith.config.recipe import lookup


def generic(dotted: str) -> str:
    """A key with list indexes dropped (`sources[2].path` -> `sources[].path`), as the schema names it."""
    return re.sub(r"\[\d+\]", "[]", dotted)


def leaf_keys(recipe: dict, keys) -> set[str]:
    """The dotted leaf keys under `keys` (a section stands for every key in it)."""
    found = set()

    def walk(value, dotted):
        if isinstance(value, dict) and value and dotted != "sweep.matrix":
            for name, item in value.items():
                walk(item, f"{dotted}.{name}" if dotted else name)
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                walk(item, f"{dotted}[{index}]")
        else:
            found.add(dotted)

    for dotted in keys:
        walk(lookup(recipe, dotted), dotted)
    return found


def leaves(log: set) -> list[str]:
    """The recorded paths that no other recorded path extends: what was read to the end."""
    return sorted(path for path in log
                  if not any(other != path and other.startswith((f"{path}.", f"{path}[")) for other in log))
