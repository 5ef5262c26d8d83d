"""Scoring each stage's answers against the reference outputs: exact match and chrF.

Both metrics compare normalised text, so an answer that differs from the reference only in
full-width versus half-width forms or spacing is not penalised. chrF works on characters, which
suits Japanese: it needs no word segmentation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sacrebleu.metrics import CHRF

from tunesmith.atomic import atomic_path, write_json
from tunesmith.normalize import match_key, normalize_text
from tunesmith.submission import read_generations
from tunesmith.tasks import read_references, read_task_families


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


def _markdown_table(stages: dict[str, dict]) -> str:
    lines = ["| stage | exact match | chrF |", "|:--|--:|--:|"]
    lines += [f"| {stage} | {result['exact_match']:.1%} | {result['chrf']:.1f} |" for stage, result in stages.items()]
    return "\n".join(lines) + "\n"


def evaluate(
    generations: dict[str, str | os.PathLike],
    references_path: str | os.PathLike,
    out_path: str | os.PathLike,
    table_path: str | os.PathLike | None = None,
    tasks_path: str | os.PathLike | None = None,
    preferences: dict[str, str | os.PathLike] | None = None,
) -> dict:
    """Score each stage's generations file (stage name → path) and write the results atomically.

    Writes `{"stages": {stage: {exact_match, chrf, n}}, "per_task": {stage: [...]}}` to `out_path`,
    stages in the order given, and a Markdown summary table to `table_path` if one is given. With a
    `tasks_path` whose tasks carry a `family`, each stage also gets scores per family; `preferences`
    (stage → the file `tunesmith.preference.score_preferences` wrote) adds each stage's preference
    accuracy on the held-out pairs.
    """
    if not generations:
        raise ValueError("no stages to evaluate")
    references = read_references(references_path)
    stages, per_task = {}, {}
    families = read_task_families(tasks_path) if tasks_path is not None else {}
    for stage, path in generations.items():
        outputs = read_generations(path)
        result = score(outputs, references)
        stages[stage] = {"exact_match": result["exact_match"], "chrf": result["chrf"], "n": result["n"]}
        per_task[stage] = result["per_task"]
        if families:
            stages[stage]["families"] = family_scores(outputs, references, families)
            for task in per_task[stage]:
                task["family"] = families.get(task["task_id"])
    report = {"stages": stages, "per_task": per_task}
    if preferences:
        report["preference"] = read_preference_scores(preferences)
    write_json(out_path, report)
    if table_path is not None:
        with atomic_path(table_path) as tmp:
            Path(tmp).write_text(_markdown_table(stages) + _family_table(report) + _preference_table(report),
                                 encoding="utf-8")
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
             "| stage | pairs | accuracy | mean log-prob margin |", "|:--|--:|--:|--:|"]
    lines += [f"| {stage} | {result['pairs']} | {result['accuracy']:.1%} | {result['mean_margin']:.2f} |"
              for stage, result in report["preference"].items()]
    return "\n".join(lines) + "\n"


def leaderboard(
    scores: dict[str, str | os.PathLike],
    overrides: dict[str, dict],
    submitted: dict[str, str],
    out_path: str | os.PathLike,
    table_path: str | os.PathLike,
) -> list[dict]:
    """Rank sweep variants by the chrF, then exact match, of the stage each one submits.

    `scores` maps variant name → its evaluation file; `overrides` the recipe keys it changes;
    `submitted` the stage it submits. Writes the ranking as JSON and as a Markdown table.
    """
    rows = []
    for name, path in scores.items():
        stages = json.loads(Path(path).read_text(encoding="utf-8"))["stages"]
        stage = submitted[name]
        rows.append({"variant": name, "overrides": overrides[name], "stage": stage,
                     "exact_match": stages[stage]["exact_match"], "chrf": stages[stage]["chrf"],
                     "stages": stages})
    rows.sort(key=lambda row: (-row["chrf"], -row["exact_match"], row["variant"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    write_json(out_path, rows)
    keys = sorted({key for row in rows for key in row["overrides"]})
    lines = ["| rank | " + " | ".join(keys) + " | submitted | exact match | chrF |",
             "|--:|" + "--|" * len(keys) + ":--|--:|--:|"]
    for row in rows:
        values = " | ".join(json.dumps(row["overrides"].get(key), ensure_ascii=False) for key in keys)
        lines.append(f"| {row['rank']} | {values} | {row['stage']} | {row['exact_match']:.1%} | {row['chrf']:.1f} |")
    with atomic_path(table_path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows
