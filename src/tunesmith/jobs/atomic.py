"""Atomic outputs: a job that dies half-way never leaves a plausible-looking partial file or folder.

Everything is written under a temporary sibling name, `.<name>.<random>.partial`, and moved into place
with one `os.replace`, which is atomic on POSIX file systems when both names are in the same directory.
A writer killed by a signal cannot delete its temporary sibling; `remove_stale_partials` does, when
the job that owns the output starts again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = ".partial"


@contextmanager
def atomic_path(final: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success move it onto `final`, on error delete it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=PARTIAL, dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=PARTIAL, dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod((0o777 if directory else 0o666) & ~umask)
    try:
        yield tmp
        if directory and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale_partials(final: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings that killed writers of `final` left, and return them.

    Only for a caller that knows no writer of `final` is running: Snakemake runs one job per output
    at a time and locks the working directory against a second snakemake, so a job may clear its
    own outputs' siblings as it starts (`tunesmith.jobs.manifest.recorded`).
    """
    final = Path(final)
    # tempfile's random part has no dot, so `.out.jsonl.manifest.json.<random>.partial` (another
    # output's temporary) is not taken for one of `out.jsonl`.
    # DuckDB's COPY writes `tmp_<target>` beside its target first: curation no longer writes with
    # COPY, but such a file a killed older run left is cleared all the same.
    own = re.compile(rf"(tmp_)?\.{re.escape(final.name)}\.[^.]+{re.escape(PARTIAL)}")
    if not final.parent.is_dir():
        return []
    stale = [path for path in final.parent.iterdir() if own.fullmatch(path.name)]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as UTF-8 JSON Lines (Japanese unescaped), atomically. Returns the row count."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: str | os.PathLike, data) -> None:
    """Write one JSON document (indented, Japanese unescaped), atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON Lines file that this package wrote (one object per line)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def copy_files(sources: list, targets: list) -> None:
    """Each source copied to its target (the current recipe's keyed results at their fixed paths), atomically."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources for {len(targets)} targets")
    for source, target in zip(sources, targets):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def section_hash(section) -> str:
    """A short, stable hash of a recipe section (key order does not matter)."""
    canonical = json.dumps(section, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def local_files(folder: str | os.PathLike) -> list[str]:
    """The files of a folder (hidden ones skipped), sorted: a local model folder's files are the fetch job's
    inputs (tunesmith.config.plan) and what its snapshot holds (tunesmith.hub.fetch)."""
    folder = Path(folder)
    return sorted(str(file) for file in folder.rglob("*")
                  if file.is_file() and not any(part.startswith(".") for part in file.relative_to(folder).parts))
