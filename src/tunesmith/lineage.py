"""Lineage: the chain of jobs and files behind an artifact, walked back through the manifests every job
writes (tunesmith.jobs.manifest), from the submission to the source corpora; one task as the run saw it
(`task_overview`: input, reference, answer, verdict). `tunesmith lineage` prints them; rule trace_lineage
writes the submission's for the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith.data.tasks import TaskFileError, load_references, read_tasks
from tunesmith.jobs.atomic import atomic_path, content_hash, write_json
from tunesmith.jobs.manifest import index_manifests
from tunesmith.training.on_policy import pairs_origin


class LineageError(ValueError):
    """An artifact whose history cannot be traced."""


def _jsonl_row(path: Path, task_id: int) -> dict | None:
    with open(path, encoding="utf-8") as handle:
        return next((row for row in map(json.loads, handle) if row.get("task_id") == task_id), None)


def _task_details(manifest: dict, task_id: int, root: Path) -> list[str]:
    """What a stage's outputs say about one task: its answer, or the training rows that matched it."""
    lines = []
    for output in manifest["outputs"]:
        if output.endswith(".jsonl") and (root / output).is_file():
            row = _jsonl_row(root / output, task_id)
            if row:
                shown = {key: row[key] for key in ("output", "raw_output", "regenerated") if key in row}
                lines.append(f"task {task_id} in {output}: {json.dumps(shown, ensure_ascii=False)}")
        if output.endswith(".card.json") and (root / output).is_file():
            card = json.loads((root / output).read_text(encoding="utf-8"))
            matches = [m for m in card.get("contamination", []) if m["task_id"] == task_id]
            for match in matches:
                lines.append(f"quarantined as a copy of task {task_id}: {match['source']} line {match['line']}")
            for source, counts in card["sources"].items():
                lines.append(f"source {source}: {counts['rows_in']} rows in, {counts['kept']} kept")
    return lines


EVALUATION = "results/eval.json"  # the workflow's scores (rule evaluate_stages)
SHOWN_CHARACTERS = 300


def _chain(index: dict, target: str) -> list[str]:
    """Every path `target` was made from, itself included (normalised), nearest first."""
    found, stack = [], [os.path.normpath(target)]
    while stack:
        path = stack.pop(0)
        if path in found:
            continue
        found.append(path)
        if path in index:
            stack.extend(os.path.normpath(source) for source in index[path]["inputs"])
    return found


def _shown(text) -> str:
    text = json.dumps(text, ensure_ascii=False)
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + " …"


def _indexed(target: str, root: str | os.PathLike) -> tuple[Path, dict]:
    """(root as a Path, the current manifests under it), once `target` is known to be there."""
    if not (Path(root) / target).exists():
        raise LineageError(f"{target}: no such file under {root}")
    return Path(root), index_manifests(root)


