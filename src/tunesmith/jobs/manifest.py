"""Manifests and lineage: which inputs, settings and code made each artifact.

Every job writes `<output>.manifest.json` beside its main output: content hashes of its inputs and
outputs, the recipe sections it read (and their hash), seed, template hash, package versions, the
project's git commit, the device, and start/end times. `lineage` walks those files back from the
submission to the source corpora. A manifest whose outputs are gone (deleted by hand, or by Snakemake
before a rerun that then failed) describes nothing: readers skip it, and a job removes its own old
manifest as it starts.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from tunesmith.config.recipe import section_hash
from tunesmith.jobs.atomic import atomic_path, content_hash, remove_stale_partials, write_json
from tunesmith.jobs.reads import RecordingParams, recording_params


class LineageError(ValueError):
    """An artifact whose history cannot be traced."""


PACKAGES = ("tunesmith", "torch", "transformers", "trl", "peft", "datasets", "duckdb", "snakemake", "bitsandbytes")
SUFFIX = ".manifest.json"


def manifest_path(output: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(output).rstrip('/')}{SUFFIX}")


def _git_commit() -> str | None:
    """The project's commit, with `+dirty` when tracked files differ from it."""
    repo = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        changes = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = head.stdout.strip()
    return (commit + ("+dirty" if changes.stdout.strip() else "")) if commit else None


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"


def _versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _hashes(paths) -> dict[str, str]:
    return {os.fspath(path): content_hash(path) for path in paths if Path(path).exists()}


def write_manifest(stage: str, inputs: list[str], outputs: list[str], settings: dict, started: str,
                   settings_read: list[str] | None = None) -> Path:
    """Write the manifest of a finished job beside its first output."""
    template = settings.get("template")  # model rules receive the recipe's template section
    manifest = {
        "stage": stage,
        "outputs": _hashes(outputs),
        "inputs": _hashes(inputs),
        "settings": settings,
        "settings_hash": section_hash(settings),
        "settings_read": settings_read,  # the keys of `settings` the job looked up (tunesmith.jobs.reads)
        "seed": settings.get("seed"),
        "template_hash": None,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "device": _device(),
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if template is not None:
        from tunesmith.model.template import PromptTemplate

        manifest["template_hash"] = PromptTemplate(template).hash
    path = manifest_path(outputs[0])
    write_json(path, manifest)
    return path


@contextmanager
def recorded(job, stage: str):
    """Around a Snakemake script's work: first clear what an earlier, killed or failed attempt left beside
    the job's outputs (temporary `.partial` siblings, the old manifest); on success, write the manifest.
    Scripts name the job's stage as the stage registry does: `tunesmith.workflow.job_label(snakemake)`."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    outputs = [os.fspath(p) for p in job.output]
    for output in outputs:
        remove_stale_partials(output)
        remove_stale_partials(manifest_path(output))
    if outputs:
        manifest_path(outputs[0]).unlink(missing_ok=True)
    params, read = job.params, set()
    with recording_params(job, RecordingParams(params, read)):  # which settings the job really looks up
        yield
    settings = {name: value for name, value in params.items()}
    write_manifest(stage, [os.fspath(p) for p in job.input], outputs, settings, started, settings_read=sorted(read))


def _is_current(manifest: dict, root: Path) -> bool:
    """Whether every output the manifest records still exists."""
    return all((root / output).exists() for output in manifest["outputs"])


def current_manifest(output: str | os.PathLike, root: str | os.PathLike = ".") -> dict | None:
    """The manifest beside `output`, or None when there is none or its outputs are gone."""
    path = Path(root) / manifest_path(output)
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return manifest if _is_current(manifest, Path(root)) else None


def index_manifests(root: str | os.PathLike = ".") -> dict[str, dict]:
    """Every current manifest the workflow wrote under `root` (top level and results/), by output path."""
    root = Path(root)
    index = {}
    found = [*root.glob(f"*{SUFFIX}"), *root.glob(f"results/**/*{SUFFIX}")]
    for path in sorted(found):
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not _is_current(manifest, root):
            continue
        for output in manifest["outputs"]:
            index[os.path.normpath(output)] = manifest
    return index


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


def task_overview(target: str, task_id: int, root: str | os.PathLike = ".") -> list[str]:
    """One task as the run saw it: its input (from the task file along `target`'s lineage), its
    reference, the answer `target` holds and whether the evaluation found it correct. A task id the
    task file lacks is a LineageError."""
    from tunesmith.data.tasks import TaskFileError, load_references, read_tasks

    root, index = Path(root), index_manifests(root)
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
    root = Path(root)
    index = index_manifests(root)
    if not (root / target).exists():
        raise LineageError(f"{target}: no such file under {root}")
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
            from tunesmith.training.on_policy import pairs_origin

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
    chain, stack = {}, [os.path.normpath(target)]
    while stack:
        path = stack.pop()
        manifest = index.get(path)
        if manifest is None or path in chain:
            continue
        chain[path] = manifest
        stack.extend(os.path.normpath(source) for source in manifest["inputs"])
    with atomic_path(text_path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(manifests_path, chain)
    return lines
