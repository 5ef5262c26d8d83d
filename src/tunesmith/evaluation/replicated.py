"""Two recipes compared over their seed replicates (`repeats`): `tunesmith compare` when both sides have them.

One run's score is one draw from its recipe's seed spread, so a difference between two single runs can look
significant over the tasks and still be smaller than what a seed moves. When both sides were trained under
several seeds, each stage and measure is compared on the tasks every seed of both sides answered:
- each side's score is pooled over its seeds (exact match: the share right over seeds × tasks; a judge
  grade and preference accuracy likewise; chrF: corpus chrF of every seed's answers together);
- the interval of B − A is a two-level bootstrap (tunesmith.evaluation.significance.compare_replicated): each draw
  resamples each side's seeds with replacement, then the tasks (the same tasks for both sides: paired),
  and recomputes both sides' scores, so the interval holds the seed spread and the task sampling together;
- the verdict is `better` / `worse` only when that interval excludes 0, else `within noise`;
- beside the difference, each side's seed spread: the sample standard deviation and range of the
  per-seed scores on the same tasks.
With few seeds the bootstrap sees (n − 1)/n of the seeds' variance of a mean (two seeds: half), while
resampling tasks and seeds both counts their interaction twice; three or more seeds a side are the useful
minimum, and the page says how many each side had.

Where the seeds' evaluations are: a recipe (file or sweep variant) with `repeats` N names them through its
replicates' plans (the keyed results/evaluated/<key>/eval.json of each seed that was built); a result key
through results/replicates.json when that file lists the key's evaluation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tunesmith.config import plan
from tunesmith.config.recipe import replicates
from tunesmith.data.normalize import match_key, normalize_text
from tunesmith.evaluation.paired import report_answers, report_references
from tunesmith.evaluation.replicates import spread
from tunesmith.evaluation.significance import chrf_of, chrf_statistics, compare_replicated, mean_of, mean_statistics

PERCENT = ("exact match", "preference accuracy")


# ---- where each side's seeds are ----
def recipe_evaluations(recipe: dict, root: Path) -> dict[int, Path]:
    """Seed → the evaluation of `recipe` trained under it, for the seeds built under `root` (none when the
    recipe has no `repeats`)."""
    if recipe["repeats"] < 2:
        return {}
    found = {recipe["seed"]: root / plan.folder_of(plan.steps(recipe)["evaluate"]) / "eval.json"}
    for replicate in replicates(recipe).values():
        steps = plan.steps(replicate, data_of=recipe)
        found[replicate["seed"]] = root / plan.folder_of(steps["evaluate"]) / "eval.json"
    return {seed: path for seed, path in found.items() if path.is_file()}


def key_evaluations(evaluation: Path, root: Path) -> dict[int, Path]:
    """Seed → evaluation, from results/replicates.json when it lists `evaluation` (a path under `root`) among
    its seeds'."""
    listed = root / "results" / "replicates.json"
    if not listed.is_file():
        return {}
    named = json.loads(listed.read_text(encoding="utf-8")).get("evaluations", {})
    paths = {int(seed): root / path for seed, path in named.items()}
    if os.path.normpath(evaluation) not in {os.path.normpath(path) for path in paths.values()}:
        return {}
    return {seed: path for seed, path in paths.items() if path.is_file()}


# ---- the scores ----
def _families(reports: list[dict], stage: str) -> dict[int, str]:
    for report in reports:
        found = {row["task_id"]: row["family"] for row in report["per_task"].get(stage, []) if row.get("family")}
        if found:
            return found
    return {}


def _measures(sides: list[list[dict]], references: dict[int, str] | None, ids: list[int] | None) -> dict:
    """Each measure's statistics (seeds × items × statistics) per side, on the items every seed of both
    sides has; `ids` limits the tasks (a family)."""
    found = {}
    every = [answers for side in sides for answers in side]
    tasks = sorted(task for task in references or {} if ids is None or task in ids)
    if tasks and all("outputs" in answers for answers in every):
        targets = [normalize_text(references[task]) for task in tasks]
        texts = [[[normalize_text(answers["outputs"].get(task, "")) for task in tasks] for answers in side]
                 for side in sides]
        found["exact match"] = (mean_of, [mean_statistics(
            [[match_key(text) == match_key(target) for text, target in zip(seed, targets)] for seed in side])
            for side in texts])
        if ids is None:
            found["chrF"] = (chrf_of, [np.stack([chrf_statistics(seed, targets) for seed in side])
                                       for side in texts])
    for name, part in (("judge grade", "grades"), ("preference accuracy", "preference")):
        if all(answers.get(part) for answers in every) and (ids is None or part == "grades"):
            shared = sorted(set.intersection(*(set(answers[part]) for answers in every)))
            shared = [item for item in shared if ids is None or item in ids]
            if shared:
                found[name] = (mean_of, [mean_statistics([[float(answers[part][item]) for item in shared]
                                                          for answers in side]) for side in sides])
    return found


