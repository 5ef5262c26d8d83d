"""Progress of long jobs: lines in the job's log that `cat` shows as written, and a few on the terminal.

A job's output goes to its log (`tunesmith.jobs.logs.log_to`), which is no terminal: a tqdm bar there is one
endless line of carriage returns. So libraries' own bars are switched off in jobs (`quiet_library_bars`),
and long loops (generation, judging, training) log one line every `every` items or LOG_SECONDS
(`Progress`, `progress`, `training_lines`: count, share, time spent and left, the trainer's metrics).

On the terminal, a job that runs longer than CONSOLE_SECONDS prints its latest log line every
CONSOLE_SECONDS, the first time with the `tail -f` command that follows its log (`Heartbeat`): any job
(curation of a big corpus, training, generation, a judge) shows that it moves, whatever writes its log,
child processes included, and short jobs stay silent.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

LOG_SECONDS = 30.0
CONSOLE_SECONDS = float(os.environ.get("TUNESMITH_CONSOLE_SECONDS", 30))
SHOWN_CHARACTERS = 160
# Read by those libraries when they are imported (and by any process a job starts, e.g. accelerate's).
QUIET_ENVIRONMENT = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                     "TQDM_DISABLE": "1"}
HEADER = "==== tunesmith attempt "  # tunesmith.jobs.logs' header of each attempt: not news of progress
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ [A-Z]+ ")
# Python's warning lines (`path.py:12: FutureWarning: ...`, then the warning's source line indented, often
# `  warnings.warn(`) and libraries' import-time chatter say nothing of how far a job is: the heartbeat
# shows the latest line before them.
WARNING_LINE = re.compile(r"^\S.*:\d+: \w*Warning: ")
NOISE = re.compile(r"Failed to load CPU gemm_4bit_forward")  # bitsandbytes, on every import without a GPU

log = logging.getLogger("tunesmith.jobs.progress")


def quiet_library_bars() -> None:
    """Turn off the progress bars of the libraries a job uses: those imported later read the
    environment, those already imported are told directly."""
    os.environ.update(QUIET_ENVIRONMENT)
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def duration(seconds: float) -> str:
    """`42 s`, `3 min 5 s`, `1 h 2 min`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """`done` of `total` items of one loop, logged as lines (see the module's docstring). Thread-safe:
    a judge's replies arrive from several threads."""

    def __init__(self, what: str, total: int | None, unit: str, every: int = 1, clock=time.monotonic):
        self.what, self.total, self.unit, self.every, self.clock = what, total, unit, max(1, every), clock
        self.done = self.logged_at = 0
        self.started = self.last_logged = clock()
        self.lock = threading.Lock()

    def update(self, done: int | None = None, **metrics) -> None:
        """Advance by one item, or to `done`; `metrics` (loss, learning rate...) join the line, which
        is then always logged."""
        with self.lock:
            self.done = self.done + 1 if done is None else done
            now = self.clock()
            if metrics or self.done - self.logged_at >= self.every or now - self.last_logged >= LOG_SECONDS:
                self.logged_at, self.last_logged = self.done, now
                log.info("%s", self.line(now, metrics))

    def close(self) -> None:
        log.info("%s: %d %s in %s", self.what, self.done, self.unit, duration(self.clock() - self.started))

    def line(self, now: float, metrics: dict | None = None) -> str:
        elapsed = now - self.started
        parts = [f"{self.what}: {self.done}/{self.total} {self.unit} ({self.done / self.total:.0%})" if self.total
                 else f"{self.what}: {self.done} {self.unit}", f"{duration(elapsed)} in"]
        if self.total and 0 < self.done < self.total:
            parts.append(f"about {duration(elapsed / self.done * (self.total - self.done))} left")
        if metrics:
            parts.append(", ".join(f"{key} {_number(value)}" for key, value in metrics.items()))
        return ", ".join(parts)


def progress(items: Iterable, what: str, unit: str, total: int | None = None, every: int = 1) -> Iterator:
    """`items`, logged as they are consumed (a drop-in for `tqdm(items)` in a job)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    tracker = Progress(what, total, unit, every=every)
    for item in items:
        yield item
        tracker.update()
    tracker.close()


# Logged by the trainer but noise in a progress line (totals, counters, the epoch fraction).
SKIPPED_METRICS = {"total_flos", "epoch", "step", "train_runtime", "train_samples_per_second",
                   "train_steps_per_second", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                   "num_tokens", "eval_num_tokens"}


def training_lines(trainer, what: str) -> None:
    """Replace a transformers Trainer's printed dicts (or tqdm bar) with `Progress` lines: one per
    logging step, with the step count, time left and the logged metrics (loss, learning rate, DPO's
    reward margins and accuracies)."""
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback

    class StepLines(TrainerCallback):
        tracker: Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                # Lines come from on_log (every logging step) and from the clock, not from a step count.
                self.tracker = Progress(what, state.max_steps, "steps", every=sys.maxsize)
                self.tracker.done = state.global_step  # a resumed run starts at its checkpoint

        def on_step_end(self, args, state, control, **kwargs):
            if self.tracker is not None:  # a slow run still logs a line every LOG_SECONDS
                self.tracker.update(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {key: value for key, value in (logs or {}).items() if key not in SKIPPED_METRICS}
            if self.tracker is not None and shown:
                self.tracker.update(state.global_step, **shown)

        def on_train_end(self, args, state, control, **kwargs):
            if self.tracker is not None:
                self.tracker.update(state.global_step)
                self.tracker.close()
                self.tracker = None

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StepLines())


def last_line(path: str | os.PathLike, tail_bytes: int = 8192) -> str:
    """The log's last meaningful line (a carriage-return bar counts as lines), without its time stamp:
    not a warning (`WARNING_LINE`, with the source line Python prints under it) nor `NOISE`."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines, after_warning = [], False
    for raw in re.split(r"[\r\n]", text):
        line = raw.strip()
        if not line:
            continue
        if WARNING_LINE.match(line):
            after_warning = True  # its indented source line(s) follow
            continue
        if after_warning and raw[:1].isspace():
            continue
        after_warning = False
        if line.startswith(HEADER) or NOISE.search(line):
            continue
        lines.append(line)
    if not lines:
        return ""
    line = LOG_PREFIX.sub("", lines[-1])
    return line if len(line) <= SHOWN_CHARACTERS else line[:SHOWN_CHARACTERS] + " …"


class Heartbeat(threading.Thread):
    """Every `interval` seconds after the first `interval`, one console line for a running job: how
    long it has run and its log's latest line; the first line says how to follow the log."""

    def __init__(self, log_path: str | os.PathLike, label: str, console, interval: float = CONSOLE_SECONDS,
                 clock=time.monotonic):
        super().__init__(daemon=True, name="tunesmith-heartbeat")
        self.log_path, self.label, self.console, self.interval, self.clock = Path(log_path), label, console, interval, clock
        self.started = clock()
        self.beats = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        latest = last_line(self.log_path)
        follow = f" (follow: tail -f {self.log_path})" if self.beats == 0 else ""
        self.beats += 1
        self.console(f"tunesmith: [{duration(self.clock() - self.started)}] {self.label}"
                     + (f": {latest}" if latest else " is running") + follow + "\n")

    def stop(self) -> None:
        self.stopped.set()
