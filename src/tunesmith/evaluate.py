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

from tunesmith.atomic import atomic_path, read_jsonl, write_json
from tunesmith import significance
from tunesmith.judge_stats import agreement, bootstrap_interval, distribution
from tunesmith.normalize import match_key, normalize_text
from tunesmith.submission import read_generations
from tunesmith.tasks import load_references, read_references, read_task_families, read_tasks

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
    `preferences` (stage → the file `tunesmith.preference_accuracy.score_preferences` wrote) adds each stage's
    preference accuracy on the held-out pairs (report key "preference"). Every score gets an interval at
    `confidence`, and every two stages a paired comparison (report key "comparisons", tunesmith.significance).
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


def score_intervals(outputs: dict[int, str], references: dict[int, str], confidence: float, samples: int,
                    seed: int) -> dict:
    """Exact match's Wilson interval and corpus chrF's bootstrap interval over the tasks."""
    ids = sorted(references)
    texts = [normalize_text(outputs.get(task_id, "")) for task_id in ids]
    targets = [normalize_text(references[task_id]) for task_id in ids]
    exact = sum(match_key(text) == match_key(target) for text, target in zip(texts, targets))
    return {"exact_match_interval": significance.share_interval(exact, len(ids), confidence),
            "chrf_interval": significance.chrf_interval(texts, targets, confidence, samples, seed)}


def read_preference_pairs(path: str | os.PathLike) -> dict[str, bool]:
    """Each held-out pair's outcome (chosen answer the more likely), by `source:line`."""
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    return {f"{pair['source']}:{pair['line']}": bool(pair["prefers_chosen"]) for pair in result.get("per_pair", [])}


def compare_answers(first: dict, second: dict, references: dict[int, str] | None, confidence: float, samples: int,
                    seed: int) -> dict[str, dict]:
    """Two sets of answers to the same tasks, measure by measure, each with its paired test
    (tunesmith.significance): exact match and chrF against `references`, judge grades, preference accuracy.
    `first`/`second`: {"outputs": {task: answer}, "grades": {task: grade}, "preference": {pair: bool}} (any
    part may be missing); only the tasks (pairs) both sides have are compared."""
    found = {}
    if references and first.get("outputs") is not None and second.get("outputs") is not None:
        ids = sorted(references)
        targets = [normalize_text(references[task_id]) for task_id in ids]
        sides = [[normalize_text(side["outputs"].get(task_id, "")) for task_id in ids] for side in (first, second)]
        exact = [[match_key(text) == match_key(target) for text, target in zip(side, targets)] for side in sides]
        found["exact match"] = significance.compare_binary(*exact, confidence, samples, seed)
        found["chrF"] = significance.compare_chrf(*sides, targets, confidence, samples, seed)
    if first.get("grades") and second.get("grades"):
        shared = sorted(set(first["grades"]) & set(second["grades"]))
        found["judge grade"] = significance.compare_grades([first["grades"][task] for task in shared],
                                                           [second["grades"][task] for task in shared],
                                                           confidence, samples, seed)
    if first.get("preference") and second.get("preference"):
        shared = sorted(set(first["preference"]) & set(second["preference"]))
        found["preference accuracy"] = significance.compare_binary(
            [first["preference"][pair] for pair in shared], [second["preference"][pair] for pair in shared],
            confidence, samples, seed, measure="preference accuracy")
    return found


def report_references(report: dict) -> dict[int, str] | None:
    """The reference answers an evaluation report scored against, read again from its files."""
    files = report.get("files") or {}
    if not files.get("references"):
        return None
    if not files.get("tasks"):
        return read_references(files["references"])
    loaded = load_references(files["references"], read_tasks(files["tasks"]))
    return {task_id: reference.output for task_id, reference in loaded.by_task.items() if reference.output}


def report_answers(report: dict, stage: str) -> dict:
    """A stage's answers, grades and preference outcomes, from an evaluation report's files (compare_answers)."""
    files = report.get("files") or {}
    found = {}
    if stage in files.get("generations", {}):
        found["outputs"] = read_generations(files["generations"][stage])
    if stage in files.get("judged", {}):
        found["grades"] = {row["task_id"]: row["grade"] for row in read_jsonl(files["judged"][stage])
                           if row["grade"] is not None}
    if stage in files.get("preferences", {}):
        found["preference"] = read_preference_pairs(files["preferences"][stage])
    return found


def comparison(report: dict, first: str, second: str) -> dict[str, dict]:
    """The paired comparison of two stages in an evaluation report, oriented first → second."""
    for entry in report.get("comparisons", []):
        if (entry["a"], entry["b"]) == (first, second):
            return entry["measures"]
        if (entry["a"], entry["b"]) == (second, first):
            return {name: flipped(result) for name, result in entry["measures"].items()}
    return {}


def flipped(result: dict) -> dict:
    """A paired result seen from the other side (B → A)."""
    verdicts = {significance.BETTER: significance.WORSE, significance.WORSE: significance.BETTER}
    interval = result["interval"]
    return {**result, "a": result["b"], "b": result["a"], "difference": -result["difference"],
            "interval": None if interval is None else [-interval[1], -interval[0]],
            "verdict": verdicts.get(result["verdict"], result["verdict"]),
            "detail": {_FLIPPED.get(key, key): value for key, value in result.get("detail", {}).items()}}


