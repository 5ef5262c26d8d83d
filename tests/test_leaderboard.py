"""A sweep's leaderboard against the recipe's seed spread (`repeats`): each variant, one run, is beyond a seed
only outside the prediction interval of one more seed's score (tunesmith.evaluation.leaderboard). The ranking and the
paired column are tested in tests/test_workflow.py and tests/test_evaluate.py."""

import math
import statistics

import pytest
from scipy import stats

from tunesmith.evaluation.evaluate import evaluate
from tunesmith.evaluation.leaderboard import leaderboard
from tunesmith.jobs.atomic import write_jsonl

TASKS = 40


def evaluated(tmp_path, name: str, right: int):
    """An eval.json whose dpo answers get the first `right` of the tasks right."""
    references = tmp_path / "references.jsonl"
    if not references.exists():
        write_jsonl(references, [{"task_id": i, "output": f"答え{i}"} for i in range(TASKS)])
    generations = tmp_path / f"{name}.jsonl"
    write_jsonl(generations, [{"task_id": i, "output": f"答え{i}" if i < right else "違う"} for i in range(TASKS)])
    evaluate({"dpo": generations}, references, tmp_path / f"{name}.eval.json", bootstrap_samples=200)
    return tmp_path / f"{name}.eval.json"


def test_each_variant_is_checked_against_the_recipes_seed_spread(tmp_path):
    seeds = {42: evaluated(tmp_path, "seed42", 16), 43: evaluated(tmp_path, "seed43", 20),
             44: evaluated(tmp_path, "seed44", 18)}  # 40%, 50%, 45%
    scores = {"close": evaluated(tmp_path, "close", 24), "far": evaluated(tmp_path, "far", 32)}  # 60%, 80%
    rows = leaderboard(scores, {"close": {"dpo.beta": 0.2}, "far": {"dpo.beta": 0.3}}, dict.fromkeys(scores, "dpo"),
                       tmp_path / "b.json", tmp_path / "b.md", baseline=seeds[42], baseline_choice="dpo",
                       baseline_seeds=seeds)
    found = {row["variant"]: row for row in rows}
    # Against the recipe's own run alone (40%), McNemar calls both better; against its seeds, only "far" is.
    assert found["close"]["against_baseline"]["measures"]["exact match"]["verdict"] == "better"
    shares = [0.40, 0.50, 0.45]
    low, high = stats.t.interval(0.95, df=2, loc=statistics.mean(shares),
                                 scale=statistics.stdev(shares) * math.sqrt(1 + 1 / 3))
    close, far = (found[name]["against_seeds"]["exact_match"] for name in ("close", "far"))
    assert close["prediction"] == [pytest.approx(low), pytest.approx(high)]
    assert not close["beyond_a_seed"] and far["beyond_a_seed"]
    assert far["difference"] == pytest.approx(0.80 - 0.45)
    table = (tmp_path / "b.md").read_text()
    lines = table.splitlines()
    assert lines[0].endswith("| exact match against the recipe (paired) | exact match against the recipe's 3 seeds |")
    assert lines[2].startswith("| 1 | 0.3 | dpo | 80.0% |")
    assert lines[2].endswith(f"| beyond a seed: 80.0% above {low:.1%} to {high:.1%} |")
    assert lines[3].endswith(f"| within a seed: 60.0% in {low:.1%} to {high:.1%} |")
    assert ("The recipe over 3 seeds (`repeats`: 42, 43, 44), its submitted stage dpo: exact match mean 45.0%, "
            "sd 5.0 pts, range 40.0% to 50.0%; chrF mean") in table


def test_without_repeats_the_leaderboard_says_how_to_measure_the_seed_spread(tmp_path):
    baseline = evaluated(tmp_path, "recipe", 16)
    rows = leaderboard({"a": evaluated(tmp_path, "a", 20)}, {"a": {"dpo.beta": 0.2}}, {"a": "dpo"},
                       tmp_path / "b.json", tmp_path / "b.md", baseline=baseline, baseline_choice="dpo",
                       baseline_seeds={42: baseline})  # one seed: no spread
    assert rows[0]["against_seeds"] is None
    table = (tmp_path / "b.md").read_text()
    assert "seeds |" not in table.splitlines()[0] and "set `repeats` (3 or more)" in table
