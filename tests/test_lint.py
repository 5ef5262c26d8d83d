"""The workflow's own files: formatted by snakefmt (configured in pyproject.toml) and clean under
`snakemake --lint` but for the one finding we keep on purpose. After merging rule changes:
`snakefmt Snakefile rules` formats them, and this file checks both."""

import os
import re
import subprocess
import sys

from conftest import REPO

# Software is pinned with pip in pyproject.toml on purpose, not with a conda environment or container per
# rule, so this is the one lint we accept.
ACCEPTED = {"Specify a conda environment or container for each rule."}


def test_workflow_files_are_formatted_by_snakefmt():
    command = [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        diff = subprocess.run([*command[:3], "--compact-diff", *command[4:]], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        raise AssertionError(f"run `snakefmt Snakefile rules`:\n{result.stderr}\n{diff.stdout[-6000:]}")


def lints(snakefile, directory, *more) -> dict[str, list[str]]:
    """`snakemake --lint` findings: item (rule or snakefile) -> lint titles. Snakemake 9.27 prints them as
    text only (its CLI never passes `--lint json` on), as 'Lints for <item>:' and '    * <title>:' lines."""
    command = [sys.executable, "-m", "snakemake", "--lint", "-s", str(snakefile), "--directory", str(directory), *map(str, more)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200"})
    output = result.stdout + result.stderr
    found, item = {}, None
    for line in output.splitlines():
        if line.startswith("Lints for ") and line.endswith(":"):
            item = line.removeprefix("Lints for ").removesuffix(":")
            found[item] = []
        elif item is not None and (title := re.fullmatch(r" {4}\* (.+):", line)):
            found[item].append(title[1])
    # Exit status 1 means "lints found" as well as "the workflow did not load": tell them apart.
    assert result.returncode == 0 or found, output[-4000:]
    assert all(found.values()), f"a 'Lints for' block without lints; has the format changed?\n{output[-4000:]}"
    return found


def test_the_workflow_has_no_lints_but_the_accepted_one(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    found = lints(REPO / "Snakefile", tmp_path, "--config", f"recipe={REPO / 'recipes/default.yaml'}")
    unexpected = {item: titles for item, titles in found.items() if set(titles) - ACCEPTED}
    assert not unexpected, "\n".join(f"{item}: {titles}" for item, titles in unexpected.items())
    assert any(item.startswith("rule train_sft ") for item in found), found  # the accepted one was read


def test_the_lint_check_sees_a_new_finding(tmp_path):
    (tmp_path / "Snakefile").write_text('rule write_note:\n    output:\n        "note.txt",\n    shell:\n'
                                        '        "echo hi > {output}"\n')
    found = lints(tmp_path / "Snakefile", tmp_path)
    assert "No log directive defined" in found[next(iter(found))], found
