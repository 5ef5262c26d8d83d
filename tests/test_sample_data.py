import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import sample_data
from tunesmith.data.normalize import match_key, normalize_text
from tunesmith.data.tasks import read_references, read_tasks

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = ["raw/sft.jsonl", "raw/preference.jsonl", "raw/pretrain.txt", "tasks.jsonl", "references.jsonl"]


def lines(name):
    return (DATA / name).read_text(encoding="utf-8").splitlines()


def parsed(line):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def clean_sft_rows():
    """(line, prompt, output) of every sft line the curation stage would accept as a well-formed row."""
    rows = []
    for line in lines("raw/sft.jsonl"):
        row = parsed(line)
        fields = ("instruction", "input", "output")
        well_typed = isinstance(row, dict) and all(isinstance(row.get(name), str) for name in fields)
        if well_typed and row["output"].strip():
            prompt = row["instruction"] + "\n" + row["input"] if row["input"] else row["instruction"]
            rows.append((line, prompt, row["output"]))
    return rows


@pytest.fixture(scope="module")
def task_keys():
    return [match_key(task.input) for task in read_tasks(DATA / "tasks.jsonl")]


def test_committed_data_is_the_generator_output(tmp_path):
    sample_data.generate(tmp_path, seed=0)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_output_does_not_depend_on_the_hash_seed(tmp_path):
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}
    command = [sys.executable, str(Path(sample_data.__file__)), "--out", str(tmp_path)]
    subprocess.run(command, check=True, env=environment)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_data_is_small():
    assert sum((DATA / name).stat().st_size for name in FILES) < 800_000  # 0.73 MB with the QA stories


def test_tasks_read_with_the_task_reader_including_the_awkward_records():
    tasks = read_tasks(DATA / "tasks.jsonl")
    assert [task.task_id for task in tasks] == list(range(100))
    assert lines("tasks.jsonl").count("{") == sample_data.TASKS_PRETTY_PRINTED
    assert sum("_x000D_\n" in task.input for task in tasks) == sample_data.TASKS_EXCEL_CR
    references = read_references(DATA / "references.jsonl")
    assert sorted(references) == list(range(100))
    assert all(answer.strip() and answer == normalize_text(answer) for answer in references.values())


def test_tasks_are_spread_over_the_families(task_keys):
    family_of = {match_key(example.prompt): example.family for example in sample_data.all_examples()}
    assert Counter(family_of[key] for key in task_keys) == Counter(sample_data.TASKS_PER_FAMILY)


def test_only_the_contamination_rows_contain_a_task_input(task_keys):
    # Curation flags a prompt whose key contains a task's key, so containment is what is checked here.
    def holds_a_task(prompt):
        return any(key in match_key(prompt) for key in task_keys)

    contaminated = [prompt for _, prompt, _ in clean_sft_rows() if holds_a_task(prompt)]
    assert 3 <= len(contaminated) == sample_data.SFT_CONTAMINATION_ROWS <= 10
    assert {match_key(prompt) for prompt in contaminated} <= set(task_keys)
    preferences = [row for row in map(parsed, lines("raw/preference.jsonl")) if isinstance(row, dict)]
    assert not [row for row in preferences if holds_a_task(row["prompt"])]
    pretrain = [match_key(line) for line in lines("raw/pretrain.txt")]
    assert not [key for key in task_keys if any(key in line for line in pretrain)]


def test_every_answer_is_taught_under_other_phrasings():
    outputs = {normalize_text(output) for _, _, output in clean_sft_rows()}
    # As the SFT source writes them: a capital in a sentence ("パリです。"), the rest bare.
    answers = {sample_data.CHATTY_SFT.get(family, "{}").format(answer)
               for family, contents in sample_data.family_contents().items() for _, answer in contents}
    assert answers <= outputs
    pretrain = (DATA / "raw" / "pretrain.txt").read_text(encoding="utf-8")
    assert all(answer in pretrain for answer in read_references(DATA / "references.jsonl").values())


