"""The package stands on its own: installed non-editable, with the source tree off the import path,
`tunesmith validate` and the workflow's dry run still work (schemas are package data, nothing is
found through the checkout's layout)."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with tunesmith installed from a wheel; its dependencies are borrowed from this
    environment through a path entry (a .pth line adds a folder to sys.path without running the
    folder's own .pth files, so this environment's editable install is not seen)."""
    root = tmp_path_factory.mktemp("install")
    # Built from a copy: setuptools keeps a build/ folder in the tree it builds, whose stale files
    # would hide a file missing from the package data.
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", "logs", ".snakemake", "build", "*.egg-info", "__pycache__"))
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("tunesmith-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return venv


def run(venv, *command, cwd):
    return subprocess.run([str(venv / "bin" / command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_the_installed_package_is_the_one_imported(installed, tmp_path):
    result = run(installed, "python", "-c", "import tunesmith.config.recipe as r; print(r.__file__); r.load_schema()",
                 cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(installed), result.stdout
    wheel_schemas = run(installed, "python", "-c",
                        "from importlib import resources; import tunesmith; "
                        "print(sorted(p.name for p in resources.files(tunesmith).joinpath('schemas').iterdir()))",
                        cwd=tmp_path)
    assert "recipe.schema.yaml" in wheel_schemas.stdout and "submission_row.schema.json" in wheel_schemas.stdout


def test_validate_and_a_dry_run_work_from_the_project_folder(installed, tmp_path):
    validated = run(installed, "tunesmith", "validate", "recipes/default.yaml", cwd=REPO)
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout == "recipes/default.yaml: valid\n"
    (tmp_path / "data").symlink_to(REPO / "data")
    planned = run(installed, "python", "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--directory",
                  str(tmp_path), "submission.jsonl", cwd=REPO)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "write_submission" in planned.stdout and "Traceback" not in planned.stderr


def test_long_modules_say_why_at_their_top():
    import ast

    long = []
    for path in sorted((REPO / "src" / "tunesmith").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > 350 and "Over 350 lines because" not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            long.append(f"{path.name}: {lines} lines")
    assert not long, "modules over 350 lines without a reason at their top:\n" + "\n".join(long)
