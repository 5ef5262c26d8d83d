"""`tunesmith compare`: the data diff against the quarantine files, the paired scores against scipy, and
(e2e) two quick-recipe runs that differ in one curation key."""

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import README_COMMAND, REPO, copied_run, snakemake
from tunesmith.evaluation.compare import changed_answers, compare, data_diff, score_diff
from tunesmith.evaluation.evaluate import evaluate
from tunesmith.jobs.atomic import write_jsonl


def curated(folder: Path, kept: list[tuple], quarantined: list[tuple]) -> tuple[Path, Path]:
    """Kept and quarantine Parquet files shaped as curation writes them (a kept row may repeat: weight)."""
    folder.mkdir(parents=True)
    pd.DataFrame([{"id": f"{source}:{line}", "source": source, "file": file, "line": line, "instruction": "q",
                   "response": "a", "split": "train"} for source, file, line in kept]).to_parquet(folder / "sft.parquet")
    pd.DataFrame([{"source": source, "file": file, "line": line, "reason": reason, "detail": f"why {line}",
                   "raw": f'{{"line": {line}}}'} for source, file, line, reason in quarantined]).to_parquet(
        folder / "sft.quarantine.parquet")
    return folder / "sft.parquet", folder / "sft.quarantine.parquet"


def test_the_data_diff_names_each_row_one_side_kept_with_the_other_sides_reason(tmp_path):
    first = curated(tmp_path / "a", kept=[("s", "f.jsonl", 1), ("s", "f.jsonl", 2), ("s", "f.jsonl", 2),
                                          ("t", "g.jsonl", 5), ("t", "g.jsonl", 6)],
                    quarantined=[("s", "f.jsonl", 3, "uppercase")])
    second = curated(tmp_path / "b", kept=[("s", "f.jsonl", 1), ("s", "f.jsonl", 3)],
                     quarantined=[("s", "f.jsonl", 2, "near_duplicate"), ("t", "g.jsonl", 5, "repetition"),
                                  ("t", "g.jsonl", 6, "near_duplicate")])
    found = data_diff(first, second)
    assert found["kept"] == {"a": 4, "b": 2}  # distinct rows: a repeated (weighted) row counts once
    only_a = found["only_a"]
    assert [(row["source"], row["file"], row["line"], row["reason"]) for row in only_a["all"]] == [
        ("s", "f.jsonl", 2, "near_duplicate"), ("t", "g.jsonl", 5, "repetition"), ("t", "g.jsonl", 6, "near_duplicate")]
    assert only_a["by_reason"] == {"near_duplicate": 2, "repetition": 1}
    assert only_a["by_source"] == {"t": 2, "s": 1}
    assert only_a["examples"][0]["detail"] == "why 2" and only_a["examples"][0]["raw"] == '{"line": 2}'
    assert found["only_b"]["by_reason"] == {"uppercase": 1} and found["only_b"]["rows"] == 1


REFERENCES = {i: f"答え{i}" for i in range(40)}


def stage_files(tmp_path: Path, name: str, right: set[int], grades: dict[int, int]) -> Path:
    generations, judged = tmp_path / name / "sft.jsonl", tmp_path / name / "judged.jsonl"
    write_jsonl(generations, [{"task_id": i, "output": REFERENCES[i] if i in right else f"違う{i % 3}"}
                              for i in REFERENCES])
    write_jsonl(judged, [{"task_id": i, "answer": "", "grade": grade, "reason": "", "status": "ok"}
                         for i, grade in grades.items()])
    references = tmp_path / "references.jsonl"
    if not references.exists():
        write_jsonl(references, [{"task_id": i, "output": text} for i, text in REFERENCES.items()])
    judge = {"backend": "openai", "confidence": 0.95, "bootstrap_samples": 200, "openai": {"model": "m"}}
    evaluate({"sft": generations}, references, tmp_path / name / "eval.json", judged={"sft": judged}, judge=judge,
             bootstrap_samples=300)
    return tmp_path / name / "eval.json"


