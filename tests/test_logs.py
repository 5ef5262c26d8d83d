"""Job logs: every attempt kept under its own header, and a failure legible even when the disk is full."""

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from tunesmith.jobs.logs import HEADER, LogStream, describe_file_system, is_disk_full

FLAKY_SNAKEFILE = """
rule write_demo:
    output:
        "results/{name}.txt",
    log:
        "logs/write_demo/{name}.log",
    script:
        "write_demo.py"
"""

# Attempt 1 fails with a traceback, attempt 2 is killed half-way through its atomic write, attempt 3 works.
FLAKY_SCRIPT = """
import os, signal
from pathlib import Path
from tunesmith.jobs.atomic import atomic_path
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded

log_to(snakemake.log[0])
with recorded(snakemake, "demo"):
    attempt = len(list(Path(".").glob("attempted.*"))) + 1
    Path(f"attempted.{attempt}").touch()
    print(f"attempt {attempt} writes {snakemake.output[0]}", flush=True)
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text("half")
        if attempt == 1:
            raise RuntimeError("the first attempt fails")
        if attempt == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        tmp.write_text("done\\n")
"""


def snakemake(*args, cwd, timeout=600):
    command = [sys.executable, "-m", "snakemake", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_every_attempt_of_a_job_is_kept_in_its_log(tmp_path):
    (tmp_path / "Snakefile").write_text(FLAKY_SNAKEFILE)
    (tmp_path / "write_demo.py").write_text(FLAKY_SCRIPT)
    runs = [snakemake("results/demo.txt", "--cores", "1", cwd=tmp_path) for _ in range(3)]
    assert [run.returncode for run in runs] == [1, 1, 0], runs[-1].stderr[-3000:]
    log = (tmp_path / "logs/write_demo/demo.log").read_text(encoding="utf-8")
    headers = [line for line in log.splitlines() if line.startswith(HEADER)]
    assert [header.split(" · ")[0] for header in headers] == [f"{HEADER}{n}" for n in (1, 2, 3)], log
    assert all("rule write_demo (name=demo)" in header for header in headers)
    first, second, third = re.split(f"^{re.escape(HEADER)}.*$", log, flags=re.M)[1:]
    assert "Traceback" in first and "RuntimeError: the first attempt fails" in first
    assert "tunesmith: rule write_demo (name=demo) failed: RuntimeError: the first attempt fails" in first
    assert "attempt 2 writes" in second and "attempt 3 writes" in third
    # the console says it too, beside Snakemake's own "Error in rule" block
    assert "tunesmith: rule write_demo (name=demo) failed: RuntimeError" in runs[0].stderr
    # the killed attempt's half-written temporary is gone once the job ran again
    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == ["demo.txt", "demo.txt.manifest.json"]
    assert (tmp_path / "results/demo.txt").read_text() == "done\n"


NO_HARD_LINKS = """
import errno, os, sys

def refuse(*args, **kwargs):
    raise OSError(errno.EPERM, "Operation not permitted")

os.link = refuse  # as on a file system without hard links (FAT, some SMB shares)
from tunesmith.jobs.logs import log_to

log_to(sys.argv[1])
print("this attempt's output")
"""


def test_without_hard_links_the_log_still_holds_this_attempt_and_says_what_is_lost(tmp_path):
    log = tmp_path / "logs" / "job.log"
    for _ in range(2):
        log.unlink(missing_ok=True)  # what Snakemake does before each attempt
        run = subprocess.run([sys.executable, "-c", NO_HARD_LINKS, str(log)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    header, output = log.read_text(encoding="utf-8").splitlines()
    assert header.startswith(f"{HEADER}1 · ") and "earlier attempts are not kept" in header
    assert output == "this attempt's output"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_log_on_a_full_disk_falls_back_to_the_console():
    console = io.StringIO()
    full = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC, from the kernel
    try:
        stream = LogStream(full, "logs/train_sft/0123456789ab.log", console=console)
        assert stream.write("step 1 loss 3.2\n") == len("step 1 loss 3.2\n")
        stream.write("Traceback ...\n")
        stream.flush()
    finally:
        os.close(full)
    lines = console.getvalue().splitlines()
    assert lines[0].startswith("tunesmith: cannot write the log logs/train_sft/0123456789ab.log "
                               "(No space left on device): the file system mounted at ")
    assert lines[1:] == ["step 1 loss 3.2", "Traceback ..."]
    assert is_disk_full(stream.failure)


def test_a_full_disk_is_recognised_through_wrapped_errors():
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as error:
            raise RuntimeError("could not save the adapter") from error
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    # what safetensors and tokenizers (Rust) raise: no errno, the OS message inside
    assert is_disk_full(Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })'))
    assert not is_disk_full(OSError(13, "Permission denied"))
    assert not is_disk_full(ValueError("bad value"))


def test_the_file_system_is_named_by_its_mount_point(tmp_path):
    text = describe_file_system(tmp_path / "not" / "made" / "yet.log")
    mount = re.match(r"the file system mounted at (\S+)", text)[1]
    assert Path(os.path.realpath(tmp_path)).is_relative_to(mount), text
    assert re.search(r"has [\d.]+ (B|KiB|MiB|GiB|TiB) free of [\d.]+ (B|KiB|MiB|GiB|TiB)$", text), text


def private_mounts() -> list[str] | None:
    """A command prefix that runs a command in a mount namespace of its own, where it may mount a
    small tmpfs (root, or unprivileged user namespaces); None where neither is permitted."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return None
    for prefix in (["unshare", "--mount"], ["unshare", "--mount", "--map-root-user"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


FILL_AND_RUN = """
set -e
for dir in $FULL; do
    mount -t tmpfs -o size=64k tmpfs "$dir"
    head -c 1M /dev/zero > "$dir/.filler" 2>/dev/null || true  # stops when nothing is left
done
exec "$@"
"""


@pytest.mark.parametrize("full", [["results", "logs"], ["results"]], ids=["outputs-and-logs", "outputs"])
def test_a_full_disk_is_named_on_the_console_and_in_the_log(tmp_path, full):
    prefix = private_mounts()
    if prefix is None:
        pytest.skip("cannot mount a small tmpfs in a private mount namespace here (needs root or user namespaces)")
    work = tmp_path / "work"
    for name in full:
        (work / name).mkdir(parents=True)
    (work / "data").symlink_to(REPO / "data")
    command = [*prefix, "sh", "-c", textwrap.dedent(FILL_AND_RUN), "sh",
               sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "submission.jsonl",
               "--cores", "1", "--resources", "gpu=1", "--config", f"recipe={REPO / 'recipes/default.yaml'}"]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "FULL": " ".join(str(work / name) for name in full)})
    console = result.stdout + result.stderr
    assert result.returncode != 0
    assert "lost sys.stderr" not in console and "Exception ignored" not in console, console[-4000:]
    failed = re.search(r"^tunesmith: rule \w+ \(key=[0-9a-f]{12}\) failed: .*No space left on device.*"
                       r"no space left: the file system mounted at (\S+) \(tmpfs\) has 0 B free.*"
                       r"\(log: (logs/\S+)\)$", console, re.M)
    assert failed, console[-4000:]
    mount, log = failed.groups()
    assert mount == str(work / "results")
    if "logs" in full:  # nothing reached the log: the console has the job's output and traceback
        assert f"tunesmith: cannot write the log {log} (No space left on device)" in console
        assert f"mounted at {work / 'logs'} (tmpfs) has 0 B free" in console
        assert "Traceback (most recent call last)" in console
    else:
        text = (work / log).read_text(encoding="utf-8")
        assert text.startswith(f"{HEADER}1 · ") and "Traceback (most recent call last)" in text
        assert failed[0] in text
    assert not list((work / "results").rglob("*.partial"))


def test_a_stale_lock_names_the_unlock_command_that_works(tmp_path):
    """After a SIGKILL of the scheduler the next run stops on Snakemake's lock; its message must give an
    unlock command that works here (a bare `snakemake --unlock` fails: the workflow needs --cores), and
    that command must remove the lock."""
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)
    (tmp_path / ".snakemake" / "locks" / "0.output.lock").write_text("submission.jsonl\n")  # as a killed run leaves it

    def snakemake(*arguments):
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *arguments]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    # --touch: were the lock not seen, the run would only touch files, never train.
    locked = snakemake("--cores", "1", "--touch", "submission.jsonl")
    assert locked.returncode != 0
    assert "is locked" in locked.stderr and "\n    snakemake --unlock --cores 1\n" in locked.stderr, locked.stderr[-2000:]
    assert "It can be removed with the --unlock argument" not in locked.stderr
    bare = snakemake("--unlock")
    assert bare.returncode != 0 and "cores" in bare.stderr  # why the message names --cores
    assert snakemake("--unlock", "--cores", "1").returncode == 0
    assert not list((tmp_path / ".snakemake" / "locks").glob("*.lock"))


def test_a_run_with_nothing_to_do_still_calls_the_summary(tmp_path):
    """Snakemake skips `onsuccess` when every target is up to date (issue 21: `snakemake` with nothing
    to do still prints the summary); a dry run stays quiet."""
    (tmp_path / "Snakefile").write_text(
        "from tunesmith.jobs.logs import when_nothing_to_do\n"
        "when_nothing_to_do(workflow, lambda: print('SUMMARY OF THE RUN'))\n"
        "onsuccess:\n    print('SUMMARY OF THE RUN')\n"
        "rule all:\n    output: 'done.txt'\n    shell: 'echo done > {output}'\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    first = run()
    assert first.returncode == 0, first.stderr
    again = run()
    assert again.returncode == 0, again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr
    assert (again.stdout + again.stderr).count("SUMMARY OF THE RUN") == 1
    dry = run("-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr and "SUMMARY" not in dry.stdout + dry.stderr
