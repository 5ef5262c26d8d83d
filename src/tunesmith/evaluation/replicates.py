"""Training noise, measured: a recipe trained under several seeds (`repeats`), each stage's scores per
seed with their mean and spread.

A seed replicate changes only `seed` (tunesmith.config.recipe.replicates), so the runs share their data and
differ by what the seed moves: initialisation, data order, sampling, and the floating-point path
through them. The spread is the sample standard deviation over the runs and their range; one run's
score is one draw from it. results/replicates.json keeps every seed's scores and the evaluation file
each came from (with its per-task rows), which is what a paired comparison of two recipes needs.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from tunesmith.jobs.atomic import atomic_path, write_json

# (name in replicates.json, label, how a stage's eval.json entry gives it, format of the figure)
MEASURES = (
    ("exact_match", "exact match", lambda result, preference: result.get("exact_match"), ".1%"),
    ("chrf", "chrF", lambda result, preference: result.get("chrf"), ".1f"),
    ("judge_mean", "judge (1–5)", lambda result, preference: (result.get("judge") or {}).get("mean"), ".2f"),
    ("preference_accuracy", "preference accuracy", lambda result, preference: preference.get("accuracy"), ".1%"),
)


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value) and range of one measure over the seeds."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "runs": len(values)}


def summarise_replicates(evaluations: dict[int, str | os.PathLike], out_path, table_path) -> dict:
    """`evaluations`: seed → the eval.json of the recipe trained under it (the recipe's own seed first).
    Writes {"seeds", "evaluations", "stages": {stage: {measure: {"per_seed": {seed: value}, "mean", "sd",
    "min", "max", "runs"}}}, "inputs"} as JSON and the table as Markdown."""
    if len(evaluations) < 2:
        raise ValueError(f"a spread needs at least two seeds' evaluations, got {len(evaluations)}")
    reports = {seed: json.loads(Path(path).read_text(encoding="utf-8")) for seed, path in evaluations.items()}
    stage_names = list(dict.fromkeys(stage for report in reports.values() for stage in report["stages"]))
    stages = {}
    for stage in stage_names:
        found = {}
        for name, _, value_of, _ in MEASURES:
            per_seed = {}
            for seed, report in reports.items():
                if stage in report["stages"]:
                    value = value_of(report["stages"][stage], (report.get("preference") or {}).get(stage, {}))
                    if value is not None:
                        per_seed[str(seed)] = value
            if per_seed:
                found[name] = {"per_seed": per_seed, **spread(list(per_seed.values()))}
        stages[stage] = found
    result = {"seeds": list(evaluations), "evaluations": {str(seed): os.fspath(path) for seed, path in evaluations.items()},
              "stages": stages, "inputs": sorted(map(os.fspath, evaluations.values()))}
    write_json(out_path, result)
    with atomic_path(table_path) as tmp:
        Path(tmp).write_text(markdown(result), encoding="utf-8")
    return result


def _figure(value, form: str) -> str:
    return "–" if value is None else format(value, form)


def rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """The table: a row per stage and measure with the mean, the standard deviation, the range and each seed's
    figure (percentages in points)."""
    seeds = [str(seed) for seed in result["seeds"]]
    header = ["stage", "measure", "mean", "sd", "range", *[f"seed {seed}" for seed in seeds]]
    found = []
    for stage, measures in result["stages"].items():
        for name, label, _, form in MEASURES:
            if name not in measures:
                continue
            entry = measures[name]
            sd_form = ".1f" if form == ".1%" else form  # a spread of shares in percentage points
            sd = None if entry["sd"] is None else entry["sd"] * (100 if form == ".1%" else 1)
            found.append([stage, label, _figure(entry["mean"], form),
                          _figure(sd, sd_form) + (" pt" if form == ".1%" and sd is not None else ""),
                          f"{_figure(entry['min'], form)}–{_figure(entry['max'], form)}",
                          *[_figure(entry["per_seed"].get(seed), form) for seed in seeds]])
    return header, found


def markdown(result: dict) -> str:
    header, table = rows(result)
    lines = [f"Scores over {len(result['seeds'])} seeds ({', '.join(map(str, result['seeds']))}): the same recipe "
             "trained under each; sd is the sample standard deviation over the seeds.", "",
             "| " + " | ".join(header) + " |", "|:--|:--|" + "--:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n"
