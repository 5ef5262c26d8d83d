"""Where a training function runs among several processes: its rank, shared preparation, its outputs.

A training function is the same code on one process and on several (`tunesmith.training.launcher` starts
them); these helpers are what differs. Rank 0 alone writes the adapter (atomically, as a single
process does); the others write nothing that stays.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

from tunesmith.jobs.atomic import atomic_path


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def nodes() -> int:
    """The machines the process group spans (torchrun's worker groups, one per node)."""
    return int(os.environ.get("GROUP_WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


@contextmanager
def main_process_first():
    """Rank 0 prepares (and caches) the data before the others read it; nothing on one process."""
    if world_size() == 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


@contextmanager
def output_folder(out_dir: str):
    """Where a run writes its output: on rank 0 the atomic temporary folder, moved onto `out_dir` on
    success; on other ranks a throwaway folder (they must still call save_model, which gathers
    sharded weights, but write nothing that stays)."""
    if is_main_process():
        with atomic_path(out_dir, directory=True) as tmp:
            yield str(tmp)
    else:
        with tempfile.TemporaryDirectory(prefix=f"tunesmith-rank{rank()}-") as tmp:
            yield tmp
