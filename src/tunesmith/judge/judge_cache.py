"""The judge's grade cache: one small JSON file per graded answer, written atomically.

Keyed by (judge backend + model + generation settings, grading template hash, task, answer text),
and kept outside the content-keyed artifacts (results/judge_cache/), so a rebuild regrades only the
answers that changed, and a recipe change that leaves the answers alone regrades nothing.

Why files and not sqlite: several judge jobs run at once (`--cores 3`, or Slurm jobs on other nodes),
and results/ is then often on NFS or Lustre, where sqlite's locking, and WAL's shared memory in
particular, are documented not to work. A file per entry needs no lock: each writer renames a
complete temporary file into place (atomic on POSIX within a directory), two jobs grading the same
answer write the same entry, and a job killed half-way leaves only whole entries behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tunesmith.jobs.atomic import write_json


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_key(judge_identity: dict, rubric_hash: str, task: dict, answer: str) -> str:
    """The key of one grade: who graded, with which prompt, which task (input, reference, aspect), which answer."""
    parts = {"judge": judge_identity, "rubric": rubric_hash, "task": task, "answer": text_hash(answer)}
    return text_hash(json.dumps(parts, sort_keys=True, ensure_ascii=False))


class GradeCache:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # not ours (entries are renamed into place whole): grade again, overwrite it

    def put(self, key: str, entry: dict) -> None:
        write_json(self._path(key), entry)