_FLIPPED = {"only_first": "only_second", "only_second": "only_first", "up": "down", "down": "up"}


def _ranking_value(stage: dict) -> tuple:
    judge = stage.get("judge")
    if judge is not None:
        return (judge["mean"] if judge["mean"] is not None else float("-inf"), stage.get("chrf", 0.0))
    return (stage["chrf"], stage["exact_match"])


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


def leaderboard(
    scores: dict[str, str | os.PathLike],
    overrides: dict[str, dict],
    choices: dict[str, str | os.PathLike],
    out_path: str | os.PathLike,
    table_path: str | os.PathLike,
    baseline: str | os.PathLike | None = None,
    baseline_choice: str | os.PathLike | None = None,
) -> list[dict]:
    """Rank sweep variants by the judge's mean grade of the stage each one submits when a judge graded
    them (chrF breaks ties), else by chrF, then exact match; each variant is also compared, paired over the
    same tasks, with the recipe's own submitted stage (`baseline`: its eval.json, `baseline_choice` the
    submission's choice of stage), with a verdict at the evaluation's confidence.

    `scores` maps variant name → its evaluation file; `overrides` the recipe keys it changes;
    `choices` the choice file of its submission (the stage it submits). Writes JSON and a Markdown table.
    """
    base_report = json.loads(Path(baseline).read_text(encoding="utf-8")) if baseline else None
    base_stage = _chosen(baseline_choice) if baseline_choice else None
    references = report_references(base_report) if base_report else None
    rows = []
    for name, path in scores.items():
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        stages = report["stages"]
        stage = _chosen(choices[name])
        judge = stages[stage].get("judge")
        against = None
        if base_report is not None and base_stage in base_report["stages"]:
            found = compare_answers(report_answers(base_report, base_stage), report_answers(report, stage),
                                    references, report.get("confidence", 0.95),
                                    report.get("bootstrap_samples", 1000), 0)
            against = {"stage": base_stage, "measures": found}
        rows.append({"variant": name, "overrides": overrides[name], "stage": stage,
                     "judge_mean": judge["mean"] if judge else None,
                     "judge_interval": judge["interval"] if judge else None,
                     "exact_match": stages[stage].get("exact_match"), "chrf": stages[stage].get("chrf"),
                     "exact_match_interval": stages[stage].get("exact_match_interval"),
                     "chrf_interval": stages[stage].get("chrf_interval"),
                     "against_baseline": against, "stages": stages})
    by_judge = all(row["stages"][row["stage"]].get("judge") for row in rows)
    rows.sort(key=lambda row: (tuple(-value for value in _ranking_value(row["stages"][row["stage"]])), row["variant"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    write_json(out_path, rows)
    keys = sorted({key for row in rows for key in row["overrides"]})
    has_references = any(row["chrf"] is not None for row in rows)
    measure = "judge grade" if by_judge else "exact match"
    compared = any(row["against_baseline"] for row in rows)
    columns = ((["judge mean", "interval"] if by_judge else [])
               + (["exact match", "interval", "chrF", "interval"] if has_references else [])
               + ([f"{measure} against the recipe (paired)"] if compared else []))
    lines = ["| rank | " + " | ".join(keys) + " | submitted | " + " | ".join(columns) + " |",
             "|--:|" + "--|" * len(keys) + ":--|" + "--:|" * len(columns)]
    for row in rows:
        values = " | ".join(json.dumps(row["overrides"].get(key), ensure_ascii=False) for key in keys)
        cells = []
        if by_judge:
            interval = row["judge_interval"]
            cells += [_number(row["judge_mean"], ".2f"), "–" if not interval else f"{interval[0]:.2f}–{interval[1]:.2f}"]
        if has_references:
            cells += [f"{row['exact_match']:.1%}", interval_text(row["exact_match_interval"], percent=True),
                      f"{row['chrf']:.1f}", interval_text(row["chrf_interval"])]
        if compared:
            result = (row["against_baseline"] or {}).get("measures", {}).get(measure)
            cells += ["–" if result is None else _against(result, row["against_baseline"]["stage"])]
        lines.append(f"| {row['rank']} | {values} | {row['stage']} | " + " | ".join(cells) + " |")
    if compared:
        lines += ["", f"The last column: each variant's submitted stage against the recipe's own, paired over the "
                  f"same tasks ({'Wilcoxon signed-rank' if by_judge else 'McNemar exact'}); better or worse only "
                  "beyond noise at the evaluation's confidence (evaluate.confidence)."]
    with atomic_path(table_path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def _chosen(choice) -> str:
    """A stage name, or the stage a submission's choice file names."""
    if choice in ("base", "sft", "dpo"):
        return choice
    return json.loads(Path(choice).read_text(encoding="utf-8"))["stage"]


def _against(result: dict, stage: str) -> str:
    percent = result["measure"] in ("exact match", "preference accuracy")
    scale = 100 if percent else 1
    interval = result["interval"]
    shown = "" if interval is None else f" [{interval[0] * scale:+.1f}, {interval[1] * scale:+.1f}]"
    return (f"{result['verdict']}: {result['difference'] * scale:+.1f}{' pts' if percent else ''}{shown} vs {stage}, "
            f"p={result['p_value']:.2g}")
