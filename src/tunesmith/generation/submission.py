"""Writing and checking `submission.jsonl`, the file the competition grades.

The competition's checker is strict and a rejected upload costs an attempt, so the file is checked
here the way the checker reads it (raw bytes, one JSON object per `\\n`-ended line) before it is
moved into place: a submission that exists on disk is one that passed.
"""

from __future__ import annotations

import codecs
import functools
import json
import logging
import os
import re
from pathlib import Path

from jsonschema import Draft202012Validator

from tunesmith.config.schema import load_schema
from tunesmith.data.tasks import Task, read_tasks
from tunesmith.jobs.atomic import atomic_path

# A `\uXXXX` escape is one preceded by an odd number of backslashes: `\\u3042` is a literal
# backslash followed by text, which an answer may legitimately contain.
_UNICODE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u([0-9a-fA-F]{4})")

# Enough to act on; a file with every line wrong does not need every line listed.
_MAX_PROBLEMS_SHOWN = 20

log = logging.getLogger(__name__)


class SubmissionError(ValueError):
    """A submission (or the generations it is built from) that must not be uploaded; the message
    names the file and line of each problem."""


@functools.cache
def _row_validator() -> Draft202012Validator:
    schema = load_schema("submission_row.schema.json")
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _json_type_name(value) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _describe_schema_error(error) -> str:
    field = "/".join(str(part) for part in error.absolute_path)
    if error.validator == "type":
        subject = f"field '{field}'" if field else "line"
        return f"{subject} must be {error.validator_value}, got {_json_type_name(error.instance)}"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "…"
    return f"field '{field}': {message}" if field else message


def _escaped_non_ascii(text: str) -> list[str]:
    """The `\\uXXXX` escapes in a JSON line that stand for non-ASCII characters."""
    return [f"\\u{match.group(1)}" for match in _UNICODE_ESCAPE.finditer(text) if int(match.group(1), 16) >= 0x80]


def _first_difference(written: str, expected: str) -> str:
    position = next(
        (index for index, (a, b) in enumerate(zip(written, expected)) if a != b), min(len(written), len(expected))
    )
    return (
        f"at character {position + 1}: "
        f"{written[position:position + 20]!r} where the task file has {expected[position:position + 20]!r}"
    )


def _parse_lines(data: bytes, label: str, problems: list[str]) -> list[tuple[int, dict]]:
    """Rows that are well-formed on their own, with their line numbers; problems appended."""
    if data.startswith(codecs.BOM_UTF8):
        problems.append(f"{label}:1: starts with a UTF-8 byte-order mark; the checker expects plain UTF-8")
        data = data[len(codecs.BOM_UTF8):]
    # Split on b"\n" only: str.splitlines would also break inside answers at U+2028 and friends.
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":
        raw_lines.pop()  # the newline that ends the last row
    rows = []
    for number, raw in enumerate(raw_lines, start=1):
        where = f"{label}:{number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            problems.append(f"{where}: not UTF-8 (bad byte at column {error.start + 1})")
            continue
        if not text.strip():
            problems.append(f"{where}: blank line")
            continue
        escapes = _escaped_non_ascii(text)
        if escapes:
            problems.append(
                f"{where}: non-ASCII text written as escapes ({', '.join(escapes[:3])}); "
                "the checker expects raw UTF-8 (json.dumps(..., ensure_ascii=False))"
            )
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            problems.append(f"{where}: not valid JSON ({error.msg} at column {error.colno})")
            continue
        schema_errors = sorted(_row_validator().iter_errors(row), key=lambda error: list(error.absolute_path))
        if schema_errors:
            problems.extend(f"{where}: {_describe_schema_error(error)}" for error in schema_errors)
            continue
        # JSON Schema counts 1.0 as an integer; the checker compares ids as written.
        if type(row["task_id"]) is not int:
            problems.append(f"{where}: field 'task_id' must be written as an integer, got {row['task_id']!r}")
            continue
        rows.append((number, row))
    return rows


