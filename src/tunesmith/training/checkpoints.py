"""Resumable checkpoints of a training run, and which of them a restart may trust.

With `save_steps` > 0, checkpoints go to `<adapter>.checkpoints/<key>`, where the key hashes
everything that shapes the run (settings, data, adapters beneath, base, template, seed, process
count), so a restart of the same job continues from its last checkpoint and a changed job starts
afresh. transformers writes a checkpoint's files one after another into `checkpoint-N` and its
`trainer_state.json` last; a job killed (or out of disk) in between leaves a folder that
`get_last_checkpoint` would still pick, and every restart would fail on it. So a checkpoint counts
only when its state parses and names its own step; the others are removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from tunesmith.jobs.atomic import section_hash
from tunesmith.jobs.atomic import content_hash

log = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE = "trainer_state.json"


def checkpoint_dir(out_dir: str, stage_section: dict, inputs: list[str], shape: list, scratch: str = "") -> str:
    """Where a run keeps its resumable checkpoints (see above). Without `save_steps` nothing is
    resumable, and the trainer works in `scratch` (inside the temporary output, so a failure leaves
    nothing)."""
    if not stage_section["save_steps"] and scratch:
        return os.path.join(scratch, "trainer")
    key = section_hash([stage_section, [content_hash(path) for path in inputs], shape])
    return os.path.join(f"{out_dir}.checkpoints", key)


def is_complete(folder: Path, step: int) -> bool:
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return state.get("global_step") == step and any(folder.glob("adapter_model.*"))


def last_complete_checkpoint(folder: str, remove_incomplete: bool = True) -> str | None:
    """The newest complete `checkpoint-N` in `folder`; newer incomplete ones are removed (by the main
    process only; the others skip them the same way)."""
    if not os.path.isdir(folder):
        return None
    found = sorted(((int(match.group(1)), Path(folder) / name) for name in os.listdir(folder)
                    if (match := _CHECKPOINT.match(name)) and (Path(folder) / name).is_dir()), reverse=True)
    for step, path in found:
        if is_complete(path, step):
            return str(path)
        log.warning("skipping incomplete checkpoint %s (a run stopped while writing it)", path)
        if remove_incomplete:
            shutil.rmtree(path, ignore_errors=True)
    return None
