"""Scoring each stage's answers: exact match and chrF against reference outputs, and the judge's grades.

Exact match and chrF compare normalised text, so an answer that differs from the reference only in
full-width versus half-width forms or spacing is not penalised; chrF works on characters, which
suits Japanese (no word segmentation). Both need references; the judge does not. When a judge is
configured its mean grade (with a bootstrap interval over tasks) leads the summary and the sweep's
leaderboard; unparseable judge replies are counted beside it, never averaged in as zeros.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sacrebleu.metrics import CHRF

from tunesmith.data.normalize import match_key, normalize_text
from tunesmith.data.tasks import load_references, read_references, read_task_families, read_tasks
from tunesmith.evaluation import significance
from tunesmith.evaluation.paired import comparison, compare_answers, read_preference_pairs, score_intervals
from tunesmith.generation.submission import read_generations
from tunesmith.jobs.atomic import atomic_path, read_jsonl, write_json
from tunesmith.judge.judge_stats import agreement, bootstrap_interval, distribution

SHOWN_CHARACTERS = 80  # per cell of the per-task table; the JSON keeps every character


def score(outputs: dict[int, str], references: dict[int, str]) -> dict:
    """Exact match (share, 0–1) and corpus chrF (0–100) over the tasks that have a reference.

    A task with no output counts as an empty answer, so missing generations lower the score rather
    than silently shrinking the denominator. Outputs for tasks without a reference are ignored.
    """
    if not references:
        raise ValueError("no reference outputs to score against")
    chrf = CHRF()
    hypotheses, targets, per_task = [], [], []
    for task_id in sorted(references):
        output = normalize_text(outputs.get(task_id, ""))
        reference = normalize_text(references[task_id])
        hypotheses.append(output)
        targets.append(reference)
        per_task.append({
            "task_id": task_id,
            "exact": match_key(output) == match_key(reference),
            "chrf": chrf.sentence_score(output, [reference]).score,
        })
    return {
        "exact_match": sum(task["exact"] for task in per_task) / len(per_task),
        "chrf": chrf.corpus_score(hypotheses, [targets]).score,
        "n": len(per_task),
        "per_task": per_task,
    }


def judge_score(rows: list[dict], samples: int, confidence: float, seed: int) -> dict:
    """Mean grade over the graded answers with its bootstrap interval, the distribution, and the
    count of unparseable replies (left out of the mean and shown beside it)."""
    grades = [row["grade"] for row in rows if row["grade"] is not None]
    return {
        "mean": sum(grades) / len(grades) if grades else None,
        "interval": bootstrap_interval(grades, samples, confidence, seed),
        "confidence": confidence,
        "graded": len(grades),
        "unparseable": len(rows) - len(grades),
        "distribution": distribution(grades),
    }


def _cell(text) -> str:
    text = "" if text is None else " ".join(str(text).split())
    text = text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + "…"
    return text.replace("|", "\\|")


def _number(value, form: str) -> str:
    return "–" if value is None else format(value, form)


def markdown(report: dict) -> str:
    """The scores table, the grade distribution and agreement, then every task's answers beside their grades."""
    stages = report["stages"]
    judged = report["judge"] is not None
    with_references = report["references"] is not None
    header, rule = ["stage"], [":--"]
    if judged:
        header += ["judge mean (1–5)", f"{report['judge']['confidence']:.0%} interval", "graded", "unparseable",
                   "1/2/3/4/5"]
        rule += ["--:"] * 5
    if with_references:
        header += ["exact match", f"{report.get('confidence', 0.95):.0%} interval", "chrF",
                   f"{report.get('confidence', 0.95):.0%} interval", "tasks with a reference"]
        rule += ["--:"] * 5
    lines = []
    if judged:
        lines.append(f"Judge: {report['judge']['backend']} {report['judge']['model']}.")
    if with_references:
        covered = report["references"]
        lines.append(f"References: {covered['path']}, covering {covered['covered']} of {covered['tasks']} tasks"
                     + (f" (none for task {', '.join(map(str, covered['missing']))})." if covered["missing"] else "."))
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    for stage, result in stages.items():
        cells = [stage]
        if judged:
            grades = result["judge"]
            interval = grades["interval"]
            cells += [_number(grades["mean"], ".2f"),
                      "–" if interval is None else f"{interval[0]:.2f}–{interval[1]:.2f}",
                      str(grades["graded"]), str(grades["unparseable"]),
                      "/".join(str(grades["distribution"][str(grade)]) for grade in range(1, 6))]
        if with_references:
            cells += [f"{result['exact_match']:.1%}", interval_text(result.get("exact_match_interval"), percent=True),
                      f"{result['chrf']:.1f}", interval_text(result.get("chrf_interval")), str(result["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("agreement"):
        found = report["agreement"]
        lines += ["", f"Agreement with {found['path']} on {found['n']} answers: exact {_number(found['exact'], '.1%')}, "
                  f"within one {_number(found['within_one'], '.1%')}, Spearman {_number(found['spearman'], '.3f')}, "
                  f"quadratic-weighted kappa {_number(found['quadratic_weighted_kappa'], '.3f')}; "
                  f"unparseable {found['unparseable']}."]
    if judged:
        per_task = report["per_task"]
        header = ["task", "input"] + [f"{stage} {part}" for stage in stages for part in ("answer", "grade", "reason")]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join(["--:", ":--"] + [":--", "--:", ":--"] * len(stages)) + "|"]
        rows = {stage: {row["task_id"]: row for row in per_task[stage]} for stage in stages}
        for task_id, text in report["inputs_by_task"].items():
            cells = [str(task_id), _cell(text)]
            for stage in stages:
                row = rows[stage].get(int(task_id), {})
                grade = row.get("grade")
                cells += [_cell(row.get("answer")), "unparseable" if row.get("status") == "unparseable" else str(grade),
                          _cell(row.get("reason"))]
            lines.append("| " + " | ".join(cells) + " |")
    return ("\n".join(lines).lstrip("\n") + "\n" + _comparison_table(report) + _family_table(report)
            + _preference_table(report))


def interval_text(interval, percent: bool = False) -> str:
    if not interval:
        return "–"
    return f"{interval[0]:.1%}–{interval[1]:.1%}" if percent else f"{interval[0]:.1f}–{interval[1]:.1f}"


def _comparison_table(report: dict) -> str:
    """Each stage against the stage before it, measure by measure, with the paired test's verdict."""
    names = list(report["stages"])
    rows = [(first, second, name, result) for first, second in zip(names, names[1:])
            for name, result in comparison(report, first, second).items()]
    if not rows:
        return ""
    lines = ["", f"Each stage against the one before it (paired over the same tasks; confidence "
             f"{report.get('confidence', 0.95):.0%}):", "",
             "| stages | measure | before | after | difference | interval | test | p | verdict |",
             "|:--|:--|--:|--:|--:|--:|:--|--:|:--|"]
    for first, second, name, result in rows:
        percent = name in ("exact match", "preference accuracy")
        value = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.2f}")
        scale = 100 if percent else 1
        interval = result["interval"]
        lines.append(f"| {first} → {second} | {name} | {value(result['a'])} | {value(result['b'])} | "
                     f"{result['difference'] * scale:+.1f}{' pts' if percent else ''} | "
                     + ("–" if interval is None else f"{interval[0] * scale:+.1f} to {interval[1] * scale:+.1f}")
                     + f" | {result['test']} | {result['p_value']:.3g} | {result['verdict']} |")
    return "\n".join(lines) + "\n"


def evaluate(
    generations: dict[str, str | os.PathLike],
    references_path: str | os.PathLike | None,
    out_path: str | os.PathLike,
    table_path: str | os.PathLike | None = None,
    tasks_path: str | os.PathLike | None = None,
    judged: dict[str, str | os.PathLike] | None = None,
    judged_reference: str | os.PathLike | None = None,
    judge: dict | None = None,
    seed: int = 0,
    preferences: dict[str, str | os.PathLike] | None = None,
    confidence: float = 0.95,
    bootstrap_samples: int = 1000,
) -> dict:
    """Score each stage (stage name → generations path) and write the results atomically.

    With references: exact match and chrF; with `judged` (stage → judge_answers output) and the
    recipe's `judge` section: the judge's scores, and with `judged_reference`, its agreement with
    the reference grades. `out_path` gets `{"stages", "per_task", "references", "judge", "agreement",
    "inputs"}` (inputs: the files scored, which tell whose scores these are), `table_path` Markdown.
    With a `tasks_path` whose tasks carry a `family`, each stage also gets scores per family;
    `preferences` (stage → the file `tunesmith.evaluation.preference_accuracy.score_preferences` wrote) adds each stage's
    preference accuracy on the held-out pairs (report key "preference"). Every score gets an interval at
    `confidence`, and every two stages a paired comparison (report key "comparisons", tunesmith.evaluation.significance).
    """
    if not generations:
        raise ValueError("no stages to evaluate")
    judged = judged or {}
    tasks = read_tasks(tasks_path) if tasks_path else None
    references = None
    if references_path and tasks is None:  # ids only: nothing to match input text against
        references = read_references(references_path)
    elif references_path:
        loaded = load_references(references_path, tasks)
        references = {task_id: reference.output for task_id, reference in loaded.by_task.items() if reference.output}
    stages, per_task, answers = {}, {}, {}
    families = read_task_families(tasks_path) if tasks_path else {}
    for stage, path in generations.items():
        result, rows = {}, {}
        answers[stage] = {"outputs": read_generations(path)}
        if references is not None:
            outputs = answers[stage]["outputs"]
            scored = score(outputs, references)
            result.update(exact_match=scored["exact_match"], chrf=scored["chrf"], n=scored["n"])
            result.update(score_intervals(outputs, references, confidence, bootstrap_samples, seed))
            rows = {row["task_id"]: row for row in scored["per_task"]}
            if families:
                result["families"] = family_scores(outputs, references, families)
                for task_id, row in rows.items():
                    row["family"] = families.get(task_id)
        if stage in judged:
            judge_rows = read_jsonl(judged[stage])
            result["judge"] = judge_score(judge_rows, judge["bootstrap_samples"], judge["confidence"], seed)
            for row in judge_rows:
                rows[row["task_id"]] = {**rows.get(row["task_id"], {"task_id": row["task_id"]}),
                                        **{key: row[key] for key in ("answer", "grade", "reason", "status")}}
            answers[stage]["grades"] = {row["task_id"]: row["grade"] for row in judge_rows if row["grade"] is not None}
        stages[stage] = result
        per_task[stage] = [rows[task_id] for task_id in sorted(rows)]
    pairs = {stage: read_preference_pairs(path) for stage, path in (preferences or {}).items()}
    for stage, found in pairs.items():
        answers.setdefault(stage, {})["preference"] = found
    report = {
        "stages": stages,
        "per_task": per_task,
        "references": None if references is None else {
            "path": os.fspath(references_path), "tasks": len(tasks) if tasks else len(references),
            "covered": len(references),
            "missing": sorted(task.task_id for task in tasks or [] if task.task_id not in references)},
        "judge": None if not judged else {
            "backend": judge["backend"], "confidence": judge["confidence"],
            "model": judge["openai"]["model"] if judge["backend"] == "openai" else judge["local"]["path"]},
        "agreement": None,
        "inputs_by_task": {task.task_id: task.prompt_text for task in tasks} if tasks else {},
        "inputs": sorted(map(os.fspath, [*generations.values(), *judged.values(),
                                         *([judged_reference] if judged_reference else []),
                                         *(preferences or {}).values()])),
    }
    if judged_reference:
        rows = read_jsonl(judged_reference)
        found = agreement({row["task_id"]: row["grade"] for row in rows if row["grade"] is not None},
                          {row["task_id"]: row["reference_grade"] for row in rows})
        report["agreement"] = {**found, "path": judge["reference_grades"],
                               "unparseable": sum(row["grade"] is None for row in rows)}
    if preferences:
        report["preference"] = read_preference_scores(preferences)
        for stage, found in report["preference"].items():
            found["interval"] = significance.share_interval(round(found["accuracy"] * found["pairs"]), found["pairs"],
                                                            confidence)
    report["confidence"], report["bootstrap_samples"] = confidence, bootstrap_samples
    # Where each stage's answers, grades and pairs are: what `tunesmith compare` and the leaderboard pair up.
    report["files"] = {"generations": {stage: os.fspath(path) for stage, path in generations.items()},
                       "judged": {stage: os.fspath(path) for stage, path in judged.items()},
                       "preferences": {stage: os.fspath(path) for stage, path in (preferences or {}).items()},
                       "tasks": None if tasks_path is None else os.fspath(tasks_path),
                       "references": None if references_path is None else os.fspath(references_path)}
    names = list(answers)
    report["comparisons"] = [
        {"a": first, "b": second, "measures": compare_answers(answers[first], answers[second], references,
                                                              confidence, bootstrap_samples, seed)}
        for index, first in enumerate(names) for second in names[index + 1:]]
    write_json(out_path, report)
    if table_path is not None:
        with atomic_path(table_path) as tmp:
            Path(tmp).write_text(markdown(report), encoding="utf-8")
    return report


def family_scores(outputs: dict[int, str], references: dict[int, str], families: dict[int, str]) -> dict:
    """Exact match, chrF and task count per family (`families`: task id → family), families sorted;
    tasks without a family are scored only overall."""
    names = sorted({families[task_id] for task_id in references if task_id in families})
    found = {}
    for name in names:
        result = score(outputs, {task_id: reference for task_id, reference in references.items()
                                 if families.get(task_id) == name})
        found[name] = {"exact_match": result["exact_match"], "chrf": result["chrf"], "n": result["n"]}
    return found


def _family_table(report: dict) -> str:
    stages = report["stages"]
    names = list(next(iter(stages.values())).get("families", {}))
    if not names:
        return ""
    lines = ["", "Exact match per task family:", "",
             "| family | tasks | " + " | ".join(stages) + " |", "|:--|--:|" + "--:|" * len(stages)]
    for name in names:
        first = next(iter(stages.values()))["families"][name]
        lines.append(f"| {name} | {first['n']} | "
                     + " | ".join(f"{result['families'][name]['exact_match']:.0%}" for result in stages.values())
                     + " |")
    return "\n".join(lines) + "\n"


def read_preference_scores(preferences: dict[str, str | os.PathLike]) -> dict[str, dict]:
    """Each stage's preference accuracy, mean margin and pair count (not the per-pair detail)."""
    found = {}
    for stage, path in preferences.items():
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        found[stage] = {key: result[key] for key in ("pairs", "accuracy", "mean_margin")}
    return found


def _preference_table(report: dict) -> str:
    if "preference" not in report:
        return ""
    lines = ["", "Preference accuracy (chosen answer more likely than rejected, held-out pairs):", "",
             "| stage | pairs | accuracy | interval | mean log-prob margin |", "|:--|--:|--:|--:|--:|"]
    lines += [f"| {stage} | {result['pairs']} | {result['accuracy']:.1%} | "
              f"{interval_text(result.get('interval'), percent=True)} | {result['mean_margin']:.2f} |"
              for stage, result in report["preference"].items()]
    return "\n".join(lines) + "\n"
