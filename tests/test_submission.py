import json

import pytest

from tunesmith.generation.submission import SubmissionError, validate_submission, write_submission

TASKS = [
    {"task_id": 0, "input": "日本の首都はどこですか？"},
    {"task_id": 1, "input": "次の文を要約してください。_x000D_\n猫が寝ている。"},
    {"task_id": 2, "input": "１＋１は？"},
]
OUTPUTS = {0: "東京です。", 1: "猫が寝ている。", 2: "2です。"}


@pytest.fixture
def tasks_path(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(task, ensure_ascii=False) + "\n" for task in TASKS), encoding="utf-8")
    return path


def good_rows():
    return [{**task, "output": OUTPUTS[task["task_id"]]} for task in TASKS]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def dump(row):
    return json.dumps(row, ensure_ascii=False)


def test_good_submission_is_accepted(tmp_path, tasks_path):
    path = write_lines(tmp_path / "submission.jsonl", [dump(row) for row in good_rows()])
    assert validate_submission(path, tasks_path) == 3


def test_literal_backslash_u_in_an_answer_is_not_an_escape(tmp_path, tasks_path):
    rows = good_rows()
    rows[0]["output"] = r"Pythonでは \u3042 と書きます。"
    path = write_lines(tmp_path / "submission.jsonl", [dump(row) for row in rows])
    assert validate_submission(path, tasks_path) == 3


def test_line_separator_inside_an_answer_does_not_split_the_line(tmp_path, tasks_path):
    rows = good_rows()
    rows[0]["output"] = "東京\u2028です。"
    path = write_lines(tmp_path / "submission.jsonl", [dump(row) for row in rows])
    assert validate_submission(path, tasks_path) == 3


def bad_lines(kind):
    """Submission lines with one kind of fault, and a fragment the error message must contain."""
    rows = good_rows()
    lines = [dump(row) for row in rows]
    if kind == "broken json":
        lines[1] = lines[1][:-1]
        return lines, r"submission.jsonl:2: not valid JSON"
    if kind == "missing field":
        del rows[1]["output"]
        lines[1] = dump(rows[1])
        return lines, r"submission.jsonl:2: 'output' is a required property"
    if kind == "extra field":
        rows[1]["score"] = 1
        lines[1] = dump(rows[1])
        return lines, r"submission.jsonl:2: Additional properties are not allowed \('score' was unexpected\)"
    if kind == "wrong type":
        rows[1]["output"] = 42
        lines[1] = dump(rows[1])
        return lines, r"submission.jsonl:2: field 'output' must be string, got integer"
    if kind == "float task id":
        rows[1]["task_id"] = 1.0
        lines[1] = dump(rows[1])
        return lines, r"submission.jsonl:2: field 'task_id' must be written as an integer"
    if kind == "missing task id":
        del lines[1]
        return lines, r"submission.jsonl: no row for task_id 1 of .*tasks.jsonl"
    if kind == "duplicate id":
        lines.insert(2, lines[1])
        return lines, r"submission.jsonl:3: task_id 1 duplicates line 2"
    if kind == "unknown id":
        lines.append(dump({"task_id": 7, "input": "?", "output": "!"}))
        return lines, r"submission.jsonl:4: task_id 7 is not in .*tasks.jsonl"
    if kind == "out of order":
        lines[1], lines[2] = lines[2], lines[1]
        return lines, r"submission.jsonl:3: task_id 1 comes after task_id 2 \(line 2\)"
    if kind == "escaped japanese":
        lines[0] = json.dumps(rows[0])
        return lines, r"submission.jsonl:1: non-ASCII text written as escapes \(\\u65e5"
    if kind == "input mismatch":
        rows[1]["input"] = rows[1]["input"].replace("_x000D_", "")
        lines[1] = dump(rows[1])
        return lines, r"submission.jsonl:2: task_id 1: input differs from .*tasks.jsonl:2 at character 14"
    if kind == "blank line":
        lines.insert(1, "")
        return lines, r"submission.jsonl:2: blank line"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "broken json", "missing field", "extra field", "wrong type", "float task id", "missing task id",
        "duplicate id", "unknown id", "out of order", "escaped japanese", "input mismatch",
        "blank line",
    ],
)
def test_bad_submission_is_rejected_with_file_and_line(tmp_path, tasks_path, kind):
    lines, message = bad_lines(kind)
    path = write_lines(tmp_path / "submission.jsonl", lines)
    with pytest.raises(SubmissionError, match=message):
        validate_submission(path, tasks_path)


def test_byte_order_mark_and_invalid_utf8_are_rejected(tmp_path, tasks_path):
    path = tmp_path / "submission.jsonl"
    lines = [dump(row).encode("utf-8") for row in good_rows()]
    lines[1] = lines[1].replace("猫".encode("utf-8"), "猫".encode("shift_jis"), 1)
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    with pytest.raises(SubmissionError) as error:
        validate_submission(path, tasks_path)
    assert "submission.jsonl:1: starts with a UTF-8 byte-order mark" in str(error.value)
    assert "submission.jsonl:2: not UTF-8" in str(error.value)


