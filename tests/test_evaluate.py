import json

import pytest

from tunesmith.evaluation.evaluate import evaluate, score

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
    assert set(written["stages"]["sft"]) == {"exact_match", "chrf", "n", "exact_match_interval", "chrf_interval"}
    assert written["stages"]["dpo"]["exact_match"] == 1.0
    assert written["stages"]["base"]["chrf"] < written["stages"]["sft"]["chrf"] < written["stages"]["dpo"]["chrf"]
    assert len(written["per_task"]["base"]) == 3

    lines = table.read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"References: {references}, covering 3 of 3 tasks."
    assert lines[2] == "| stage | exact match | 95% interval | chrF | 95% interval | tasks with a reference |"
    assert [line.split("|")[1].strip() for line in lines[4:7]] == ["base", "sft", "dpo"]
    # Wilson's 95% interval of 3 of 3 starts at 43.85%; chrF's bootstrap of three perfect answers is 100–100.
    assert lines[6] == "| dpo | 100.0% | 43.9%–100.0% | 100.0 | 100.0–100.0 | 3 |"
    assert lines[8].startswith("Each stage against the one before it")
    assert [line.split("|")[1:3] for line in lines[12:16]] == [
        [" base → sft ", " exact match "], [" base → sft ", " chrF "], [" sft → dpo ", " exact match "],
        [" sft → dpo ", " chrF "]]
    # Three tasks cannot show anything beyond noise: McNemar's smallest two-sided p with 3 discordant is 0.25.
    assert all(line.endswith("| within noise |") for line in lines[12:16]), lines[12:16]
    assert [(entry["a"], entry["b"]) for entry in report["comparisons"]] == [("base", "sft"), ("base", "dpo"),
                                                                           ("sft", "dpo")]
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
    assert report["preference"] == {"sft": {"pairs": 4, "accuracy": 0.75, "mean_margin": 1.5,
                                            "interval": [pytest.approx(0.3006, abs=1e-4), pytest.approx(0.9544, abs=1e-4)]}}
    table = (tmp_path / "eval.md").read_text(encoding="utf-8")
    assert "| capital | 1 | 100% |" in table and "| sentence | 2 | 50% |" in table
    assert "| sft | 4 | 75.0% | 30.1%–95.4% | 1.50 |" in table


def test_no_family_section_without_families(tmp_path):
    references = write_jsonl(tmp_path / "references.jsonl", [{"task_id": 0, "output": "a"}])
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"task_id": 0, "input": "q"}])
    generations = {"sft": write_jsonl(tmp_path / "sft.jsonl", [{"task_id": 0, "output": "a"}])}
    report = evaluate(generations, references, tmp_path / "eval.json", table_path=tmp_path / "eval.md", tasks_path=tasks)
    assert "families" not in report["stages"]["sft"] and "preference" not in report
    assert "per task family" not in (tmp_path / "eval.md").read_text()


# ---- the judge's scores ---------------------------------------------------------------------------

from conftest import REPO  # noqa: E402
from tunesmith.config.recipe import load_recipe  # noqa: E402
from tunesmith.evaluation.evaluate import judge_score  # noqa: E402
from tunesmith.evaluation.leaderboard import leaderboard  # noqa: E402
from tunesmith.judge.judge_stats import agreement, bootstrap_interval, quadratic_weighted_kappa, spearman  # noqa: E402

JUDGE = load_recipe(REPO / "recipes/default.yaml")["judge"] | {"backend": "openai"}
JUDGE["openai"] = JUDGE["openai"] | {"model": "judge-model", "base_url": "http://127.0.0.1:1/v1"}

# Grades of ten answers by two judges; expected values computed by scikit-learn 1.9.1
# (cohen_kappa_score(weights="quadratic", labels=[1..5])) and scipy 1.17 (spearmanr).
OURS = [5, 4, 4, 3, 2, 1, 5, 3, 2, 4]
THEIRS = [4, 4, 5, 3, 1, 1, 5, 2, 2, 3]


