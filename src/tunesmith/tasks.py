"""Reading the competition task file and its reference answers.

Real task files are JSON Lines, except when they are not: some rows are pretty-printed over several
lines, and inputs carry `_x000D_` residue from an Excel export. The reader decodes one JSON value
after another from the whole text, so either layout (or a mix) is read the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.normalize import normalize_text


class TaskFileError(ValueError):
    """A task or reference file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Task:
    task_id: int
    input: str  # exactly as in the task file: the submission echoes it
    line: int  # 1-based line where the record starts

    @property
    def prompt_text(self) -> str:
        """The input as the model sees it: normalised like the training data."""
        return normalize_text(self.input)


def _iter_json_values(path: Path):
    """Yield (line_number, value) for each top-level JSON value in the file."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        line = text.count("\n", 0, position) + 1
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            error_line = text.count("\n", 0, error.pos) + 1
            # Name the line where the broken record starts: an unclosed brace is only noticed later.
            raise TaskFileError(f"{path}:{line}: not valid JSON ({error.msg} at line {error_line})") from None
        yield line, value


def _read_records(path: str | os.PathLike, fields: dict[str, type]) -> list[tuple[int, dict]]:
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: file not found")
    records, seen = [], {}
    for line, value in _iter_json_values(path):
        if not isinstance(value, dict):
            raise TaskFileError(f"{path}:{line}: expected a JSON object, got {type(value).__name__}")
        for name, kind in fields.items():
            if name not in value:
                raise TaskFileError(f"{path}:{line}: missing field '{name}'")
            if not isinstance(value[name], kind) or isinstance(value[name], bool):
                raise TaskFileError(
                    f"{path}:{line}: field '{name}' must be {kind.__name__}, got {type(value[name]).__name__}"
                )
        task_id = value["task_id"]
        if task_id in seen:
            raise TaskFileError(f"{path}:{line}: task_id {task_id} already defined at line {seen[task_id]}")
        seen[task_id] = line
        records.append((line, value))
    if not records:
        raise TaskFileError(f"{path}: no tasks in file")
    return records


def read_tasks(path: str | os.PathLike) -> list[Task]:
    """All tasks of a task file, in task-id order."""
    records = _read_records(path, {"task_id": int, "input": str})
    tasks = [Task(task_id=value["task_id"], input=value["input"], line=line) for line, value in records]
    return sorted(tasks, key=lambda task: task.task_id)


def read_references(path: str | os.PathLike) -> dict[int, str]:
    """Reference outputs by task id, for scoring."""
    records = _read_records(path, {"task_id": int, "output": str})
    return {value["task_id"]: value["output"] for _, value in records}


def read_task_families(path: str | os.PathLike) -> dict[int, str]:
    """The optional `family` of each task (a category such as "capital" or "addition"), by task id, for
    scores per family; tasks without one are left out."""
    families = {}
    for line, value in _read_records(path, {"task_id": int, "input": str}):
        family = value.get("family")
        if family is None:
            continue
        if not isinstance(family, str) or not family.strip():
            raise TaskFileError(f"{path}:{line}: field 'family' must be a non-empty string, got {family!r:.60}")
        families[value["task_id"]] = family
    return families
