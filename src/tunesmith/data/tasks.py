"""Reading the competition task file, its reference answers and reference grades.

Real task files are JSON Lines, except when they are not: some rows are pretty-printed over several
lines, and inputs carry `_x000D_` residue from an Excel export. The reader decodes one JSON value
after another from the whole text, so either layout (or a mix) is read the same way.

References come as JSONL or as the ELYZA-tasks-100 CSV (`input,output,eval_aspect`, quoted fields
spanning lines, no ids). A row is matched to its task by `task_id` when it has one, else by its
input text (normalised, case and spaces ignored). `check_task_files` reports every problem of a
recipe's task-side files at once, so the workflow can refuse them before any job runs.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.normalize import clean_text, match_key, normalize_text

# Enough to act on; a file with every row wrong does not need every row listed.
MAX_PROBLEMS_SHOWN = 20


class TaskFileError(ValueError):
    """A task or reference file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Task:
    task_id: int
    input: str  # exactly as in the task file: the submission echoes it
    line: int  # 1-based line where the record starts

    @property
    def prompt_text(self) -> str:
        """The input as the model sees it: as written, cleaned of noise like the training text
        (tunesmith.data.normalize.clean_text); generation normalises it instead when the recipe's
        curate.normalize_training_text normalised the training text."""
        return clean_text(self.input)


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


@dataclass(frozen=True)
class Reference:
    """What a references file says about one task: a reference answer and/or grading criteria."""
    task_id: int
    output: str | None
    eval_aspect: str | None
    line: int


@dataclass(frozen=True)
class GradedAnswer:
    """An answer someone (e.g. GPT-4) already graded: the file a judge's agreement is measured on."""
    task_id: int
    output: str
    grade: int
    line: int


@dataclass
class References:
    by_task: dict[int, Reference]
    missing: list[int] = field(default_factory=list)  # tasks of the task file that no row covers


def _csv_records(path: Path) -> list[tuple[int, dict]]:
    """Rows of a CSV file with the line where each starts (quoted fields may span lines)."""
    with open(path, encoding="utf-8-sig", newline="") as handle:  # newline="": CR LF inside quotes stays
        text = handle.read()
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise TaskFileError(f"{path}: no rows in file") from None
    except csv.Error as error:
        raise TaskFileError(f"{path}:1: not valid CSV ({error})") from None
    header = [name.strip() for name in header]
    records, start = [], reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise TaskFileError(f"{path}:{start}: not valid CSV ({error})") from None
        if row and any(cell.strip() for cell in row):
            if len(row) != len(header):
                raise TaskFileError(f"{path}:{start}: {len(row)} fields where the header has {len(header)}")
            records.append((start, dict(zip(header, row))))
        start = reader.line_num + 1
    if not records:
        raise TaskFileError(f"{path}: no rows in file")
    return records


def _csv_value(path: Path, line: int, record: dict, name: str, kind: type):
    """A CSV cell as `kind` (ids and grades are integers written as text); empty is absent."""
    text = record.get(name, "")
    if text is None or not text.strip():
        return None
    if kind is str:
        return text
    try:
        return int(text.strip())
    except ValueError:
        raise TaskFileError(f"{path}:{line}: field '{name}' must be an integer, got {text.strip()!r}") from None