def task_overview(target: str, task_id: int, root: str | os.PathLike = ".") -> list[str]:
    """One task as the run saw it: its input (from the task file along `target`'s lineage), its
    reference, the answer `target` holds and whether the evaluation found it correct. A task id the
    task file lacks is a LineageError."""
    root, index = _indexed(target, root)
    chain = _chain(index, target)
    scores = index.get(EVALUATION)
    report = json.loads((root / EVALUATION).read_text(encoding="utf-8")) if scores else None
    references = (report or {}).get("references") or {}
    tasks_file, tasks = None, {}
    for path in [*chain, *(_chain(index, EVALUATION) if scores else [])]:
        if path in index or path == references.get("path") or not path.endswith((".jsonl", ".json")):
            continue
        try:
            tasks = {task.task_id: task for task in read_tasks(root / path)}
        except (TaskFileError, OSError, UnicodeDecodeError):
            continue
        tasks_file = path
        break
    if tasks_file is None:
        raise LineageError(f"{target}: no task file along its lineage, so no task {task_id} to show")
    task = tasks.get(task_id)
    if task is None:
        raise LineageError(f"task {task_id} is not in {tasks_file} ({len(tasks)} tasks, ids "
                           f"{min(tasks)}–{max(tasks)})")
    lines = [f"task {task_id} ({tasks_file} line {task.line})", f"  input:     {_shown(task.input)}"]
    if references.get("path"):
        try:
            reference = load_references(root / references["path"], list(tasks.values())).by_task.get(task_id)
        except (TaskFileError, OSError) as error:
            reference, lines = None, lines + [f"  reference: unreadable ({error})"]
        if reference is not None:
            lines.append(f"  reference: {_shown(reference.output)}")
        elif not lines[-1].startswith("  reference"):
            lines.append(f"  reference: none ({references['path']} has no row for this task)")
    else:
        lines.append("  reference: none (the recipe sets no tasks.references" + ("" if report else
                     f", and there is no current {EVALUATION}") + ")")
    answered = [path for path in chain if path.endswith(".jsonl") and (root / path).is_file()]
    rows = [(path, _jsonl_row(root / path, task_id)) for path in answered]
    path, row = next(((path, row) for path, row in rows if row and "output" in row), (None, None))
    lines.append(f"  answer:    {_shown(row['output'])}  ({path})" if row else f"  answer:    none along {target}")
    generations = [path for path in chain if path.startswith(os.path.join("results", "generations", ""))]
    scored = [path for path in generations if report and path in map(os.path.normpath, report["inputs"])]
    if not scored:
        lines.append(f"  correct:   not scored ({EVALUATION} " + ("scores other answers" if report else "is not built")
                     + "; it needs tasks.references or a judge)")
        return lines
    stage = Path(scored[0]).stem
    verdict = next((row for row in report["per_task"].get(stage, []) if row["task_id"] == task_id), None)
    parts = []
    if verdict and "exact" in verdict:
        parts.append(f"{'yes' if verdict['exact'] else 'no'} (exact match; chrF {verdict['chrf']:.1f})")
    if verdict and verdict.get("grade") is not None:
        parts.append(f"judge grade {verdict['grade']}")
    lines.append(f"  correct:   {'; '.join(parts) or 'not scored (no reference or grade for this task)'}"
                 f"  ({EVALUATION}, stage {stage})")
    return lines


def lineage(target: str, task_id: int | None = None, root: str | os.PathLike = ".") -> list[str]:
    """The chain of jobs and files behind `target`, newest first, as printable lines. Paths are as
    the workflow wrote them, relative to its working directory `root`."""
    root, index = _indexed(target, root)
    if os.path.normpath(target) not in index:
        raise LineageError(f"{target}: no manifest under {root}; was it built by the tunesmith workflow there?")
    lines, seen = [], set()

    def walk(path: str, depth: int) -> None:
        key = os.path.normpath(path)
        manifest = index.get(key)
        indent = "  " * depth
        if not (root / path).exists():
            lines.append(f"{indent}{path}  [missing]")
            return
        if manifest is None:
            lines.append(f"{indent}{path}  [source, sha256 {content_hash(root / path)[:16]}]")
            return
        lines.append(f"{indent}{path}  [{manifest['stage']}, sha256 {manifest['outputs'].get(path, '')[:16]}]")
        if key in seen:
            lines.append(f"{indent}  (shown above)")
            return
        seen.add(key)
        details = [f"settings {manifest['settings_hash']}", f"seed {manifest['seed']}"]
        if manifest["template_hash"]:
            details.append(f"template {manifest['template_hash']}")
        details += [f"commit {(manifest['git_commit'] or 'unknown')[:10]}", manifest["device"], manifest["finished"]]
        lines.append(f"{indent}  " + ", ".join(details))
        if manifest["stage"] == "pairs_build":  # on-policy pairs: which SFT model wrote them (tunesmith.training.on_policy)
            lines.extend(f"{indent}  {line}" for line in pairs_origin(manifest["outputs"], root))
        if task_id is not None:
            lines.extend(f"{indent}  {line}" for line in _task_details(manifest, task_id, root))
        for source in manifest["inputs"]:
            walk(source, depth + 1)

    walk(target, 0)
    return lines


def write_lineage(target: str, text_path: str | os.PathLike, manifests_path: str | os.PathLike,
                  root: str | os.PathLike = ".") -> list[str]:
    """Write `target`'s lineage as text and every manifest along it as one JSON file (for the report)."""
    lines = lineage(target, root=root)
    index = index_manifests(root)
    chain = {path: index[path] for path in _chain(index, target) if path in index}  # nearest first
    with atomic_path(text_path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(manifests_path, chain)
    return lines