def test_every_problem_is_reported_at_once(tmp_path, tasks_path):
    rows = good_rows()
    rows[0]["output"] = 3
    rows[2]["input"] = "?"
    path = write_lines(tmp_path / "submission.jsonl", [dump(row) for row in rows])
    with pytest.raises(SubmissionError, match=r"3 problem\(s\)") as error:
        validate_submission(path, tasks_path)
    assert "submission.jsonl:1: field 'output' must be string" in str(error.value)
    assert "task_id 2: input differs" in str(error.value)


def test_empty_output_is_refused_unless_the_recipe_allows_it(tmp_path, tasks_path, caplog):
    """The checker accepts an empty answer but scores it the minimum: refused, naming the recipe key,
    unless submission.allow_empty; then submitted with a warning."""
    rows = good_rows()
    rows[2]["output"] = "  "
    path = write_lines(tmp_path / "submission.jsonl", [dump(row) for row in rows])
    with pytest.raises(SubmissionError, match=r"submission.jsonl:3: task_id 2: output is empty .*submission.allow_empty"):
        validate_submission(path, tasks_path)
    assert validate_submission(path, tasks_path, allow_empty=True) == 3
    assert "submission.jsonl:3: task_id 2: output is empty" in caplog.text
    rows[2]["output"] = ""
    generations = tmp_path / "generations.jsonl"
    generations.write_text("".join(dump({"task_id": row["task_id"], "output": row["output"]}) + "\n" for row in rows),
                           encoding="utf-8")
    out = tmp_path / "written.jsonl"
    with pytest.raises(SubmissionError, match=r"task_id 2: output is empty"):
        write_submission(generations, tasks_path, out)
    assert not out.exists()
    assert write_submission(generations, tasks_path, out, allow_empty=True) == 3


def write_generations(path, outputs):
    path.write_text(
        "".join(dump({"task_id": task_id, "output": output, "stage": "dpo"}) + "\n" for task_id, output in outputs.items()),
        encoding="utf-8",
    )
    return path


def test_write_submission_echoes_inputs_in_task_order_as_raw_utf8(tmp_path, tasks_path):
    generations = write_generations(tmp_path / "generations.jsonl", dict(reversed(OUTPUTS.items())))
    out = tmp_path / "out" / "submission.jsonl"
    assert write_submission(generations, tasks_path, out) == 3
    text = out.read_bytes().decode("utf-8")
    assert "東京です。" in text and "\\u" not in text
    assert [json.loads(line) for line in text.splitlines()] == good_rows()
    assert validate_submission(out, tasks_path) == 3
    assert [path.name for path in out.parent.iterdir()] == ["submission.jsonl"]


def test_failed_validation_leaves_no_file(tmp_path, tasks_path):
    generations = write_generations(tmp_path / "generations.jsonl", {0: "東京です。", 2: "2です。"})
    out = tmp_path / "out" / "submission.jsonl"
    with pytest.raises(SubmissionError, match=r"(?s)submission.jsonl not written .*submission.jsonl: no row for task_id 1"):
        write_submission(generations, tasks_path, out)
    assert list(out.parent.iterdir()) == []


def test_failed_validation_keeps_an_existing_submission(tmp_path, tasks_path):
    out = tmp_path / "submission.jsonl"
    out.write_text("older submission\n", encoding="utf-8")
    generations = write_generations(tmp_path / "generations.jsonl", {0: OUTPUTS[0], 1: OUTPUTS[1]})
    with pytest.raises(SubmissionError, match=r"no row for task_id 2"):
        write_submission(generations, tasks_path, out)
    assert out.read_text(encoding="utf-8") == "older submission\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["generations.jsonl", "submission.jsonl", "tasks.jsonl"]


@pytest.mark.parametrize(
    "generation_lines, message",
    [
        (['{"task_id": 0, "output": "a"}', '{"task_id": 0, "output": "b"}'], r"generations.jsonl:2: task_id 0 already answered at line 1"),
        (['{"task_id": 9, "output": "a"}'], r"generations.jsonl:1: task_id 9 is not in"),
        (['{"task_id": "0", "output": "a"}'], r"generations.jsonl:1: 'task_id' must be an integer"),
        (['{"task_id": 0}'], r"generations.jsonl:1: 'output' must be a string, got null"),
        (['{"task_id": 0, "output": "\\ud800"}'], r"generations.jsonl:1: task_id 0: output is not valid Unicode"),
    ],
)
def test_bad_generations_are_rejected_before_writing(tmp_path, tasks_path, generation_lines, message):
    generations = write_lines(tmp_path / "generations.jsonl", generation_lines)
    out = tmp_path / "out" / "submission.jsonl"
    with pytest.raises(SubmissionError, match=message):
        write_submission(generations, tasks_path, out)
    assert not out.exists()
