"""`tunesmith explain`: before running, which targets would rebuild, and which recipe key or file causes it.

Snakemake decides what runs (a dry run, parsed); this module says why in recipe terms. A keyed
artifact that is missing is compared with the newest artifact of the same stage already built: the
recipe keys whose values differ are the cause, or, when none differ, the upstream artifacts it consumes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import plan
from tunesmith.config.recipe import load_recipe_and_variants
from tunesmith.jobs.manifest import current_manifest
from tunesmith.workflow import KEYED_PATH




@dataclass
class Job:
    rule: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    reason: str = ""
    causes: list[str] = field(default_factory=list)


def planned_jobs(text: str) -> list[Job]:
    """The jobs of a `snakemake --dry-run` printout (rule, outputs, reason)."""
    jobs = []
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            jobs.append(Job(stripped.split()[1].rstrip(":")))
        elif jobs and stripped.startswith("input: "):
            jobs[-1].inputs = [path.strip() for path in stripped.removeprefix("input: ").split(", ")]
        elif jobs and stripped.startswith("output: "):
            jobs[-1].outputs = [path.strip() for path in stripped.removeprefix("output: ").split(", ")]
        elif jobs and stripped.startswith("reason: "):
            jobs[-1].reason = stripped.removeprefix("reason: ")
    return jobs


ABSENT = object()  # a key one side does not have at all (not a null value)


def differences(old, new, path: str = "") -> list[str]:
    """The leaf keys whose values differ between two JSON-like values, as dotted paths (list items as
    `[index]`) with both values; a key only one side has is said so, never shown as null."""
    show = lambda value: json.dumps(value, ensure_ascii=False)  # noqa: E731
    if old is ABSENT:
        return [f"{path}: {show(new)} (the earlier build had no such key)"]
    if new is ABSENT:
        return [f"{path}: {show(old)} in the earlier build, no such key now"]
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += differences(old.get(key, ABSENT), new.get(key, ABSENT), f"{path}.{key}" if path else str(key))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for index, (a, b) in enumerate(zip(old, new)) for line in differences(a, b, f"{path}[{index}]")]
    if old != new:
        return [f"{path}: {show(old)} → {show(new)}"]
    return []


def previous_build(output: str, root: Path) -> tuple[str, dict] | None:
    """The newest manifest of the same stage under another key (what this job would replace)."""
    match = KEYED_PATH.match(output)
    if not match:
        return None
    found = []
    for folder in (root / match["head"]).glob("*"):
        candidate = f"{match['head']}{folder.name}{match['tail']}"
        data = current_manifest(candidate, root) if folder.name != match["key"] else None
        if data is not None:
            found.append((data["finished"], candidate, data))
    if not found:
        return None
    _, candidate, data = max(found, key=lambda item: item[:2])
    return candidate, data


def causes(job: Job, steps: dict[str, plan.Step], root: Path, rebuilt: set[str]) -> list[str]:
    """Why a job runs, in recipe terms where the job is keyed."""
    output = job.outputs[0] if job.outputs else ""
    match = KEYED_PATH.match(output)
    if match and "Missing output files" in job.reason and match["key"] in steps:
        step = steps[match["key"]]
        previous = previous_build(output, root)
        if previous is None:
            return ["never built with any settings"]
        candidate, manifest = previous
        # A step's settings are the recipe keys it reads, shaped like the recipe; its rule receives
        # them as params by section, which is what the manifest recorded. A section the rule gets in
        # another form (curation's lengths, the task file as an input) is not in the manifest under its
        # name: it cannot be compared there, and is not a change (its files and upstream keys are).
        recorded = manifest["settings"]
        shared = [name for name in step.settings if name in recorded]
        changed = differences({name: recorded[name] for name in shared}, {name: step.settings[name] for name in shared})
        consumed = [f"consumes {path}, which is rebuilt" for path in job.inputs if path in rebuilt]
        return [*changed, *consumed, f"(replaces {candidate} for this recipe; that one stays cached)"]
    found = []
    for part in re.split(r";\s*", job.reason):
        if part.startswith("Input files updated by another job"):
            found.append("consumes rebuilt " + part.split(":", 1)[1].strip())
        elif part.startswith("Updated input files"):
            found.append("changed file " + part.split(":", 1)[1].strip())
        elif part.startswith("Code has changed"):
            found.append(f"the code of rule {job.rule} changed")
        elif part:
            found.append(part)
    return found


def explain(recipe: str | os.PathLike | None = None, targets: list[str] | None = None,
            root: str | os.PathLike = ".", snakefile: str | os.PathLike = "Snakefile") -> list[str]:
    """Lines saying which jobs a build of `targets` would run and the recipe keys or files behind each.
    `root` is the workflow's working directory, `snakefile` the workflow (relative paths from the
    current directory); the recipe defaults to the workflow's recipes/default.yaml."""
    root, snakefile = Path(root), Path(snakefile).resolve()
    if not snakefile.is_file():
        raise OSError(f"{snakefile}: no Snakefile there; run from the project folder or pass --snakefile")
    recipe_path = Path(recipe) if recipe else snakefile.parent / "recipes" / "default.yaml"
    config, sweep = load_recipe_and_variants(recipe_path)
    steps = {step.key: step for variant in {"": config, **sweep}.values()
             for step in plan.steps(variant).values()}
    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), *(targets or []), "--dry-run",
               "--directory", str(root), "--config", f"recipe={recipe_path.resolve()}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake --dry-run failed:\n{(result.stdout + result.stderr)[-3000:]}")
    jobs = [job for job in planned_jobs(result.stdout) if job.rule != "all"]
    if not jobs:
        return ["Nothing to rebuild: every target is up to date."]
    rebuilt = {output for job in jobs for output in job.outputs}
    lines = []
    for job in jobs:
        lines.append(f"{job.rule}: {', '.join(job.outputs)}")
        lines.extend(f"    {cause}" for cause in causes(job, steps, root, rebuilt))
    lines.append(f"{len(jobs)} jobs would run.")
    return lines
