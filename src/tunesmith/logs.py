"""Send a job's output to its Snakemake log file."""

from __future__ import annotations

import logging
import os
import sys


def log_to(path: str | os.PathLike) -> None:
    """Redirect stdout, stderr (progress bars, warnings, tracebacks) and logging to `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handle = open(path, "w", encoding="utf-8", buffering=1)
    sys.stdout = sys.stderr = handle
    logging.basicConfig(
        stream=handle, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
