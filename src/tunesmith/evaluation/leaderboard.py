"""A sweep's leaderboard: the variants ranked by the scores of the stage each submits, each score with its
interval, and each variant against the recipe's own submission, paired over the same tasks.

When the recipe has seed replicates (`repeats`: the recipe itself trained under further seeds; the
variants are one run each), the leaderboard states the seed spread of the recipe's submitted stage
(mean, sd, range per measure) and checks each variant's score against it: a variant is one run, so it
moves the score beyond what a seed does only when its score falls outside the prediction interval of one
more seed's score, mean ± t(n − 1) · sd · √(1 + 1/n) at the evaluation's confidence (the score of a run
that changed nothing but its seed falls inside it that often, for normal seed noise)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from scipy import stats

from tunesmith.evaluation.evaluate import interval_text
from tunesmith.evaluation.paired import compare_answers, report_answers, report_references
from tunesmith.evaluation.replicates import MEASURES, spread
from tunesmith.jobs.atomic import atomic_path, write_json


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
    baseline_seeds: dict[int, str | os.PathLike] | None = None,
) -> list[dict]:
    """Rank sweep variants by the judge's mean grade of the stage each one submits when a judge graded
    them (chrF breaks ties), else by chrF, then exact match; each variant is also compared, paired over the
    same tasks, with the recipe's own submitted stage (`baseline`: its eval.json, `baseline_choice` the
    submission's choice of stage), with a verdict at the evaluation's confidence.

    `scores` maps variant name → its evaluation file; `overrides` the recipe keys it changes;
    `choices` the choice file of its submission (the stage it submits); `baseline_seeds` seed → the
    evaluation of the recipe trained under it (`repeats`; see the module's docstring). Writes JSON and a
    Markdown table.
    """
    base_report = json.loads(Path(baseline).read_text(encoding="utf-8")) if baseline else None
    base_stage = _chosen(baseline_choice) if baseline_choice else None
    references = report_references(base_report) if base_report else None
    confidence = (base_report or {}).get("confidence", 0.95)
    seeds = seed_spread(baseline_seeds or {}, base_stage, confidence) if base_stage else None
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
                     "against_baseline": against, "stages": stages,
                     "against_seeds": _against_seeds(stages[stage], seeds)})
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
               + ([f"{measure} against the recipe (paired)"] if compared else [])
               + ([f"{measure} against the recipe's {len(seeds['seeds'])} seeds"] if seeds else []))
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
        if seeds:
            cells += [_beyond(row["against_seeds"], _SEED_MEASURE[measure])]
        lines.append(f"| {row['rank']} | {values} | {row['stage']} | " + " | ".join(cells) + " |")
    if compared:
        lines += ["", f"The paired column: each variant's submitted stage against the recipe's own, paired over the "
                  f"same tasks ({'Wilcoxon signed-rank' if by_judge else 'McNemar exact'}); better or worse only "
                  "beyond noise at the evaluation's confidence (evaluate.confidence)."]
    lines += ["", *seed_lines(seeds, confidence)]
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


# ---- the recipe's seed spread (`repeats`) ----
_SEED_MEASURE = {"exact match": "exact_match", "judge grade": "judge_mean"}
_PERCENT = ("exact_match",)


def seed_spread(seeds: dict[int, str | os.PathLike], stage: str, confidence: float) -> dict | None:
    """The recipe's scores of `stage` over its seeds (None under two): per measure the mean, sd, range, each
    seed's score and the prediction interval of one more seed's score, mean ± t(n − 1) · sd · √(1 + 1/n)."""
    if len(seeds) < 2:
        return None
    reports = {str(seed): json.loads(Path(path).read_text(encoding="utf-8")) for seed, path in seeds.items()}
    measures = {}
    for name, label, value_of, _ in MEASURES:
        per_seed = {seed: value_of(report["stages"][stage], {}) for seed, report in reports.items()
                    if stage in report["stages"]}
        per_seed = {seed: value for seed, value in per_seed.items() if value is not None}
        if len(per_seed) < 2:
            continue
        entry = {**spread(list(per_seed.values())), "per_seed": per_seed, "label": label}
        half = stats.t.ppf((1 + confidence) / 2, entry["runs"] - 1) * entry["sd"] * math.sqrt(1 + 1 / entry["runs"])
        measures[name] = {**entry, "prediction": [entry["mean"] - half, entry["mean"] + half]}
    return {"seeds": [int(seed) for seed in reports], "stage": stage, "confidence": confidence, "measures": measures}


def _against_seeds(scores: dict, seeds: dict | None) -> dict | None:
    """A variant's scores against the recipe's seed spread: inside or outside each measure's prediction interval."""
    if not seeds:
        return None
    found = {}
    for name, _, value_of, _ in MEASURES:
        value, entry = value_of(scores, {}), seeds["measures"].get(name)
        if value is None or entry is None:
            continue
        low, high = entry["prediction"]
        found[name] = {"value": value, "prediction": entry["prediction"], "beyond_a_seed": not low <= value <= high,
                       "difference": value - entry["mean"]}
    return found


def _value(value: float, name: str) -> str:
    return f"{value:.1%}" if name in _PERCENT else f"{value:.1f}" if name == "chrf" else f"{value:.2f}"


def _beyond(found: dict | None, name: str) -> str:
    """The seeds column's cell: whether the variant's score is beyond what a seed moves the recipe's."""
    entry = (found or {}).get(name)
    if entry is None:
        return "–"
    low, high = (_value(bound, name) for bound in entry["prediction"])
    if not entry["beyond_a_seed"]:
        return f"within a seed: {_value(entry['value'], name)} in {low} to {high}"
    side = "above" if entry["difference"] > 0 else "below"
    return f"beyond a seed: {_value(entry['value'], name)} {side} {low} to {high}"


def seed_lines(seeds: dict | None, confidence: float) -> list[str]:
    """The note under the table: the recipe's seed spread, or how to measure it."""
    if not seeds:
        return ["Each variant and the recipe are one run, and one run's score is one draw from its seed spread: "
                "set `repeats` (3 or more) in the recipe to have the recipe trained under further seeds, its "
                "spread shown here and each variant checked against it."]
    spreads = []
    for name, entry in seeds["measures"].items():
        scale, unit = (100, " pts") if name in _PERCENT else (1, "")
        spreads.append(f"{entry['label']} mean {_value(entry['mean'], name)}, sd {entry['sd'] * scale:.1f}{unit}, "
                       f"range {_value(entry['min'], name)} to {_value(entry['max'], name)}")
    return [f"The recipe over {len(seeds['seeds'])} seeds (`repeats`: {', '.join(map(str, seeds['seeds']))}), its "
            f"submitted stage {seeds['stage']}: " + "; ".join(spreads) + ". The variants are one run each: the last "
            f"column says whether a variant's score is outside the {confidence:.0%} prediction interval of one more "
            "seed's score (mean ± t·sd·√(1 + 1/n)), that is, moved beyond what changing the seed alone moves it."]
