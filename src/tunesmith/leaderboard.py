"""A sweep's leaderboard: the variants ranked by the scores of the stage each submits, each score with its
interval, and each variant against the recipe's own submission, paired over the same tasks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith.atomic import atomic_path, write_json
from tunesmith.evaluate import interval_text
from tunesmith.paired import compare_answers, report_answers, report_references


def _number(value, form: str) -> str:
    return "–" if value is None else format(value, form)


def _ranking_value(stage: dict) -> tuple:
    judge = stage.get("judge")
    if judge is not None:
        return (judge["mean"] if judge["mean"] is not None else float("-inf"), stage.get("chrf", 0.0))
    return (stage["chrf"], stage["exact_match"])


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
