"""Issue 11 case 6: mistakes in what the sources name are found before any job, naming the recipe key
and the file (`check_inputs`, `check_settings`, and through `validate_recipe(check_files=True)`)."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.config.recipe import RecipeError, validate_recipe
from tunesmith.data.sources import check_inputs, check_settings

REPO = Path(__file__).resolve().parents[1]


def recipe_with(sources, **curate) -> dict:
    return validate_recipe({"sources": sources + [{"id": "text", "path": str(REPO / "data/raw/pretrain.txt"),
                                                   "format": "text", "role": "pretrain"}],
                            "dpo": {"enabled": False}, "curate": curate})


def write_jsonl(path: Path, *records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return str(path)


def test_missing_paths_name_the_source_key_and_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    good = write_jsonl(tmp_path / "ok.jsonl", {"instruction": "I", "output": "O"})
    recipe = recipe_with([{"id": "ok", "path": good},
                          {"id": "gone", "path": str(tmp_path / "gone.jsonl")},
                          {"id": "glob", "path": str(tmp_path / "none-*.jsonl")},
                          {"id": "dir", "path": str(tmp_path / "empty")}])
    recipe["sources"][-1]["path"] = str(tmp_path / "no-text.txt")
    assert check_inputs(recipe) == [
        f"sources[1].path: '{tmp_path}/gone.jsonl': file not found",
        f"sources[2].path: '{tmp_path}/none-*.jsonl': no file matches",
        f"sources[3].path: '{tmp_path}/empty': directory has no .jsonl/.ndjson files",
        f"sources[4].path: '{tmp_path}/no-text.txt': file not found"]


def test_a_mapped_column_the_first_record_lacks_names_the_mapping_and_the_file(tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", "", {"instruction": "I", "output": "O"}, "{broken")
    pq.write_table(pa.table({"question": ["Q"], "answer": ["A"]}), tmp_path / "p.parquet")
    (tmp_path / "c.csv").write_text("prompt,response\nP,R\n", encoding="utf-8")
    (tmp_path / "j.json").write_text(json.dumps([{"text": "T", "output": "O"}] * 3, indent=2), encoding="utf-8")
    recipe = recipe_with([
        {"id": "typo", "path": alpaca, "columns": {"output": "answer"}},                        # 0
        {"id": "fine", "path": alpaca},                                                          # 1
        {"id": "pq", "path": str(tmp_path / "p.parquet"), "format": "parquet",
         "columns": {"instruction": "question", "output": "response"}},                         # 2
        {"id": "csv", "path": str(tmp_path / "c.csv"), "format": "csv", "columns": {"instruction": "prompt"}},  # 3
        {"id": "json", "path": str(tmp_path / "j.json"), "format": "json", "style": "text_output"},  # 4
        {"id": "style", "path": alpaca, "style": "text_output"},                                # 5
    ])
    assert check_inputs(recipe) == [
        f"sources[0].columns.output: the first record of {alpaca} has no column 'answer'; it has 'instruction', 'output'",
        f"sources[2].columns.output: the first record of {tmp_path}/p.parquet has no column 'response'; "
        "it has 'question', 'answer'",
        f"sources[3].style: the first record of {tmp_path}/c.csv has no column 'output' (style 'alpaca' reads it; "
        "map another column with `columns`); it has 'prompt', 'response'",
        f"sources[5].style: the first record of {alpaca} has no column 'text' (style 'text_output' reads it; "
        "map another column with `columns`); it has 'instruction', 'output'"]


def test_style_that_does_not_fit_the_role_and_fields_the_style_lacks(tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", {"instruction": "I", "output": "O"})
    recipe = recipe_with([{"id": "a", "path": alpaca, "style": "pairwise"},
                          {"id": "b", "path": alpaca, "columns": {"question": "q"}}])
    assert check_inputs(recipe) == [
        "sources[0].style: 'pairwise' does not fit role 'sft' (use one of ['alpaca', 'messages', 'text_output'])",
        "sources[1].columns.question: not a field of style 'alpaca' (its fields: instruction, input, output)"]


def test_only_the_first_record_is_read(tmp_path, monkeypatch):
    big = tmp_path / "big.jsonl"
    with open(big, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"instruction": "I", "output": "O"}) + "\n")
        handle.write(("x" * 1000 + "\n") * 20_000)  # 20 MB of lines that are not records
    read = []
    real_open = open

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file) == str(big):
            original = handle.read
            handle.read = lambda size=-1: read.append(size) or original(size)
        return handle

    monkeypatch.setattr("builtins.open", counting_open)
    assert check_inputs(recipe_with([{"id": "big", "path": str(big)}])) == []
    assert read and all(0 < size <= 1 << 20 for size in read)


def test_settings_no_schema_can_state_name_their_key():
    assert check_settings({"block_patterns": ["ok", "(unclosed"], "near_dedup": {"permutations": 100, "bands": 16}}) == [
        "curate.block_patterns[1]: '(unclosed' is not an RE2 regular expression (missing ): (unclosed)",
        "curate.near_dedup.permutations: 100 is not a multiple of curate.near_dedup.bands (16)"]
    assert check_settings({"block_patterns": [r"\p{Han}+"], "near_dedup": {"permutations": 128, "bands": 16}}) == []


def test_the_recipe_validator_reports_them_before_any_job(tmp_path):
    recipe = {"sources": [{"id": "gone", "path": str(tmp_path / "gone.jsonl")},
                          {"id": "text", "path": str(REPO / "data/raw/pretrain.txt"), "format": "text",
                           "role": "pretrain"}],
              "dpo": {"enabled": False}, "curate": {"block_patterns": ["("], "near_dedup": {"permutations": 100}}}
    with pytest.raises(RecipeError, match=r"curate\.block_patterns\[0\]: .*\n.*curate\.near_dedup\.permutations"):
        validate_recipe(json.loads(json.dumps(recipe)))
    recipe["curate"] = {}
    validate_recipe(json.loads(json.dumps(recipe)))  # files are only checked when asked for
    with pytest.raises(RecipeError, match=r"sources\[0\]\.path: '.*gone\.jsonl': file not found"):
        validate_recipe(json.loads(json.dumps(recipe)), check_files=True)


@pytest.mark.parametrize("command", [["tunesmith", "validate", "{}"], ["snakemake", "-n", "--cores", "1", "--config",
                                                                       "recipe={}"]], ids=["validate", "snakemake-n"])
def test_validate_and_a_dry_run_both_fail_on_a_missing_source_before_any_job(tmp_path, command):
    recipe = (REPO / "recipes" / "default.yaml").read_text(encoding="utf-8").replace(
        "path: data/raw/sft.jsonl", "path: data/raw/no-such-sft.jsonl")
    (tmp_path / "broken.yaml").write_text(recipe, encoding="utf-8")
    binary = Path(sys.executable).parent / command[0]
    arguments = [argument.format(tmp_path / "broken.yaml") for argument in command[1:]]
    result = subprocess.run([str(binary), *arguments], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "sources[0].path: 'data/raw/no-such-sft.jsonl': file not found" in result.stdout + result.stderr


# ---- issue 19: files that are not data, and files whose content is not their format ----------------

@pytest.mark.parametrize("path, said", [
    ("/proc/self/environ", "'/proc/self/environ' is under /proc (it resolves to /proc/"),
    ("/proc/*/environ", "'/proc/*/environ' is under /proc: not data"),
    ("/sys/kernel", "'/sys/kernel' is under /sys: not data"),
    ("/dev/zero", "'/dev/zero' is under /dev: not data"),
])
def test_proc_sys_and_dev_are_refused_at_validation_naming_the_path(tmp_path, path, said):
    recipe = recipe_with([{"id": "env", "path": path, "role": "sft"}])
    problems = check_inputs(recipe)
    assert any(problem.startswith("sources[0].path: ") and said in problem for problem in problems), problems
    with pytest.raises(RecipeError, match=r"sources\[0\]\.path: .* is under /(proc|sys|dev)"):
        validate_recipe(json.loads(json.dumps(recipe)), check_files=True)


def test_a_link_to_proc_in_a_data_folder_and_a_fifo_are_refused_before_any_read(tmp_path):
    import os

    from tunesmith.data.sources import IngestError, resolve_source

    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", {"instruction": "I", "output": "O"})
    (folder / "b.jsonl").symlink_to("/proc/self/environ")
    os.mkfifo(tmp_path / "pipe.jsonl")
    recipe = recipe_with([{"id": "folder", "path": str(folder)}, {"id": "pipe", "path": str(tmp_path / "pipe.jsonl")}])
    problems = check_inputs(recipe)
    assert problems[0].startswith(f"sources[0].path: '{folder}/b.jsonl' is under /proc (it resolves to /proc/")
    assert problems[1] == f"sources[1].path: '{tmp_path}/pipe.jsonl' is a FIFO (named pipe), not a regular file"
    with pytest.raises(IngestError, match="is under /proc"):  # the ingest job refuses it too, writing nothing
        resolve_source({"id": "folder", "path": str(folder), "role": "sft"})


def test_task_files_that_are_not_regular_files_are_refused(tmp_path):
    import os

    os.mkfifo(tmp_path / "tasks.jsonl")
    recipe = recipe_with([{"id": "ok", "path": write_jsonl(tmp_path / "ok.jsonl", {"instruction": "I", "output": "O"})}])
    recipe["tasks"]["path"] = str(tmp_path / "tasks.jsonl")  # a FIFO would block the task reader for ever
    with pytest.raises(RecipeError, match=r"tasks\.path: '.*tasks\.jsonl' is a FIFO"):
        validate_recipe(recipe, check_files=True)
    recipe["tasks"]["path"] = "/proc/self/environ"
    with pytest.raises(RecipeError, match=r"tasks\.path: '/proc/self/environ' is under /proc"):
        validate_recipe(recipe, check_files=True)


def test_a_format_that_does_not_fit_the_files_content_is_refused_at_validation(tmp_path):
    jsonl = write_jsonl(tmp_path / "rows.jsonl", {"instruction": "I", "output": "O"}, {"instruction": "J", "output": "P"})
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("instruction,output\nI,O\n", encoding="utf-8")
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"instruction": ["I"], "output": ["O"]}), parquet)
    recipe = recipe_with([{"id": "a", "path": jsonl, "format": "csv"},
                          {"id": "b", "path": str(csv_file), "format": "jsonl"},
                          {"id": "c", "path": str(parquet), "format": "jsonl"},
                          {"id": "d", "path": jsonl, "format": "parquet"},
                          {"id": "e", "path": jsonl, "format": "json"},
                          {"id": "f", "path": str(parquet), "format": "text", "role": "pretrain"}])
    assert check_inputs(recipe) == [
        f"sources[0].format: csv, but {jsonl} starts with JSON; it looks like JSON Lines (format: jsonl)",
        f"sources[1].format: jsonl, but none of the first 2 lines of {csv_file} is a JSON object; it looks like CSV "
        "(format: csv; its first line is 'instruction,output')",
        f"sources[2].format: jsonl, but {parquet} is a Parquet file (format: parquet)",
        f"sources[3].format: parquet, but {jsonl} is not a Parquet file (it does not start with PAR1; it looks like "
        "JSON Lines (format: jsonl))",
        f"sources[4].format: json, but {jsonl} holds one JSON object per line; it looks like JSON Lines (format: jsonl)",
        f"sources[5].format: text, but {parquet} is a Parquet file (format: parquet)"]
    fitting = recipe_with([{"id": "a", "path": jsonl}, {"id": "b", "path": str(csv_file), "format": "csv"},
                           {"id": "c", "path": str(parquet), "format": "parquet"}])
    assert check_inputs(fitting) == []


def test_a_bad_first_record_is_left_to_curation_not_refused(tmp_path):
    """One malformed line is quarantined by curation; only a file none of whose first lines fits is refused."""
    mostly = write_jsonl(tmp_path / "mostly.jsonl", "oops, a stray line", {"instruction": "I", "output": "O"})
    assert not any(".format:" in problem for problem in check_inputs(recipe_with([{"id": "m", "path": mostly}])))
