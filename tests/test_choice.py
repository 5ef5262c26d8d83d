"""`submission.stage`: a named stage, or `best`, which submits a later stage only when its paired test finds
it better than the stage before it beyond noise."""

import json

import pytest
from scipy import stats

from tunesmith.evaluation.choice import best_stage, choose, submit
from tunesmith.evaluation.evaluate import evaluate
from tunesmith.jobs.atomic import write_jsonl

N = 40
REFERENCES = {i: f"答え{i}" for i in range(N)}


def evaluated(tmp_path, right: dict[str, set[int]], grades: dict[str, dict[int, int]] | None = None) -> dict:
    """An evaluation of stages that get the tasks in `right` exactly right (and, with `grades`, a judge)."""
    tasks, references = tmp_path / "tasks.jsonl", tmp_path / "references.jsonl"
    write_jsonl(tasks, [{"task_id": i, "input": f"問{i}"} for i in range(N)])
    write_jsonl(references, [{"task_id": i, "output": text} for i, text in REFERENCES.items()])
    generations, judged = {}, {}
    for stage, tasks_right in right.items():
        generations[stage] = tmp_path / f"{stage}.jsonl"
        write_jsonl(generations[stage], [{"task_id": i, "output": REFERENCES[i] if i in tasks_right else "違う"}
                                         for i in range(N)])
        if grades:
            judged[stage] = tmp_path / f"{stage}.judged.jsonl"
            write_jsonl(judged[stage], [{"task_id": i, "answer": "", "grade": grade, "reason": "", "status": "ok"}
                                        for i, grade in grades[stage].items()])
    judge = {"backend": "openai", "confidence": 0.95, "bootstrap_samples": 200, "openai": {"model": "m"}}
    evaluate(generations, references, tmp_path / "eval.json", tasks_path=tasks, judged=judged or None,
             judge=judge if grades else None, bootstrap_samples=300)
    return {"scores": tmp_path / "eval.json", "generations": generations, "tasks": tasks}


def test_best_falls_back_when_the_top_stage_is_within_noise_of_the_one_before(tmp_path):
    # dpo tops sft by two tasks (22 against 20 right): noise. sft beats base (0) beyond doubt.
    run = evaluated(tmp_path, {"base": set(), "sft": set(range(20)), "dpo": set(range(22))})
    chosen = choose("best", True, run["scores"])
    assert chosen["stage"] == "sft"
    assert chosen["reason"].startswith("submission.stage is best: dpo scores highest on exact match, but sft is submitted")
    first, second = chosen["tests"]
    assert (first["from"], first["to"], first["verdict"]) == ("sft", "dpo", "within noise")
    assert first["p_value"] == pytest.approx(stats.binomtest(2, 2).pvalue)  # 2 discordant tasks, both dpo's
    assert (second["from"], second["to"], second["verdict"]) == ("base", "sft", "better")
    assert second["p_value"] == pytest.approx(stats.binomtest(20, 20).pvalue)
    assert "dpo is not better than sft: exact match 50.0% → 55.0%" in chosen["steps"][0]
    assert chosen["steps"][1].startswith("sft beats base: exact match 0.0% → 50.0%")


def test_best_takes_the_top_stage_when_it_beats_the_one_before(tmp_path):
    run = evaluated(tmp_path, {"base": set(), "sft": set(range(10)), "dpo": set(range(30))})
    chosen = choose("best", True, run["scores"])
    assert chosen["stage"] == "dpo" and chosen["reason"].endswith("and beats sft beyond noise")
    # Every stage within noise of the one before: the base.
    run = evaluated(tmp_path / "flat", {"base": {0}, "sft": {0, 1}, "dpo": {0, 1, 2}})
    assert choose("best", True, run["scores"])["stage"] == "base"
    # A tie goes to the earliest stage, and the reason says so.
    run = evaluated(tmp_path / "tied", {"base": set(), "sft": set(), "dpo": set()})
    chosen = choose("best", True, run["scores"])
    assert chosen["stage"] == "base" and chosen["reason"] == (
        "submission.stage is best: base scores highest on exact match (tied with sft, dpo: the earliest stage is "
        "taken), and there is no stage before it")


def test_best_ranks_by_the_judge_when_there_is_one(tmp_path):
    # Exact match would pick dpo; the judge grades sft higher on every task.
    grades = {"base": dict.fromkeys(range(N), 1), "sft": dict.fromkeys(range(N), 4), "dpo": dict.fromkeys(range(N), 2)}
    run = evaluated(tmp_path, {"base": set(), "sft": set(range(10)), "dpo": set(range(30))}, grades)
    chosen = best_stage(json.loads(run["scores"].read_text()))
    assert chosen["measure"] == "judge grade" and chosen["stage"] == "sft"
    assert chosen["tests"][0]["test"] == "Wilcoxon signed-rank"


def test_named_stages_stay_and_submit_writes_the_choice(tmp_path):
    assert choose("dpo", False)["stage"] == "sft"
    assert choose("dpo", True) == {"stage": "dpo", "reason": "submission.stage is dpo", "steps": [], "tests": []}
    run = evaluated(tmp_path, {"base": set(), "sft": set(range(20)), "dpo": set(range(22))})
    out, choice = tmp_path / "out" / "submission.jsonl", tmp_path / "out" / "choice.json"
    submit("best", True, run["generations"], run["tasks"], out, choice, scores_path=run["scores"])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["output"] for row in rows[19:21]] == ["答え19", "違う"]  # sft's answers, not dpo's
    written = json.loads(choice.read_text())
    assert written["stage"] == "sft" and written["generations"] == str(run["generations"]["sft"])
    with pytest.raises(ValueError, match="best needs the evaluation"):
        choose("best", True)
