"""Two sets of answers to the same tasks, measure by measure, each with its paired test
(tunesmith.evaluation.significance): the stages of one evaluation (eval.json's `comparisons`), two runs
(`tunesmith compare`), a sweep variant against its recipe (the leaderboard). Also what an evaluation
report's files hold: each stage's answers, grades and preference outcomes, read back for pairing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith.data.normalize import match_key, normalize_text
from tunesmith.data.tasks import load_references, read_references, read_tasks
from tunesmith.evaluation import significance
from tunesmith.generation.submission import read_generations
from tunesmith.jobs.atomic import read_jsonl


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
    (tunesmith.evaluation.significance): exact match and chrF against `references`, judge grades, preference accuracy.
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


def report_references(report: dict, root: str | os.PathLike = ".") -> dict[int, str] | None:
    """The reference answers an evaluation report scored against, read again from its files (paths relative
    to the workflow's working directory `root`)."""
    files = report.get("files") or {}
    if not files.get("references"):
        return None
    references = Path(root) / files["references"]
    if not files.get("tasks"):
        return read_references(references)
    loaded = load_references(references, read_tasks(Path(root) / files["tasks"]))
    return {task_id: reference.output for task_id, reference in loaded.by_task.items() if reference.output}


def report_answers(report: dict, stage: str, root: str | os.PathLike = ".") -> dict:
    """A stage's answers, grades and preference outcomes, from an evaluation report's files (compare_answers)."""
    files, root = report.get("files") or {}, Path(root)
    found = {}
    if stage in files.get("generations", {}):
        found["outputs"] = read_generations(root / files["generations"][stage])
    if stage in files.get("judged", {}):
        found["grades"] = {row["task_id"]: row["grade"] for row in read_jsonl(root / files["judged"][stage])
                           if row["grade"] is not None}
    if stage in files.get("preferences", {}):
        found["preference"] = read_preference_pairs(root / files["preferences"][stage])
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