def test_paired_scores_match_scipy_on_the_same_tasks(tmp_path):
    # A gets tasks 0-19 right, B 5-34: 15 only B, 5 only A. Grades: B one higher on 25 tasks, lower on 5.
    first = stage_files(tmp_path, "a", set(range(20)), {i: 3 for i in range(40)})
    second = stage_files(tmp_path, "b", set(range(5, 35)),
                         {i: 4 if i < 25 else 2 if i < 30 else 3 for i in range(40)})
    reports = [json.loads(path.read_text()) for path in (first, second)]
    found = score_diff(*reports, 0.95, 500, 0)["sft"]
    exact = found["overall"]["exact match"]
    assert (exact["a"], exact["b"], exact["difference"]) == (0.5, 0.75, 0.25)
    assert exact["p_value"] == pytest.approx(stats.binomtest(5, 20, 0.5).pvalue)
    assert exact["detail"] == {"only_first": 5, "only_second": 15}
    assert exact["verdict"] == "better" and exact["interval"][0] > 0
    grades = found["overall"]["judge grade"]
    expected = stats.wilcoxon([1] * 25 + [-1] * 5).pvalue
    assert grades["p_value"] == pytest.approx(expected) and grades["verdict"] == "better"
    # chrF's test: Wilcoxon on each task's own chrF, which the evaluation wrote per task.
    per_task = [{row["task_id"]: row["chrf"] for row in report["per_task"]["sft"]} for report in reports]
    differences = [per_task[1][i] - per_task[0][i] for i in REFERENCES if per_task[1][i] != per_task[0][i]]
    assert found["overall"]["chrF"]["p_value"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    changed = changed_answers({"outputs": {0: "答え0", 1: "x", 2: "y"}}, {"outputs": {0: "z", 1: "答え1", 2: "w"}},
                              REFERENCES)
    assert [(entry["task_id"], entry["change"]) for entry in changed] == [(0, "regression"), (1, "improvement"),
                                                                         (2, "changed")]


@pytest.mark.e2e
def test_two_recipes_one_curation_key_apart(quick_run, tmp_path):
    """The quick default (built: quick_run) and the same with curate.near_dedup.threshold 0.8 built next to it:
    compare's data diff is the quarantine files' difference, its scores are paired, and switching back rebuilds
    nothing."""
    from tunesmith.config import plan
    from tunesmith.config.recipe import load_recipe

    work, first = copied_run(quick_run[0], tmp_path / "work"), quick_run[1]
    recipe = yaml.safe_load(first.read_text())
    recipe["curate"]["near_dedup"]["threshold"] = 0.8
    second = tmp_path / "b.yaml"
    second.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False))
    result = snakemake("--directory", work, "--config", f"recipe={second}", *README_COMMAND, timeout=3600)
    assert result.returncode == 0, result.stderr[-5000:]
    keyed = sorted((work / "results" / "evaluated").glob("*/eval.json"))
    assert len(keyed) == 2  # both recipes' scores are kept
    text, facts, target = compare(first, second, root=work)
    assert target.read_text() == text and "## Data: rows kept by one side only" in text

    # The data diff against the quarantine files, read independently.
    steps = {side: plan.steps(load_recipe(path, check_files=False)) for side, path in (("a", first), ("b", second))}
    folders = {side: work / plan.folder_of(found["curate_sft"]) for side, found in steps.items()}
    kept = {side: set(map(tuple, pd.read_parquet(folder / "sft.parquet")[["source", "file", "line"]].values.tolist()))
            for side, folder in folders.items()}
    quarantine = pd.read_parquet(folders["b"] / "sft.quarantine.parquet")
    reasons = {(row.source, row.file, row.line): row.reason for row in quarantine.itertuples()}
    only_a = kept["a"] - kept["b"]
    assert only_a, "a lower near-duplicate threshold quarantines more rows"
    diff = facts["data"]["sft"]
    assert {(row["source"], row["file"], row["line"]) for row in diff["only_a"]["all"]} == only_a
    assert diff["only_a"]["by_reason"] == dict(Counter(reasons[row] for row in only_a))
    assert all(row["reason"] == reasons[(row["source"], row["file"], row["line"])] for row in diff["only_a"]["all"])
    assert diff["only_b"]["rows"] == len(kept["b"] - kept["a"])

    # Paired exact match of each stage, against scipy on the evaluations' own per-task results.
    reports = {side: json.loads((work / plan.folder_of(found["evaluate"]) / "eval.json").read_text())
               for side, found in steps.items()}
    assert set(facts["scores"]) == {"base", "sft", "dpo"}
    for stage, found in facts["scores"].items():
        result = found["overall"]["exact match"]
        exact = [{row["task_id"]: row["exact"] for row in reports[side]["per_task"][stage]} for side in ("a", "b")]
        only_first = sum(exact[0][i] and not exact[1][i] for i in exact[0])
        only_second = sum(exact[1][i] and not exact[0][i] for i in exact[0])
        discordant = only_first + only_second
        expected = 1.0 if discordant == 0 else stats.binomtest(only_second, discordant).pvalue
        assert result["p_value"] == pytest.approx(expected), stage
        assert result["difference"] == pytest.approx((only_second - only_first) / len(exact[0]))

    # Switching back to A rebuilds nothing: only the fixed-path copies (and pages made from them) run.
    dry = snakemake("-n", "--directory", work, "--config", f"recipe={first}", "--cores", "1")
    assert dry.returncode == 0, dry.stderr
    rules = {line.split()[1].rstrip(":") for line in dry.stdout.splitlines() if line.startswith(("rule ", "localrule "))}
    assert rules - {"all"} <= {"current_submission", "current_evaluation", "summarise_run", "trace_lineage"}, rules


