import json

import pytest

from tunesmith.evaluate import evaluate, score

REFERENCES = {0: "東京です。", 1: "猫が寝ている。", 2: "答えは8です。"}


def test_exact_match_after_normalisation():
    result = score({0: "東京です。", 1: "犬が走っている。", 2: "答えは８です。"}, REFERENCES)
    assert [task["exact"] for task in result["per_task"]] == [True, False, True]
    assert result["exact_match"] == pytest.approx(2 / 3)
    assert result["n"] == 3
    assert [task["task_id"] for task in result["per_task"]] == [0, 1, 2]


def test_chrf_is_higher_for_a_closer_answer():
    close = score({1: "猫が寝ています。"}, {1: "猫が寝ている。"})
    far = score({1: "犬が走っています。"}, {1: "猫が寝ている。"})
    assert 0 < far["chrf"] < close["chrf"] < 100
    assert far["per_task"][0]["chrf"] < close["per_task"][0]["chrf"]
    assert score({1: "猫が寝ている。"}, {1: "猫が寝ている。"})["chrf"] == pytest.approx(100)


def test_missing_output_counts_as_a_failure():
    result = score({0: "東京です。"}, REFERENCES)
    assert result["n"] == 3
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["per_task"][1] == {"task_id": 1, "exact": False, "chrf": 0.0}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_evaluate_writes_every_stage_in_order(tmp_path):
    references = write_jsonl(tmp_path / "references.jsonl", [{"task_id": k, "output": v} for k, v in REFERENCES.items()])
    answers = {
        "base": {0: "わかりません", 1: "犬", 2: "7"},
        "sft": {0: "東京です。", 1: "猫が寝ています。", 2: "答えは7です。"},
        "dpo": dict(REFERENCES),
    }
    generations = {
        stage: write_jsonl(tmp_path / f"{stage}.jsonl", [{"task_id": k, "output": v} for k, v in outputs.items()])
        for stage, outputs in answers.items()
    }
    out, table = tmp_path / "eval" / "eval.json", tmp_path / "eval" / "eval.md"
    report = evaluate(generations, references, out, table_path=table)

    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == report
    assert list(written["stages"]) == ["base", "sft", "dpo"]
    assert list(written["per_task"]) == ["base", "sft", "dpo"]
    assert set(written["stages"]["sft"]) == {"exact_match", "chrf", "n"}
    assert written["stages"]["dpo"]["exact_match"] == 1.0
    assert written["stages"]["base"]["chrf"] < written["stages"]["sft"]["chrf"] < written["stages"]["dpo"]["chrf"]
    assert len(written["per_task"]["base"]) == 3

    lines = table.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "| stage | exact match | chrF |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["base", "sft", "dpo"]
    assert lines[4] == "| dpo | 100.0% | 100.0 |"
    assert sorted(path.name for path in out.parent.iterdir()) == ["eval.json", "eval.md"]


def test_evaluate_without_stages_is_an_error(tmp_path):
    references = write_jsonl(tmp_path / "references.jsonl", [{"task_id": 0, "output": "a"}])
    with pytest.raises(ValueError, match="no stages"):
        evaluate({}, references, tmp_path / "eval.json")


def test_scores_per_family_and_preference_accuracy(tmp_path):
    references = write_jsonl(tmp_path / "references.jsonl", [{"task_id": k, "output": v} for k, v in REFERENCES.items()])
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"task_id": 0, "input": "東京は？", "family": "capital"},
                                                   {"task_id": 1, "input": "猫は？", "family": "sentence"},
                                                   {"task_id": 2, "input": "3+5は？", "family": "sentence"}])
    generations = {"sft": write_jsonl(tmp_path / "sft.jsonl", [{"task_id": 0, "output": "東京です。"},
                                                               {"task_id": 1, "output": "猫が寝ている。"},
                                                               {"task_id": 2, "output": "9"}])}
    preference = tmp_path / "sft.preference.json"
    preference.write_text(json.dumps({"pairs": 4, "accuracy": 0.75, "mean_margin": 1.5, "per_pair": []}))
    report = evaluate(generations, references, tmp_path / "eval.json", table_path=tmp_path / "eval.md",
                      tasks_path=tasks, preferences={"sft": preference})
    families = report["stages"]["sft"]["families"]
    assert list(families) == ["capital", "sentence"]
    assert (families["capital"]["exact_match"], families["capital"]["n"]) == (1.0, 1)
    assert (families["sentence"]["exact_match"], families["sentence"]["n"]) == (0.5, 2)
    assert families["capital"]["chrf"] == pytest.approx(100)
    assert [task["family"] for task in report["per_task"]["sft"]] == ["capital", "sentence", "sentence"]
    assert report["preference"] == {"sft": {"pairs": 4, "accuracy": 0.75, "mean_margin": 1.5}}
    table = (tmp_path / "eval.md").read_text(encoding="utf-8")
    assert "| capital | 1 | 100% |" in table and "| sentence | 2 | 50% |" in table
    assert "| sft | 4 | 75.0% | 1.50 |" in table


def test_no_family_section_without_families(tmp_path):
    references = write_jsonl(tmp_path / "references.jsonl", [{"task_id": 0, "output": "a"}])
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"task_id": 0, "input": "q"}])
    generations = {"sft": write_jsonl(tmp_path / "sft.jsonl", [{"task_id": 0, "output": "a"}])}
    report = evaluate(generations, references, tmp_path / "eval.json", table_path=tmp_path / "eval.md", tasks_path=tasks)
    assert "families" not in report["stages"]["sft"] and "preference" not in report
    assert "family" not in (tmp_path / "eval.md").read_text()
