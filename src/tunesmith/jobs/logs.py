"""Send a job's output to its Snakemake log file, keep every attempt's, and make its failure legible.

Snakemake deletes a job's log before each attempt, so a plain log loses the traceback of the attempt
that failed. The text lives in a hidden sibling, `.<log name>.attempts`, that only grows, one header
per attempt, and the log is a hard link to it: the log shows every attempt, and Snakemake's deletion
takes only the name. (A file system without hard links keeps the current attempt alone, and says so.)

When the log cannot be written (a full disk), the job's output goes to the console instead, after a
line naming the log and its file system, rather than CPython's "lost sys.stderr". A failing job ends
with one summary line on the console naming the rule and, for a full disk, the full file system.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

from tunesmith.jobs import progress

HEADER = "==== tunesmith attempt "
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# What writers outside Python (pyarrow, tokenizers, safetensors) put in the errors they raise.
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


class LogStream(io.TextIOBase):
    """A text stream on a file descriptor that never raises: when a write fails, it says so once on
    the console and sends the rest of the text there."""

    encoding = "utf-8"

    def __init__(self, fd: int | None, name: str, console=None, failure: OSError | None = None):
        self.fd, self.name, self.failure = fd, name, None
        self.console = console if console is not None else sys.__stderr__
        if failure is not None:
            self._give_up(failure)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.console.fileno() if self.failure is not None else self.fd

    def write(self, text: str) -> int:
        if self.failure is None:
            data = text.encode("utf-8", "backslashreplace")
            try:
                while data:
                    data = data[os.write(self.fd, data):]
                return len(text)
            except OSError as error:
                self._give_up(error)
        self.to_console(text)
        return len(text)

    def _give_up(self, error: OSError) -> None:
        self.failure = error
        self.to_console(f"tunesmith: cannot write the log {self.name} ({error.strerror or error}): "
                         f"{describe_file_system(self.name)}. This job's output follows here.\n")

    def to_console(self, text: str) -> None:
        try:
            self.console.write(text)
            self.console.flush()
        except (OSError, ValueError):  # no console either: nothing is left to tell
            pass


def log_to(path: str | os.PathLike) -> None:
    """Redirect stdout, stderr (progress bars, warnings, tracebacks) and logging to the log at `path`,
    after a header for this attempt; an uncaught error ends the log and the console with a summary."""
    path = Path(path)
    job = _running_job()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, earlier = _open_log(path)
        stream = LogStream(fd, os.fspath(path))
    except OSError as error:
        earlier, stream = 0, LogStream(None, os.fspath(path), failure=error)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lost = " (earlier attempts are not kept: no hard links on this file system)" if earlier is None else ""
    stream.write(f"{HEADER}{(earlier or 0) + 1} · {started} · {job_label(job)} · pid {os.getpid()} on "
                 f"{socket.gethostname()}{lost} ====\n")
    sys.stdout = sys.stderr = stream
    logging.basicConfig(
        stream=stream, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )
    sys.excepthook = _failure_hook(stream, job)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    progress.quiet_library_bars()  # no carriage-return bars in a log
    if stream.failure is None and progress.CONSOLE_SECONDS > 0:  # a long job shows on the console that it moves
        progress.Heartbeat(path, job_label(job).removeprefix("rule "), stream.to_console).start()


def _open_log(path: Path) -> tuple[int, int | None]:
    """Open the log for appending, linked to its history; its descriptor and the number of attempts
    the log already holds (None where earlier attempts cannot be kept)."""
    history = path.with_name(f".{path.name}.attempts")
    if not (path.exists() and history.exists() and os.path.samefile(path, history)):
        if path.is_file():  # a log written some other way: its text becomes an earlier attempt
            with open(path, "rb") as old, open(history, "ab") as kept:
                shutil.copyfileobj(old, kept)
        path.unlink(missing_ok=True)
        history.touch()
        try:
            os.link(history, path)
        except OSError as error:
            if error.errno not in NO_HARD_LINKS:
                raise
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666), None
    with open(history, "rb") as handle:
        earlier = sum(line.startswith(HEADER.encode()) for line in handle)
    return os.open(history, os.O_WRONLY | os.O_APPEND), earlier


def _running_job():
    """The Snakemake job of the running script: Snakemake's script preamble defines it as the
    script's global `snakemake`. None outside a Snakemake script."""
    job = getattr(sys.modules.get("__main__"), "snakemake", None)
    return job if hasattr(job, "rule") and hasattr(job, "output") else None


def job_label(job) -> str:
    """`rule train_sft (key=0a1b2c3d4e5f)`, or the command line outside Snakemake."""
    if job is None:
        return f"command {shlex.join([sys.executable, *sys.argv])}"
    wildcards = ", ".join(f"{name}={value}" for name, value in job.wildcards.items())
    return f"rule {job.rule}" + (f" ({wildcards})" if wildcards else "")


def _failure_hook(stream: LogStream, job):
    def report(kind, error, trace) -> None:
        summary = failure_summary(error, job, stream)
        stream.write("".join(traceback.format_exception(kind, error, trace)) + summary + "\n")
        if stream.failure is None:  # the log took it all; the console still gets the summary
            stream.to_console(summary + "\n")

    return report


