"""Manifests: which inputs, settings and code made each artifact.

Every job writes `<output>.manifest.json` beside its main output: content hashes of its inputs and
outputs, the recipe sections it read (and their hash), seed, template hash, package versions, the
project's git commit, the device, and start/end times. `tunesmith.lineage` walks those files back from
the submission to the source corpora. A manifest whose outputs are gone (deleted by hand, or by Snakemake
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

from tunesmith.jobs.atomic import content_hash, remove_stale_partials, section_hash, write_json
from tunesmith.jobs.reads import RecordingParams, recording_params


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