def _compared(measures: dict, seeds: list[list[int]], confidence: float, samples: int, seed: int) -> dict:
    found = {}
    for name, (score, (first, second)) in measures.items():
        result = compare_replicated(first, second, score, confidence, samples, seed, name)
        result["seeds"] = {label: {**spread([float(score(run.sum(axis=0))) for run in side]),
                                   "per_seed": {str(number): float(score(run.sum(axis=0)))
                                                for number, run in zip(numbers, side)}}
                           for label, side, numbers in (("a", first, seeds[0]), ("b", second, seeds[1]))}
        found[name] = result
    return found


def seed_scores(first: dict[int, Path], second: dict[int, Path], confidence: float, samples: int, seed: int,
                root: str | os.PathLike = ".") -> dict:
    """Per stage every seed of both sides scored: each measure overall, exact match and judge grade per task
    family, compared over seeds and tasks (see the module's docstring)."""
    reports = [[json.loads(Path(path).read_text(encoding="utf-8")) for path in side.values()]
               for side in (first, second)]
    seeds = [list(side) for side in (first, second)]
    every = [report for side in reports for report in side]
    references = report_references(every[0], root)
    found = {}
    for stage in [stage for stage in every[0]["stages"] if all(stage in report["stages"] for report in every)]:
        sides = [[report_answers(report, stage, root) for report in side] for side in reports]
        families = {}
        family_of = _families(every, stage)
        for family in sorted(set(family_of.values())):
            ids = {task for task, name in family_of.items() if name == family}
            families[family] = _compared(_measures(sides, references, ids), seeds, confidence, samples, seed)
        found[stage] = {"overall": _compared(_measures(sides, references, None), seeds, confidence, samples, seed),
                        "families": families}
    return found


# ---- the page ----
def _spread_cell(entry: dict, percent: bool) -> str:
    scale, form = (100, ".1f") if percent else (1, ".2f")
    shown = (lambda value: f"{value * 100:.1f}%") if percent else (lambda value: format(value, ".2f"))
    sd = "–" if entry["sd"] is None else f"sd {entry['sd'] * scale:{form}}{' pts' if percent else ''}"
    return f"{sd}, {shown(entry['min'])}–{shown(entry['max'])}"


def _row(label: str, name: str, result: dict) -> list:
    percent = name in PERCENT
    scale, unit = (100, " pts") if percent else (1, "")
    shown = (lambda value: f"{value:.1%}") if percent else (lambda value: f"{value:.2f}")
    interval = result["interval"]
    verdict = {"better": "**better**", "worse": "**worse**"}.get(result["verdict"], result["verdict"])
    return [label, name, result["n"], shown(result["a"]), shown(result["b"]),
            f"{result['difference'] * scale:+.1f}{unit}",
            "–" if interval is None else f"{interval[0] * scale:+.1f} to {interval[1] * scale:+.1f}",
            _spread_cell(result["seeds"]["a"], percent), _spread_cell(result["seeds"]["b"], percent),
            f"p={result['p_value']:.3g}", verdict]


def table_rows(scores: dict) -> list[list]:
    rows = []
    for stage, found in scores.items():
        rows += [_row(stage, name, result) for name, result in found["overall"].items()]
        rows += [_row(f"{stage} / {family}", name, result)
                 for family, measures in found["families"].items() for name, result in measures.items()]
    return rows


HEADER = ["stage / family", "measure", "tasks", "A (seeds pooled)", "B (seeds pooled)", "B − A", "interval",
          "A's seeds: sd, range", "B's seeds: sd, range", "bootstrap", "verdict"]


def heading(seeds: dict, confidence: float) -> list[str]:
    """The lines above the seed table: how many seeds each side had, which, and what the interval holds."""
    a, b = (", ".join(map(str, seeds[side])) for side in ("a", "b"))
    return [f"Seeds: {len(seeds['a'])} vs {len(seeds['b'])} (A: {a}; B: {b}). Each side's score pools its seeds; "
            f"the {confidence:.0%} interval of B − A resamples each side's seeds, then the tasks (paired), so a "
            "verdict of better or worse means the difference exceeds both the seed spread and the task sampling "
            "(the interval excludes 0). Beside it, each side's spread over its seeds on the same tasks.", ""]


def fallback(first_seeds: dict, second_seeds: dict, first_evaluation: Path, second_evaluation: Path) -> str | None:
    """The sentence saying that only one side has seed replicates, and which single runs are compared."""
    if (len(first_seeds) > 1) == (len(second_seeds) > 1):
        return None
    having, other = ("A", "B") if len(first_seeds) > 1 else ("B", "A")
    seeds = first_seeds if having == "A" else second_seeds
    return (f"Only {having} has seed replicates ({len(seeds)} seeds: {', '.join(map(str, seeds))}); {other} is "
            f"one run, so the scores below compare single runs over the tasks alone: A's {first_evaluation} "
            f"against B's {second_evaluation}. Seed noise is not in these intervals.")