def test_agreement_statistics_on_a_fixture():
    found = agreement(dict(enumerate(OURS)), dict(enumerate(THEIRS)))
    assert found["n"] == 10
    assert found["exact"] == pytest.approx(0.5)
    assert found["within_one"] == pytest.approx(1.0)
    assert found["quadratic_weighted_kappa"] == pytest.approx(0.8648648648648649)
    assert found["spearman"] == pytest.approx(0.893099424632264)
    assert quadratic_weighted_kappa([1, 1, 1, 2], [5, 5, 4, 5]) == pytest.approx(0.00990099009900991)
    assert spearman([1, 1, 1, 2], [5, 5, 4, 5]) == pytest.approx(1 / 3)


def test_agreement_edge_cases():
    assert quadratic_weighted_kappa([3, 3], [3, 3]) is None  # chance agreement is perfect: undefined
    assert spearman([3, 3, 3], [1, 2, 3]) is None
    assert quadratic_weighted_kappa([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert agreement({0: 3}, {1: 3})["n"] == 0  # no task graded by both


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    grades = [1, 2, 2, 3, 3, 3, 4, 4, 5, 5] * 3
    low, high = bootstrap_interval(grades, 2000, 0.95, seed=1)
    assert low < sum(grades) / len(grades) < high and high - low < 1.2
    assert bootstrap_interval(grades, 2000, 0.95, seed=1) == [low, high]
    narrower = bootstrap_interval(grades, 2000, 0.5, seed=1)
    assert low < narrower[0] < narrower[1] < high
    assert bootstrap_interval([4] * 5, 100, 0.95, seed=0) == [4.0, 4.0]
    assert bootstrap_interval([], 100, 0.95, seed=0) is None


def test_unparseable_replies_are_counted_and_left_out_of_the_mean():
    rows = [{"grade": 5}, {"grade": 3}, {"grade": None}, {"grade": None}]
    result = judge_score(rows, 200, 0.9, seed=0)
    assert result["mean"] == pytest.approx(4.0)  # not (5 + 3 + 0 + 0) / 4
    assert (result["graded"], result["unparseable"]) == (2, 2)
    assert result["distribution"] == {"1": 0, "2": 0, "3": 1, "4": 0, "5": 1}
    assert judge_score([{"grade": None}], 200, 0.9, seed=0)["mean"] is None


def judged_rows(grades, answers=None):
    return [{"task_id": task_id, "answer": (answers or {}).get(task_id, f"答え{task_id}"), "grade": grade,
             "reason": "理由|あり" if grade else "返答", "status": "graded" if grade else "unparseable"}
            for task_id, grade in enumerate(grades)]


def test_evaluate_with_a_judge_and_no_references(tmp_path):
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"task_id": i, "input": f"問題{i}"} for i in range(3)])
    generations = {stage: write_jsonl(tmp_path / f"{stage}.jsonl", [{"task_id": i, "output": "x"} for i in range(3)])
                   for stage in ("sft", "dpo")}
    judged = {"sft": write_jsonl(tmp_path / "j_sft.jsonl", judged_rows([1, 2, None])),
              "dpo": write_jsonl(tmp_path / "j_dpo.jsonl", judged_rows([4, 5, 3]))}
    reference = write_jsonl(tmp_path / "j_ref.jsonl", [dict(row, reference_grade=grade) for row, grade
                                                       in zip(judged_rows([4, 2, None]), [4, 3, 5])])
    out, table = tmp_path / "eval.json", tmp_path / "eval.md"
    report = evaluate(generations, None, out, table, tasks_path=tasks, judged=judged, judged_reference=reference,
                      judge=JUDGE | {"reference_grades": "gpt4.csv"}, seed=3)
    assert report["references"] is None and report["judge"]["model"] == "judge-model"
    assert report["stages"]["dpo"]["judge"]["mean"] == pytest.approx(4.0)
    assert report["stages"]["sft"]["judge"]["unparseable"] == 1 and "chrf" not in report["stages"]["sft"]
    assert report["per_task"]["dpo"][1] == {"task_id": 1, "answer": "答え1", "grade": 5, "reason": "理由|あり",
                                            "status": "graded"}
    assert report["agreement"]["n"] == 2 and report["agreement"]["exact"] == pytest.approx(0.5)
    assert report["agreement"]["unparseable"] == 1
    assert report["inputs"] == sorted(map(str, [*generations.values(), *judged.values(), reference]))
    text = table.read_text(encoding="utf-8")
    assert text.startswith("Judge: openai judge-model.")
    assert "| stage | judge mean (1–5) | 95% interval | graded | unparseable | 1/2/3/4/5 |" in text
    assert "| dpo | 4.00 |" in text and "| 0/0/1/1/1 |" in text
    assert "Agreement with gpt4.csv on 2 answers: exact 50.0%, within one 100.0%" in text
    assert "| task | input | sft answer | sft grade | sft reason | dpo answer | dpo grade | dpo reason |" in text
    assert "| 2 | 問題2 | 答え2 | unparseable | 返答 | 答え2 | 3 | 理由\\|あり |" in text  # pipes escaped


