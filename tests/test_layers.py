"""Imports point one way: the package's subpackages are layers (the order and its reasons: the docstring of
src/tunesmith/__init__.py), checked by import-linter's `lint-imports` against the contracts in
pyproject.toml [tool.importlinter]: the layers (a subpackage uses only those below it), no import cycle
between subpackages nor between the modules of one, and launching that knows nothing of training."""

import ast
import os
import shutil
import subprocess
import sys
import tomllib

from conftest import REPO

LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint(root) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under root/src (that one, not the installed one)."""
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root / "src")})


def copy_of_package(tmp_path):
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "src" / "tunesmith"


def plant(module_file, statement):
    """A function-level import: import-linter sees those too, as a lazy import is still a dependency."""
    with open(module_file, "a", encoding="utf-8") as file:
        file.write(f"\n\ndef _planted():\n    {statement}\n")


def layers():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["type"] == "layers"]
    return contract["layers"]


def test_the_subpackages_import_one_way_without_cycles():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "0 broken" in result.stdout and "kept" in result.stdout, result.stdout[-3000:]


def test_an_import_pointing_up_breaks_the_layers(tmp_path):
    package = copy_of_package(tmp_path)
    lowest, highest = layers()[-1], next(layer for layer in layers() if (package / layer).is_dir())
    low = min((package / lowest).glob("[!_]*.py"))
    high = min((package / highest).glob("[!_]*.py"))
    plant(low, f"from tunesmith.{highest} import {high.stem}  # noqa: F401")
    result = lint(tmp_path)
    assert result.returncode != 0, result.stdout[-3000:]
    assert f"tunesmith.{lowest}.{low.stem} -> tunesmith.{highest}.{high.stem}" in result.stdout, result.stdout[-3000:]


def test_an_import_cycle_inside_a_subpackage_is_refused(tmp_path):
    """Turn one import between two modules of the same subpackage into a cycle."""
    package = copy_of_package(tmp_path)
    for module_file in sorted(package.glob("*/[!_]*.py")):
        subpackage = module_file.parent.name
        for node in ast.walk(ast.parse(module_file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"tunesmith.{subpackage}."):
                imported = node.module.rsplit(".", 1)[1]
                plant(package / subpackage / f"{imported}.py",
                      f"from tunesmith.{subpackage} import {module_file.stem}  # noqa: F401")
                result = lint(tmp_path)
                assert result.returncode != 0, result.stdout[-3000:]
                # which of the cycle's imports lint-imports nominates for removal is its choice
                assert f"No cycles are allowed in tunesmith.{subpackage}." in result.stdout, result.stdout[-3000:]
                return
    raise AssertionError("no subpackage has two modules importing each other one way")
