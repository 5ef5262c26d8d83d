import json
import re
from pathlib import Path

import pytest

from tunesmith.data.tasks import Task, TaskFileError, read_references, read_task_families, read_tasks

DATA = Path(__file__).resolve().parents[1] / "data"


def dump(record):
    return json.dumps(record, ensure_ascii=False)


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def test_reads_one_object_per_line(tmp_path):
    path = write(
        tmp_path / "tasks.jsonl",
        dump({"task_id": 0, "input": "日本の首都は？"}) + "\n" + dump({"task_id": 1, "input": "１＋１は？"}) + "\n",
    )
    assert read_tasks(path) == [
        Task(task_id=0, input="日本の首都は？", line=1),
        Task(task_id=1, input="１＋１は？", line=2),
    ]


def test_accepts_a_path_given_as_a_string(tmp_path):
    path = write(tmp_path / "tasks.jsonl", dump({"task_id": 0, "input": "x"}) + "\n")
    assert read_tasks(str(path))[0].input == "x"


def test_pretty_printed_records_mixed_with_single_lines(tmp_path):
    pretty = json.dumps({"task_id": 1, "input": "二行\n目"}, ensure_ascii=False, indent=2)
    assert pretty.count("\n") == 3
    text = "\n".join(
        [
            dump({"task_id": 0, "input": "一"}),  # line 1
            pretty,  # lines 2-5
            dump({"task_id": 2, "input": "三"}),  # line 6
            "",  # line 7 blank
            json.dumps({"task_id": 3, "input": "四"}, indent=4),  # lines 8-11
            dump({"task_id": 4, "input": "五"}),  # line 12
        ]
    )
    tasks = read_tasks(write(tmp_path / "tasks.jsonl", text + "\n"))
    assert [(task.task_id, task.line) for task in tasks] == [(0, 1), (1, 2), (2, 6), (3, 8), (4, 12)]
    assert tasks[1].input == "二行\n目"


def test_no_trailing_newline_and_extra_blank_lines(tmp_path):
    text = "\n\n" + dump({"task_id": 5, "input": "a"}) + "\n\n\n" + dump({"task_id": 6, "input": "b"})
    tasks = read_tasks(write(tmp_path / "tasks.jsonl", text))
    assert [(task.task_id, task.line) for task in tasks] == [(5, 3), (6, 6)]


def test_excel_marker_kept_in_input_and_removed_from_prompt_text(tmp_path):
    raw = "カタカナで書いてください。_x000D_\nらっぱ"
    path = write(tmp_path / "tasks.jsonl", dump({"task_id": 0, "input": raw}) + "\n")
    (task,) = read_tasks(path)
    assert task.input == raw
    assert task.prompt_text == "カタカナで書いてください。\nらっぱ"


def test_prompt_text_is_the_input_cleaned_of_noise_only():
    task = Task(task_id=0, input="  ＡＢＣ\u200b\r\n\r\n\r\nｶﾅ\u3000 ", line=1)
    assert task.prompt_text == "  ＡＢＣ\n\n\nｶﾅ"  # width, indentation and blank lines as written
    assert task.input == "  ＡＢＣ\u200b\r\n\r\n\r\nｶﾅ\u3000 "
    code = "次のコードの誤りを直してください！（例①）\n```python\ndef f(x):\n    if x > 0：\n        return x\n```"
    assert Task(task_id=1, input=code + "_x000D_\r\n", line=1).prompt_text == code