def test_the_leaderboard_ranks_by_the_judge_when_there_is_one(tmp_path):
    scores = {}
    for name, mean, chrf in (("a", 3.0, 90.0), ("b", 4.5, 10.0), ("c", 3.0, 95.0)):
        scores[name] = tmp_path / f"{name}.json"
        judge = {"mean": mean, "interval": [mean - 0.2, mean + 0.2]}
        scores[name].write_text(json.dumps({"stages": {"dpo": {"exact_match": 0.0, "chrf": chrf, "n": 2,
                                                               "judge": judge}}}))
    overrides = {name: {"dpo.beta": beta} for name, beta in (("a", 0.1), ("b", 0.2), ("c", 0.3))}
    rows = leaderboard(scores, overrides, dict.fromkeys(scores, "dpo"), tmp_path / "b.json", tmp_path / "b.md")
    assert [row["variant"] for row in rows] == ["b", "c", "a"]  # the judge first, chrF breaks the tie
    table = (tmp_path / "b.md").read_text().splitlines()
    assert table[0] == "| rank | dpo.beta | submitted | judge mean | interval | exact match | interval | chrF | interval |"
    assert table[2] == "| 1 | 0.2 | dpo | 4.50 | 4.30–4.70 | 0.0% | – | 10.0 | – |"


def test_the_leaderboard_compares_each_variant_with_the_recipes_own_submission(tmp_path):
    references = tmp_path / "references.jsonl"
    write_jsonl(references, [{"task_id": i, "output": f"答え{i}"} for i in range(30)])

    def evaluated(name, right):
        generations = tmp_path / f"{name}.jsonl"
        write_jsonl(generations, [{"task_id": i, "output": f"答え{i}" if i < right else "違う"} for i in range(30)])
        evaluate({"dpo": generations}, references, tmp_path / f"{name}.eval.json", bootstrap_samples=200)
        return tmp_path / f"{name}.eval.json"

    baseline = evaluated("recipe", 10)
    scores = {"close": evaluated("close", 12), "far": evaluated("far", 25)}
    rows = leaderboard(scores, {"close": {"dpo.beta": 0.2}, "far": {"dpo.beta": 0.3}}, dict.fromkeys(scores, "dpo"),
                       tmp_path / "b.json", tmp_path / "b.md", baseline=baseline, baseline_choice="dpo")
    against = {row["variant"]: row["against_baseline"]["measures"]["exact match"] for row in rows}
    assert against["close"]["verdict"] == "within noise" and against["far"]["verdict"] == "better"
    assert against["far"]["detail"] == {"only_first": 0, "only_second": 15}
    table = (tmp_path / "b.md").read_text().splitlines()
    assert table[0].endswith("| exact match against the recipe (paired) |")
    assert table[2].startswith("| 1 | 0.3 | dpo | 83.3% |") and "| better: +50.0 pts [" in table[2]
    assert "within noise: +6.7 pts [" in table[3]