def _rows(path: str | os.PathLike, fields: dict[str, type], required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """Records of a JSONL or CSV file (by suffix) with the fields given; `task_id` or `input` names the task."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: file not found")
    if path.suffix.lower() in (".csv", ".tsv"):
        raw = _csv_records(path)
        header = set(raw[0][1])
        for name in required:
            if name not in header:
                raise TaskFileError(f"{path}:1: no '{name}' column (columns: {', '.join(sorted(header))})")
        if not {"task_id", "input"} & header:
            raise TaskFileError(f"{path}:1: needs a 'task_id' or an 'input' column to match rows to tasks")
        return [(line, {name: _csv_value(path, line, record, name, kind) for name, kind in fields.items()})
                for line, record in raw]
    records = []
    for line, value in _iter_json_values(path):
        if not isinstance(value, dict):
            raise TaskFileError(f"{path}:{line}: expected a JSON object, got {type(value).__name__}")
        for name, kind in fields.items():
            if name in required and name not in value:
                raise TaskFileError(f"{path}:{line}: missing field '{name}'")
            present = value.get(name)
            if present is not None and (not isinstance(present, kind) or isinstance(present, bool)):
                raise TaskFileError(
                    f"{path}:{line}: field '{name}' must be {kind.__name__}, got {type(present).__name__}")
        if value.get("task_id") is None and value.get("input") is None:
            raise TaskFileError(f"{path}:{line}: needs 'task_id' or 'input' to match it to a task")
        records.append((line, {name: value.get(name) for name in fields}))
    if not records:
        raise TaskFileError(f"{path}: no tasks in file")
    return records


def _match(path, records: list[tuple[int, dict]], tasks: list[Task]) -> tuple[dict[int, tuple[int, dict]], list[str]]:
    """Each record's task (by task_id, else by input text); problems for rows matching none, or one twice."""
    by_id = {task.task_id: task for task in tasks}
    by_text: dict[str, list[Task]] = {}
    for task in tasks:
        by_text.setdefault(match_key(task.input), []).append(task)
    matched: dict[int, tuple[int, dict]] = {}
    problems = []
    for line, record in records:
        if record.get("task_id") is not None:
            task = by_id.get(record["task_id"])
            if task is None:
                problems.append(f"{path}:{line}: task_id {record['task_id']} is not in the task file")
                continue
        else:
            candidates = by_text.get(match_key(record["input"]), [])
            if len(candidates) != 1:
                shown = normalize_text(record["input"])[:30].replace("\n", " ")
                problems.append(f"{path}:{line}: input '{shown}…' matches "
                                + ("no task of the task file" if not candidates else
                                   f"{len(candidates)} tasks ({', '.join(str(t.task_id) for t in candidates)})"))
                continue
            task = candidates[0]
        if task.task_id in matched:
            problems.append(f"{path}:{line}: task {task.task_id} already has a row at line {matched[task.task_id][0]}")
            continue
        matched[task.task_id] = (line, record)
    return matched, problems


def _raise(problems: list[str]) -> None:
    if problems:
        more = len(problems) - MAX_PROBLEMS_SHOWN
        shown = problems[:MAX_PROBLEMS_SHOWN] + ([f"... and {more} more"] if more > 0 else [])
        raise TaskFileError("\n".join(shown))


def load_references(path: str | os.PathLike, tasks: list[Task]) -> References:
    """Reference answers and per-task grading criteria (`eval_aspect`) of the tasks, matched to them;
    tasks no row covers are listed in `missing` (scores count them), rows that match no task are errors."""
    records = _rows(path, {"task_id": int, "input": str, "output": str, "eval_aspect": str}, ("output",))
    matched, problems = _match(path, records, tasks)
    _raise(problems)
    by_task = {task_id: Reference(task_id, record["output"], record["eval_aspect"] or None, line)
               for task_id, (line, record) in matched.items()}
    return References(by_task, missing=[task.task_id for task in tasks if task.task_id not in by_task])


def read_reference_grades(path: str | os.PathLike, tasks: list[Task]) -> dict[int, GradedAnswer]:
    """Answers with the grade (1–5) another judge gave them, matched to the tasks."""
    records = _rows(path, {"task_id": int, "input": str, "output": str, "grade": int}, ("output", "grade"))
    matched, problems = _match(path, records, tasks)
    for task_id, (line, record) in matched.items():
        if record["output"] is None:
            problems.append(f"{path}:{line}: no 'output': the graded answer is needed to grade it again")
        if record["grade"] is None or not 1 <= record["grade"] <= 5:
            problems.append(f"{path}:{line}: grade must be an integer from 1 to 5, got {record['grade']!r}")
    _raise(problems)
    return {task_id: GradedAnswer(task_id, record["output"], record["grade"], line)
            for task_id, (line, record) in matched.items()}


def check_task_files(recipe: dict) -> list[str]:
    """Every problem of a validated recipe's task file, references, reference grades and judge prompt,
    each starting with the recipe key that names the file; empty when all can be used."""
    problems = []

    def collect(key: str, check) -> None:
        try:
            check()
        except TaskFileError as error:
            problems.extend(f"{key}: {line}" for line in str(error).splitlines())

    tasks: list[Task] = []

    def read() -> None:
        tasks.extend(read_tasks(recipe["tasks"]["path"]))

    collect("tasks.path", read)
    if not tasks:
        return problems  # references cannot be matched to tasks that could not be read
    if recipe["tasks"]["references"]:
        collect("tasks.references", lambda: load_references(recipe["tasks"]["references"], tasks))
    judge = recipe.get("judge", {})
    if judge.get("reference_grades"):
        collect("judge.reference_grades", lambda: read_reference_grades(judge["reference_grades"], tasks))
    return problems