def test_sides_are_named_by_recipe_file_sweep_variant_or_result_key(tmp_path):
    from tunesmith.config import plan
    from tunesmith.config.recipe import load_recipe, variants
    from tunesmith.evaluation.compare import CompareError, resolve

    sweep = REPO / "recipes/sweep.yaml"
    name = next(iter(variants(load_recipe(sweep, check_files=False))))
    side = resolve(name, sweep, tmp_path)
    steps = plan.steps(variants(load_recipe(sweep, check_files=False))[name])
    assert side.evaluation == tmp_path / plan.folder_of(steps["evaluate"]) / "eval.json"
    assert side.curated["sft"][1] == tmp_path / plan.folder_of(steps["curate_sft"]) / "sft.quarantine.parquet"
    assert side.adapters["dpo"] == tmp_path / plan.folder_of(steps["dpo"]) / "adapter"
    recipe = resolve(str(REPO / "recipes/default.yaml"), None, tmp_path)
    assert recipe.evaluation.parent.name == plan.steps(load_recipe(REPO / "recipes/default.yaml"))["evaluate"].key
    with pytest.raises(CompareError, match=r"dpo.beta=9: not a recipe file, a result key or a sweep variant .*"
                                           r"its variants: dpo.beta=0.1,generate.repetition_penalty=1.0"):
        resolve("dpo.beta=9", sweep, tmp_path)
    with pytest.raises(CompareError, match="needs --recipe"):
        resolve("dpo.beta=9", None, tmp_path)
    with pytest.raises(CompareError, match="0123456789ab: no results/evaluated/0123456789ab/eval.json"):
        resolve("0123456789ab", None, tmp_path)


def test_a_measure_with_no_item_in_common_is_not_called_within_noise():
    """Two runs that hold out no preference pair in common (the default against on-policy pairs): the row says
    it compared nothing, never "0.0% vs 0.0%, within noise"."""
    from tunesmith.evaluation.compare import _measure_row

    empty = {"n": 0, "a": 0.0, "b": 0.0, "difference": 0.0, "interval": None, "test": "McNemar exact", "p_value": 1.0,
             "verdict": "within noise"}
    row = _measure_row("dpo", "preference accuracy", empty)
    assert "within noise" not in " ".join(map(str, row)) and "0.0%" not in row
    assert row[-1] == "not compared: no item in common"
    shared = _measure_row("dpo", "exact match", {**empty, "n": 100, "a": 0.5, "b": 0.6, "difference": 0.1,
                                                 "interval": [0.02, 0.18], "p_value": 0.01, "verdict": "better"})
    assert shared[3:5] == ["50.0%", "60.0%"] and "better" in shared[-1]