def _check_rows(rows, tasks: list[Task], label: str, tasks_path, problems: list[str], allow_empty: bool = False) -> None:
    tasks_by_id = {task.task_id: task for task in tasks}
    first_line: dict[int, int] = {}
    previous: tuple[int, int] | None = None  # (task_id, line) of the row before
    for number, row in rows:
        where, task_id = f"{label}:{number}", row["task_id"]
        if task_id in first_line:
            problems.append(f"{where}: task_id {task_id} duplicates line {first_line[task_id]}")
            continue
        first_line[task_id] = number
        task = tasks_by_id.get(task_id)
        if task is None:
            problems.append(f"{where}: task_id {task_id} is not in {tasks_path}")
        elif row["input"] != task.input:
            problems.append(
                f"{where}: task_id {task_id}: input differs from {tasks_path}:{task.line} "
                f"{_first_difference(row['input'], task.input)}"
            )
        if not row["output"].strip():
            # Valid for the checker, but it scores the minimum: refused unless the recipe allows it.
            if allow_empty:
                log.warning("%s: task_id %s: output is empty; graders count it as a failure", where, task_id)
            else:
                problems.append(f"{where}: task_id {task_id}: output is empty (graders score it the minimum); "
                                "regenerate it, or set submission.allow_empty: true to submit it anyway")
        if previous is not None and task_id < previous[0]:
            problems.append(
                f"{where}: task_id {task_id} comes after task_id {previous[0]} (line {previous[1]}); "
                "rows must be in task-id order"
            )
        previous = (task_id, number)
    missing = [task.task_id for task in tasks if task.task_id not in first_line]
    if missing:
        problems.append(f"{label}: no row for task_id {', '.join(map(str, missing))} of {tasks_path}")


def _check_file(path, label: str, tasks: list[Task], tasks_path, heading: str, allow_empty: bool = False) -> int:
    problems: list[str] = []
    rows = _parse_lines(Path(path).read_bytes(), label, problems)
    _check_rows(rows, tasks, label, tasks_path, problems, allow_empty)
    if problems:
        shown = problems[:_MAX_PROBLEMS_SHOWN]
        if len(problems) > len(shown):
            shown.append(f"… and {len(problems) - len(shown)} more")
        raise SubmissionError(f"{heading}: {len(problems)} problem(s)\n" + "\n".join(shown))
    return len(rows)


def validate_submission(path: str | os.PathLike, tasks_path: str | os.PathLike, allow_empty: bool = False) -> int:
    """Check a submission against the task file as the competition's checker would, and refuse empty
    outputs unless `allow_empty` (submission.allow_empty); return the row count.

    Raises SubmissionError listing every problem found (file and line for each).
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    return _check_file(path, str(path), read_tasks(tasks_path), tasks_path, heading=str(path), allow_empty=allow_empty)


def _read_generation_lines(path: str | os.PathLike) -> dict[int, tuple[int, str]]:
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    found: dict[int, tuple[int, str]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise SubmissionError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise SubmissionError(f"{where}: expected a JSON object, got {_json_type_name(row)}")
            task_id, output = row.get("task_id"), row.get("output")
            if type(task_id) is not int:
                raise SubmissionError(f"{where}: 'task_id' must be an integer, got {_json_type_name(task_id)}")
            if not isinstance(output, str):
                raise SubmissionError(f"{where}: 'output' must be a string, got {_json_type_name(output)}")
            try:
                output.encode("utf-8")
            except UnicodeEncodeError:
                raise SubmissionError(f"{where}: task_id {task_id}: output is not valid Unicode (lone surrogate)") from None
            if task_id in found:
                raise SubmissionError(f"{where}: task_id {task_id} already answered at line {found[task_id][0]}")
            found[task_id] = (number, output)
    return found


def read_generations(path: str | os.PathLike) -> dict[int, str]:
    """Outputs by task id from a generations JSONL file (rows with at least task_id and output)."""
    return {task_id: output for task_id, (_, output) in _read_generation_lines(path).items()}


def write_submission(
    generations_path: str | os.PathLike, tasks_path: str | os.PathLike, out_path: str | os.PathLike,
    allow_empty: bool = False,
) -> int:
    """Build the submission from generations and the task file, validate it (empty outputs refused
    unless `allow_empty`), then move it into place.

    On any problem nothing is written and an existing `out_path` is left as it was. Returns the row count.
    """
    tasks = read_tasks(tasks_path)
    generations = _read_generation_lines(generations_path)
    known_ids = {task.task_id for task in tasks}
    unknown = [(line, task_id) for task_id, (line, _) in generations.items() if task_id not in known_ids]
    if unknown:
        line, task_id = min(unknown)
        raise SubmissionError(
            f"{generations_path}:{line}: task_id {task_id} is not in {tasks_path} "
            f"({len(unknown)} unknown id(s)); were these generations made for another task file?"
        )
    # A task without a generation is left out here so that validation names it.
    rows = [
        {"task_id": task.task_id, "input": task.input, "output": generations[task.task_id][1]}
        for task in tasks
        if task.task_id in generations
    ]
    with atomic_path(out_path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        # Messages name out_path, not the temporary file, since that is the name the reader knows.
        heading = f"{out_path} not written (built from {generations_path})"
        _check_file(tmp, str(out_path), tasks, tasks_path, heading=heading, allow_empty=allow_empty)
    return len(rows)