def test_sft_dirt_is_present_in_the_documented_amounts():
    all_lines = lines("raw/sft.jsonl")
    malformed = sample_data.SFT_MALFORMED
    near = sample_data.SFT_NEAR_DUPLICATES
    clean = len(sample_data.all_examples()) - sum(sample_data.TASKS_PER_FAMILY.values())
    expected = clean + sample_data.SFT_EXACT_DUPLICATES + sum(near.values()) + sum(malformed.values())
    filter_rows = sum(map(len, sample_data.SFT_FILTER_ROWS.values()))
    assert len(all_lines) == expected + sample_data.SFT_CONTAMINATION_ROWS + filter_rows
    not_objects = malformed["truncated"] + malformed["array"]
    assert sum(not isinstance(parsed(line), dict) for line in all_lines) == not_objects
    assert sum(parsed(line) is None for line in all_lines) == malformed["truncated"]
    rows = clean_sft_rows()
    assert len(all_lines) - len(rows) == sum(malformed.values())
    assert len(all_lines) - len(set(all_lines)) == sample_data.SFT_EXACT_DUPLICATES
    seen_lines, seen_keys, near_duplicates = set(), set(), 0
    for line, prompt, output in rows:
        key = (match_key(prompt), match_key(output))
        near_duplicates += line not in seen_lines and key in seen_keys
        seen_lines.add(line)
        seen_keys.add(key)
    assert near_duplicates == sum(near.values())
    unique_rows = {line: json.loads(line) for line, _, _ in rows}.values()
    assert sum("\r\n" in row["instruction"] for row in unique_rows) == sample_data.SFT_CRLF_ROWS
    excel_cr = sum("_x000D_" in row["instruction"] for row in unique_rows)
    # A contamination row copies its task's `_x000D_` too, when it has one.
    assert 0 <= excel_cr - sample_data.SFT_EXCEL_CR_ROWS <= sample_data.SFT_CONTAMINATION_ROWS
    assert any("ＡＰＰＬＥ" in line or "３" in line for line in all_lines)


def test_preference_dirt_is_present_in_the_documented_amounts():
    all_lines = lines("raw/preference.jsonl")
    malformed = sample_data.PREFERENCE_MALFORMED
    assert len(all_lines) == 600
    assert len(all_lines) - len(set(all_lines)) == sample_data.PREFERENCE_EXACT_DUPLICATES
    rows = [parsed(line) for line in set(all_lines)]
    assert sum(not isinstance(row, dict) for row in rows) == malformed["truncated"] + malformed["array"]
    valid = [row for row in rows if isinstance(row, dict) and all(isinstance(row.get(name), str) for name in
                                                                    ("prompt", "chosen", "rejected"))]
    assert len(rows) - len(valid) == sum(malformed.values())
    assert sum(row["chosen"] == row["rejected"] for row in valid) == sample_data.PREFERENCE_SAME_EXACT
    normalised = [(normalize_text(row["chosen"]), normalize_text(row["rejected"])) for row in valid]
    assert sum(chosen == rejected for chosen, rejected in normalised) == (
        sample_data.PREFERENCE_SAME_EXACT + sample_data.PREFERENCE_SAME_NORMALISED)
    assert sum("###" in row["rejected"] for row in valid) == sample_data.PREFERENCE_REJECTED["leaked_marker"]
    assert all(normalize_text(row["chosen"]) for row in valid)


def test_pretrain_text_has_one_short_document_per_line():
    text_lines = lines("raw/pretrain.txt")
    assert len(text_lines) == sample_data.PRETRAIN_LINES
    assert all(line.strip() and len(line) < 120 for line in text_lines)
    characters = set("".join(text_lines))
    task_text = "".join(normalize_text(task.input) for task in read_tasks(DATA / "tasks.jsonl"))
    assert set(task_text) - characters <= set(" \n")