def failure_summary(error: BaseException, job, stream: LogStream) -> str:
    """One line: which job failed with what, and for a full disk, which file system is full."""
    message = str(error) if len(str(error)) <= 400 else str(error)[:400] + " …"
    summary = f"tunesmith: {job_label(job)} failed: {type(error).__name__}: {message}"
    log_failed = stream.failure is not None and is_disk_full(stream.failure)
    if is_disk_full(error) or log_failed:
        # Where the error names no file (most writers' do not), the job's outputs are where it wrote.
        named = [name for name in (getattr(error, "filename", None), getattr(error, "filename2", None)) if name]
        places = named or (list(job.output) if job is not None else [])
        places += [stream.name] if log_failed else []
        summary += "; no space left: " + "; ".join(dict.fromkeys(describe_file_system(p) for p in places))
    return summary + f" (log: {stream.name})"


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, says the disk (or the quota) is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return True
        if any(text in str(error) for text in NO_SPACE_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


def describe_file_system(path: str | os.PathLike) -> str:
    """`the file system mounted at /scratch (nfs4) has 0 B free of 2.0 TiB`, for the one holding `path`."""
    place = Path(os.path.realpath(path))
    while not place.exists() and place != place.parent:
        place = place.parent
    mounts = _mounts()
    holding = [point for point in mounts if place == Path(point) or Path(point) in place.parents]
    mount = max(holding, key=len) if holding else os.fspath(place.anchor)
    kind = f" ({mounts[mount]})" if mount in mounts else ""
    try:
        usage = shutil.disk_usage(place)
    except OSError as error:
        return f"the file system mounted at {mount}{kind} (its free space is unknown: {error.strerror})"
    return f"the file system mounted at {mount}{kind} has {_size(usage.free)} free of {_size(usage.total)}"


def _mounts() -> dict[str, str]:
    """Mount point -> file system type, from /proc/self/mounts (later mounts hide earlier ones)."""
    try:
        lines = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    unescape = lambda field: re.sub(r"\\([0-7]{3})", lambda code: chr(int(code[1], 8)), field)  # noqa: E731
    return {unescape(fields[1]): fields[2] for fields in map(str.split, lines) if len(fields) >= 3}


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def unlock_command(recipe_path: str | None = None) -> str:
    """The command that removes a stale lock here: the workflow needs --cores even to unlock (a rule's
    threads are a share of them), so Snakemake's own suggestion, a bare `snakemake --unlock`, fails."""
    return "snakemake --unlock --cores 1" + (f" --config recipe={shlex.quote(recipe_path)}" if recipe_path else "")


def stop_workflow(error) -> None:
    """End the workflow with `error`'s message alone (a recipe error while the workflow loads, the GPU a quantised
    recipe needs in `onstart`). A WorkflowError raised there prints Snakemake's header around it ("WorkflowError in
    file rules/common.smk, line 23:" and a `File ... in <module>` line), which points the user at our code instead
    of their recipe. Snakemake 9 lets SystemExit through from a Snakefile and from `onstart`, releasing its lock."""
    print(f"Error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)


def explain_stale_locks(recipe_path: str | None = None) -> None:
    """Make Snakemake's "Directory cannot be locked" error give the unlock command that works here.
    Snakemake raises it before any job and calls no `onerror` hook for it, so its message is the only
    place to say it: its exception class is replaced by a subclass with our message (the places that
    raise it look the class up in `snakemake.exceptions` when they raise)."""
    import snakemake.exceptions as exceptions

    original = exceptions.LockException
    if getattr(original, "tunesmith_message", False):
        original = original.__mro__[1]
    command = unlock_command(recipe_path)

    class LockException(original):
        tunesmith_message = True

        def __init__(self):
            exceptions.WorkflowError.__init__(
                self,
                f"Error: the directory {os.getcwd()} is locked: another Snakemake run is building here, or one "
                "was killed (SIGKILL, a power loss) and left its lock behind. If no other snakemake runs in this "
                f"directory, remove the lock with\n    {command}\nthen run again: finished jobs are kept and the "
                "killed ones rerun (a plain `snakemake --unlock` fails here: the workflow needs --cores).")

    exceptions.LockException = LockException


class _NothingToDo(logging.Handler):
    def __init__(self, workflow, show):
        super().__init__()
        self.workflow, self.show = workflow, show

    def emit(self, record):
        from snakemake.common import NOTHING_TO_BE_DONE_MSG

        if record.getMessage() == NOTHING_TO_BE_DONE_MSG and not self.workflow.dryrun:
            self.show()


def when_nothing_to_do(workflow, show) -> None:
    """Call `show()` when a (not dry) run finds every target up to date. Snakemake returns before its
    `onsuccess` hook then, yet a no-op run is how users come back to a finished run: the summary that
    `onsuccess` prints belongs there too. Snakemake says so on its logger, so a handler there listens."""
    logging.getLogger("snakemake.logging").addHandler(_NothingToDo(workflow, show))
