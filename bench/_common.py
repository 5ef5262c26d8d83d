"""Helpers the benchmark scripts share (run them as `python bench/<name>.py`)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def quiet(log_path: Path):
    """Send the trainer's per-step prints and warnings to a file instead of the table."""
    stack = contextlib.ExitStack()
    handle = stack.enter_context(open(log_path, "a", encoding="utf-8"))
    stack.enter_context(contextlib.redirect_stdout(handle))
    stack.enter_context(contextlib.redirect_stderr(handle))
    return stack


def print_table(header: list[str], rows: list[list[str]], left: int = 1) -> None:
    """A Markdown table; the first `left` columns are left-aligned, the numbers right-aligned."""
    widths = [max(map(len, column)) for column in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(cell.ljust(width) if index < left else cell.rjust(width)
                                 for index, (cell, width) in enumerate(zip(cells, widths))) + " |"

    print(line(header))
    print("|" + "|".join("-" * (width + 1) + (":" if index >= left else "-")
                         for index, width in enumerate(widths)) + "|")
    for row in rows:
        print(line(row))


def built(recipe: dict, step: str, *parts: str) -> Path:
    """Where the workflow stores a step's artifact for `recipe`: results/<folder>/<key>/... (see rules/)."""
    from tunesmith.config.plan import folder_of, steps

    return Path(__file__).resolve().parents[1] / folder_of(steps(recipe)[step]) / Path(*parts)
