"""The README's test command runs the suite on two pytest-xdist workers; the shared built runs (conftest.py:
SHARED_RUNS) must still be built once, by the worker that runs every test reading them. pytest-xdist 3.8's own
grouping is lost under pytest 9.2 (conftest.py: _grouped): this is what would notice it happening again."""

import os
import subprocess
import sys

from conftest import REPO

INNER_CONFTEST = f"""
import importlib.util
import os

import pytest

spec = importlib.util.spec_from_file_location("shared_conftest", {str(REPO / "tests" / "conftest.py")!r})
shared = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shared)
pytest_collection_modifyitems = shared.pytest_collection_modifyitems


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    with open(os.environ["BUILT_LOG"], "a") as log:
        log.write(f"default_run {{os.getpid()}}\\n")
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def reads(default_run):
    return default_run
"""

MODULE = """
import os
import time

import pytest


def test_reads_the_run(default_run):
    time.sleep(0.2)


@pytest.mark.parametrize("key", ["a", "b"])
def test_reads_it_through_a_module_fixture(reads, key):
    time.sleep(0.2)


@pytest.mark.parametrize("n", range(4))
def test_needs_no_run(n):
    time.sleep(0.2)
"""


def test_a_shared_run_is_built_once_on_two_workers(tmp_path):
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    for name in ("one", "two", "three"):
        (tmp_path / f"test_{name}.py").write_text(MODULE)
    log = tmp_path / "built.log"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
                             "no:cacheprovider", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "BUILT_LOG": str(log)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "21 passed" in result.stdout
    assert log.read_text().count("default_run") == 1, log.read_text()