def test_byte_order_mark_at_file_start(tmp_path):
    path = write(tmp_path / "tasks.jsonl", dump({"task_id": 0, "input": "x"}) + "\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_tasks(path) == [Task(task_id=0, input="x", line=1)]


def test_crlf_file_reads_with_correct_lines(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(
        (dump({"task_id": 0, "input": "a"}) + "\r\n" + dump({"task_id": 1, "input": "b"}) + "\r\n").encode()
    )
    assert [(task.task_id, task.line) for task in read_tasks(path)] == [(0, 1), (1, 2)]


def test_tasks_are_sorted_by_task_id(tmp_path):
    lines = [dump({"task_id": task_id, "input": str(task_id)}) for task_id in (10, 2, 33, 0, 7)]
    tasks = read_tasks(write(tmp_path / "tasks.jsonl", "\n".join(lines) + "\n"))
    assert [task.task_id for task in tasks] == [0, 2, 7, 10, 33]
    # the line stays the record's own line, not its sorted position
    assert [task.line for task in tasks] == [4, 2, 5, 1, 3]
    assert all(task.input == str(task.task_id) for task in tasks)


def test_extra_fields_are_ignored(tmp_path):
    path = write(tmp_path / "tasks.jsonl", dump({"task_id": 0, "input": "x", "note": 1}) + "\n")
    assert read_tasks(path) == [Task(task_id=0, input="x", line=1)]


GOOD = dump({"task_id": 0, "input": "a"})


def bad_task_file(kind):
    """Text of a task file with one fault, and the line its error must name."""
    if kind == "broken json":
        return GOOD + "\n" + '{"task_id": 1, "input": b}' + "\n" + dump({"task_id": 2, "input": "c"}) + "\n", 2
    if kind == "broken json in pretty record":
        return GOOD + '\n{\n  "task_id": 1,\n  "input": "b",,\n}\n', 2  # the record's first line (error at 4)
    if kind == "trailing garbage":
        return GOOD + "\n" + dump({"task_id": 1, "input": "b"}) + " xyz\n", 2
    if kind == "array":
        return GOOD + "\n" + '[{"task_id": 1, "input": "b"}]' + "\n", 2
    if kind == "string value":
        return GOOD + '\n"just text"\n', 2
    if kind == "missing task_id":
        return GOOD + "\n" + dump({"input": "b"}) + "\n", 2
    if kind == "missing input":
        return GOOD + "\n\n" + dump({"task_id": 1}) + "\n", 3
    if kind == "string task_id":
        return GOOD + "\n" + dump({"task_id": "1", "input": "b"}) + "\n", 2
    if kind == "bool task_id":
        return GOOD + "\n" + dump({"task_id": True, "input": "b"}) + "\n", 2
    if kind == "float task_id":
        return GOOD + "\n" + dump({"task_id": 1.0, "input": "b"}) + "\n", 2
    if kind == "null input":
        return GOOD + "\n" + dump({"task_id": 1, "input": None}) + "\n", 2
    if kind == "number input":
        return GOOD + "\n" + dump({"task_id": 1, "input": 3}) + "\n", 2
    raise AssertionError(kind)


BAD_KINDS = [
    ("broken json", "not valid JSON"),
    ("broken json in pretty record", "not valid JSON"),
    ("trailing garbage", "not valid JSON"),
    ("array", "expected a JSON object"),
    ("string value", "expected a JSON object"),
    ("missing task_id", "missing field 'task_id'"),
    ("missing input", "missing field 'input'"),
    ("string task_id", "field 'task_id' must be int"),
    ("bool task_id", "field 'task_id' must be int"),
    ("float task_id", "field 'task_id' must be int"),
    ("null input", "field 'input' must be str"),
    ("number input", "field 'input' must be str"),
]


@pytest.mark.parametrize("kind, message", BAD_KINDS)
def test_bad_task_file_names_file_and_line(tmp_path, kind, message):
    text, line = bad_task_file(kind)
    path = write(tmp_path / "tasks.jsonl", text)
    with pytest.raises(TaskFileError) as caught:
        read_tasks(path)
    assert f"{path}:{line}:" in str(caught.value)
    assert message in str(caught.value)


def test_task_file_error_is_a_value_error():
    assert issubclass(TaskFileError, ValueError)


def test_duplicate_task_id_names_both_lines(tmp_path):
    text = "\n".join([GOOD, dump({"task_id": 1, "input": "b"}), dump({"task_id": 0, "input": "again"})]) + "\n"
    path = write(tmp_path / "tasks.jsonl", text)
    with pytest.raises(TaskFileError, match="task_id 0 already defined at line 1") as caught:
        read_tasks(path)
    assert str(caught.value).startswith(f"{path}:3:")


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "tasks.jsonl"
    with pytest.raises(TaskFileError, match="file not found") as caught:
        read_tasks(path)
    assert str(path) in str(caught.value)


def test_directory_is_not_a_task_file(tmp_path):
    with pytest.raises(TaskFileError, match="file not found"):
        read_tasks(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n  \n", "\ufeff"])
def test_empty_file_is_an_error(tmp_path, text):
    path = write(tmp_path / "tasks.jsonl", text)
    with pytest.raises(TaskFileError, match="no tasks") as caught:
        read_tasks(path)
    assert str(path) in str(caught.value)


def test_references_read_by_task_id(tmp_path):
    text = "\n".join(
        [
            dump({"task_id": 2, "output": "ソウル"}),
            json.dumps({"task_id": 0, "output": "東京\n です"}, ensure_ascii=False, indent=2),
            dump({"task_id": 1, "output": "_x000D_そのまま"}),
        ]
    )
    path = write(tmp_path / "references.jsonl", "\ufeff" + text + "\n")
    assert read_references(path) == {0: "東京\n です", 1: "_x000D_そのまま", 2: "ソウル"}


@pytest.mark.parametrize(
    "text, line, message",
    [
        (dump({"task_id": 0, "output": "a"}) + "\n{oops}\n", 2, "not valid JSON"),
        (dump({"task_id": 0, "output": "a"}) + "\n[1]\n", 2, "expected a JSON object"),
        (dump({"task_id": 0, "input": "a"}) + "\n", 1, "missing field 'output'"),
        (dump({"task_id": "0", "output": "a"}) + "\n", 1, "field 'task_id' must be int"),
        (dump({"task_id": False, "output": "a"}) + "\n", 1, "field 'task_id' must be int"),
        (dump({"task_id": 0, "output": ["a"]}) + "\n", 1, "field 'output' must be str"),
        (
            dump({"task_id": 4, "output": "a"}) + "\n\n" + dump({"task_id": 4, "output": "b"}) + "\n",
            3,
            "task_id 4 already defined at line 1",
        ),
    ],
)
def test_bad_reference_file_names_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path / "references.jsonl", text)
    with pytest.raises(TaskFileError) as caught:
        read_references(path)
    assert str(caught.value).startswith(f"{path}:{line}:")
    assert message in str(caught.value)


def test_missing_and_empty_reference_files(tmp_path):
    with pytest.raises(TaskFileError, match="file not found"):
        read_references(tmp_path / "references.jsonl")
    with pytest.raises(TaskFileError, match="no tasks"):
        read_references(write(tmp_path / "references.jsonl", ""))


def test_shipped_tasks_cover_ids_0_to_99():
    tasks = read_tasks(DATA / "tasks.jsonl")
    assert [task.task_id for task in tasks] == list(range(100))
    assert all(task.input.strip() for task in tasks)
    # the shipped file is dirty on purpose: pretty-printed rows and Excel markers
    assert any(task.line != task.task_id + 1 for task in tasks)
    assert any("_x000D_" in task.input and "_x000D_" not in task.prompt_text for task in tasks)


def test_shipped_references_cover_the_same_ids():
    tasks = read_tasks(DATA / "tasks.jsonl")
    references = read_references(DATA / "references.jsonl")
    assert sorted(references) == [task.task_id for task in tasks]
    assert all(references.values())


def test_unclosed_record_is_blamed_on_the_line_where_it_starts(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"task_id": 0, "input": "a"}\n{"task_id": 1, "input": "b"\n{"task_id": 2, "input": "c"}\n',
                    encoding="utf-8")
    with pytest.raises(TaskFileError, match=r"tasks\.jsonl:2: not valid JSON .* at line 3"):
        read_tasks(path)


def test_task_families_are_read_where_given(tmp_path):
    path = write(tmp_path / "tasks.jsonl", "\n".join([
        dump({"task_id": 0, "input": "a", "family": "capital"}), dump({"task_id": 1, "input": "b"}),
        dump({"task_id": 2, "input": "c", "family": "addition"})]) + "\n")
    assert read_task_families(path) == {0: "capital", 2: "addition"}


@pytest.mark.parametrize("family", [3, "", ["capital"]])
def test_a_bad_family_names_file_and_line(tmp_path, family):
    path = write(tmp_path / "tasks.jsonl", dump({"task_id": 0, "input": "a"}) + "\n"
                 + dump({"task_id": 1, "input": "b", "family": family}) + "\n")
    with pytest.raises(TaskFileError, match=r"tasks.jsonl:2: field 'family' must be a non-empty string"):
        read_task_families(path)


def test_shipped_tasks_each_name_their_family():
    families = read_task_families(DATA / "tasks.jsonl")
    assert sorted(families) == list(range(100))
    assert set(families.values()) == {"addition", "antonym", "capital", "repetition", "katakana", "uppercase"}


# ---- references as they really come: ELYZA CSV, JSONL by id or by input, gaps -------------------

from tunesmith.config.recipe import load_recipe  # noqa: E402
from tunesmith.data.tasks import check_task_files, load_references, read_reference_grades  # noqa: E402

ELYZA_TASKS = [
    {"task_id": 0, "input": "仕事の熱意を取り戻すためのアイデアを5つ挙げてください。"},
    {"task_id": 1, "input": "クマが海辺に行ってアザラシと友達になる短編小説を書いてください。_x000D_"},
    {"task_id": 2, "input": "古代ギリシャを学ぶ上で知っておくべきポイントは？"},
]
# The ELYZA-tasks-100 CSV: no ids, quoted fields that span lines, a doubled quote, CRLF line ends.
ELYZA_CSV = (
    'input,output,eval_aspect\r\n'
    '"仕事の熱意を取り戻すためのアイデアを5つ挙げてください。","1. 目標を設定する\r\n2. 休暇を取る","- 5つ挙げていない場合: -1点\r\n- 熱意に関係ない: -2点"\r\n'
    '"古代ギリシャを学ぶ上で知っておくべきポイントは？","ポリス、""民主政""、哲学",\r\n'
    '"クマが海辺に行ってアザラシと友達になる短編小説を書いてください。","むかしむかし…","- 小説になっていない: 1点"\r\n'
)


def tasks_file(tmp_path, rows=ELYZA_TASKS):
    return write(tmp_path / "tasks.jsonl", "".join(dump(row) + "\n" for row in rows))


def test_elyza_csv_references_match_tasks_by_input_text(tmp_path):
    tasks = read_tasks(tasks_file(tmp_path))
    loaded = load_references(write(tmp_path / "elyza.csv", ELYZA_CSV), tasks)
    assert loaded.missing == []
    assert loaded.by_task[0].output == "1. 目標を設定する\r\n2. 休暇を取る"
    assert loaded.by_task[0].eval_aspect.startswith("- 5つ挙げていない場合")
    assert loaded.by_task[0].line == 2
    assert loaded.by_task[2].output == 'ポリス、"民主政"、哲学' and loaded.by_task[2].eval_aspect is None
    assert loaded.by_task[2].line == 5  # the record before it spans lines 2-4
    # the task's input has Excel residue the CSV does not: normalised text still matches
    assert loaded.by_task[1].eval_aspect == "- 小説になっていない: 1点" and loaded.by_task[1].line == 6


def test_references_without_some_tasks_are_counted_not_silent(tmp_path):
    tasks = read_tasks(tasks_file(tmp_path))
    csv_text = "\r\n".join(ELYZA_CSV.split("\r\n")[:5]) + "\r\n"  # header and the first two records
    loaded = load_references(write(tmp_path / "partial.csv", csv_text), tasks)
    assert sorted(loaded.by_task) == [0, 2] and loaded.missing == [1]


def test_jsonl_references_by_id_or_by_input_with_eval_aspect(tmp_path):
    tasks = read_tasks(tasks_file(tmp_path))
    path = write(tmp_path / "refs.jsonl", "\n".join([
        dump({"task_id": 2, "output": "ポリス", "eval_aspect": "- ポリスに触れる"}),
        dump({"input": ELYZA_TASKS[0]["input"], "output": "アイデア"}),
    ]) + "\n")
    loaded = load_references(path, tasks)
    assert loaded.by_task[2].eval_aspect == "- ポリスに触れる" and loaded.by_task[0].output == "アイデア"
    assert loaded.missing == [1]


@pytest.mark.parametrize("text, line, message", [
    ('input,output\n"知らない問題","x"\n', 2, "matches no task of the task file"),
    ('task_id,output\n7,x\n', 2, "task_id 7 is not in the task file"),
    ('task_id,output\nseven,x\n', 2, "field 'task_id' must be an integer, got 'seven'"),
    ('input,answer\n"a","b"\n', 1, "no 'output' column"),
    ('output,eval_aspect\n"a","b"\n', 1, "needs a 'task_id' or an 'input' column"),
    ('input,output,eval_aspect\n"古代ギリシャを学ぶ上で知っておくべきポイントは？","x"\n', 2, "2 fields where the header has 3"),
    ('task_id,output\n0,a\n\n0,b\n', 4, "task 0 already has a row at line 2"),
])
def test_bad_csv_references_name_file_and_line(tmp_path, text, line, message):
    tasks = read_tasks(tasks_file(tmp_path))
    path = write(tmp_path / "refs.csv", text)
    with pytest.raises(TaskFileError) as caught:
        load_references(path, tasks)
    assert f"{path}:{line}: " in str(caught.value) and message in str(caught.value)


def test_every_unmatched_row_is_reported_at_once(tmp_path):
    tasks = read_tasks(tasks_file(tmp_path))
    path = write(tmp_path / "refs.jsonl", "".join(dump({"task_id": 10 + i, "output": "x"}) + "\n" for i in range(3)))
    with pytest.raises(TaskFileError) as caught:
        load_references(path, tasks)
    assert [line.split(": ", 1)[0] for line in str(caught.value).splitlines()] == [f"{path}:{i}" for i in (1, 2, 3)]


def test_reference_grades_need_an_answer_and_a_grade_from_1_to_5(tmp_path):
    tasks = read_tasks(tasks_file(tmp_path))
    good = write(tmp_path / "grades.csv", "task_id,output,grade\n0,アイデア,4\n2,ポリス,1\n")
    grades = read_reference_grades(good, tasks)
    assert {task: (graded.output, graded.grade) for task, graded in grades.items()} == {0: ("アイデア", 4), 2: ("ポリス", 1)}
    bad = write(tmp_path / "bad.jsonl", dump({"task_id": 0, "output": "a", "grade": 6}) + "\n"
                + dump({"task_id": 1, "output": "b", "grade": 0}) + "\n")
    with pytest.raises(TaskFileError) as caught:
        read_reference_grades(bad, tasks)
    assert str(caught.value).splitlines() == [f"{bad}:1: grade must be an integer from 1 to 5, got 6",
                                              f"{bad}:2: grade must be an integer from 1 to 5, got 0"]
    no_answer = write(tmp_path / "no_answer.jsonl", dump({"task_id": 1, "grade": 3}) + "\n")
    with pytest.raises(TaskFileError, match=r"no_answer.jsonl:1: missing field 'output'"):
        read_reference_grades(no_answer, tasks)


def recipe_with(tmp_path, **tasks_section):
    recipe = load_recipe(REPO_RECIPE)
    recipe["tasks"].update(tasks_section)
    return recipe


REPO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "default.yaml"


def test_check_task_files_names_the_recipe_key_file_and_line(tmp_path):
    tasks = tasks_file(tmp_path)
    bad_refs = write(tmp_path / "refs.csv", 'input,output\n"知らない問題","x"\n')
    recipe = recipe_with(tmp_path, path=str(tasks), references=str(bad_refs))
    recipe["judge"].update(backend="openai", reference_grades=str(tmp_path / "nowhere.jsonl"))
    recipe["judge"]["openai"]["base_url"] = "http://127.0.0.1:8000/v1"
    problems = check_task_files(recipe)
    assert problems == [
        f"tasks.references: {bad_refs}:2: input '知らない問題…' matches no task of the task file",
        f"judge.reference_grades: {tmp_path / 'nowhere.jsonl'}: file not found",
    ]
    broken_tasks = write(tmp_path / "broken.jsonl", dump(ELYZA_TASKS[0]) + "\n{oops\n")
    assert check_task_files(recipe_with(tmp_path, path=str(broken_tasks))) == [
        f"tasks.path: {broken_tasks}:2: not valid JSON (Expecting property name enclosed in double quotes at line 2)"]


def test_the_shipped_recipes_task_files_have_no_problems():
    for name in ("default.yaml", "sweep.yaml", "llm-jp-3-13b-qlora.yaml"):
        recipe = load_recipe(REPO_RECIPE.parent / name)
        assert check_task_files(recipe) == [], name


def test_a_task_file_without_references_is_fine_for_a_judge(tmp_path):
    recipe = recipe_with(tmp_path, path=str(tasks_file(tmp_path)), references=None)
    recipe["judge"].update(backend="transformers")
    recipe["judge"]["local"]["path"] = "some/model"
    assert check_task_files(recipe) == []


def test_the_answers_page_groups_by_the_same_field_the_family_scores_read(tmp_path):
    """`family` is the task file's field for both (answers.html once also took `category`, which the scores
    ignored): a `category` alone groups nothing, anywhere; a bad `family` fails the page as it fails scoring."""
    from tunesmith.evaluation.answers import answers_page

    generations = tmp_path / "sft.jsonl"
    generations.write_text(dump({"task_id": 0, "output": "x"}) + "\n" + dump({"task_id": 1, "output": "y"}) + "\n")
    files = {"generations": {"sft": str(generations)}, "judged": {}, "references": None}
    tasks = write(tmp_path / "tasks.jsonl", dump({"task_id": 0, "input": "a", "family": "capital"}) + "\n"
                  + dump({"task_id": 1, "input": "b", "category": "addition"}) + "\n")
    page = answers_page({**files, "tasks": str(tasks)}, "sft")
    assert read_task_families(tasks) == {0: "capital"}
    assert re.findall(r'<h2 id="family-\d">([^<]+)</h2>', page) == ["capital: 1 tasks", "all: 1 tasks"]
    bad = write(tmp_path / "bad.jsonl", dump({"task_id": 0, "input": "a", "family": 3}) + "\n")
    with pytest.raises(TaskFileError, match="bad.jsonl:1: field 'family'"):
        answers_page({**files, "tasks": str(bad)}, "sft")
