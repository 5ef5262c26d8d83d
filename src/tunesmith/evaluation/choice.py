"""Which stage's answers are submitted, and why: the stage `submission.stage` names, or with `best` the stage
the evaluation's paired tests pick (tunesmith.evaluation.significance).

`best` ranks the scored stages by the judge's mean grade (exact match against the references when there
is no judge) and takes the highest, but only when its paired test finds it better than the stage before it
(build order base → sft → dpo) beyond noise; otherwise it falls back to that earlier stage, which must in
turn beat the one before it, down to the base. A later stage has to earn its place: training that moves
the score within the noise of the stage it started from is not submitted over it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith.evaluation.paired import comparison
from tunesmith.evaluation.significance import BETTER, describe
from tunesmith.generation.submission import write_submission
from tunesmith.jobs.atomic import write_json


def submission_reason(stage: str, requested: str, dpo_enabled: bool) -> str:
    if requested == "dpo" and not dpo_enabled:
        return "submission.stage is dpo, but dpo.enabled is false: SFT's answers"
    return f"submission.stage is {requested}"


def _ranked_by(report: dict) -> tuple[str, str]:
    """(measure name in comparisons, the stage result's key) the best stage is picked by."""
    if any((result.get("judge") or {}).get("mean") is not None for result in report["stages"].values()):
        return "judge grade", "judge"
    return "exact match", "exact_match"


def _value(result: dict, key: str) -> float:
    value = result.get(key)
    if key == "judge":
        value = (value or {}).get("mean")
    return float("-inf") if value is None else value


def best_stage(report: dict) -> dict:
    """The stage `submission.stage: best` submits, from an evaluation report (tunesmith.evaluation.evaluate):
    {"stage", "reason", "tests": the paired results behind the choice, "measure"}."""
    measure, key = _ranked_by(report)
    order = list(report["stages"])
    top = max(order, key=lambda stage: (_value(report["stages"][stage], key), -order.index(stage)))
    candidate, tests, steps = top, [], []
    while order.index(candidate) > 0:
        before = order[order.index(candidate) - 1]
        result = comparison(report, before, candidate).get(measure)
        if result is None:
            raise ValueError(f"the evaluation has no paired {measure} comparison of {before} and {candidate}")
        tests.append({**result, "from": before, "to": candidate})
        if result["verdict"] == BETTER:
            steps.append(f"{candidate} beats {before}: {describe(result)}")
            break
        steps.append(f"{candidate} is not better than {before}: {describe(result)}")
        candidate = before
    tied = [stage for stage in order if stage != top and _value(report["stages"][stage], key) ==
            _value(report["stages"][top], key)]
    lead = f"submission.stage is best: {top} scores highest on {measure}" + (
        f" (tied with {', '.join(tied)}: the earliest stage is taken)" if tied else "")
    if candidate == top and not tests:
        reason = f"{lead}, and there is no stage before it"
    elif candidate == top:
        reason = f"{lead} and beats {tests[-1]['from']} beyond noise"
    else:
        reason = f"{lead}, but {candidate} is submitted: {top} is not better than the stage before it beyond noise"
    return {"stage": candidate, "reason": reason, "measure": measure, "steps": steps, "tests": tests}


def choose(requested: str, dpo_enabled: bool, scores_path: str | os.PathLike | None = None) -> dict:
    """The submitted stage and why; `scores_path` (the evaluation's eval.json) only for `best`."""
    if requested != "best":
        stage = "sft" if requested == "dpo" and not dpo_enabled else requested
        return {"stage": stage, "reason": submission_reason(stage, requested, dpo_enabled), "steps": [], "tests": []}
    if scores_path is None:
        raise ValueError("submission.stage: best needs the evaluation's scores")
    return best_stage(json.loads(Path(scores_path).read_text(encoding="utf-8")))


def submit(requested: str, dpo_enabled: bool, generations: dict[str, str | os.PathLike],
           tasks_path: str | os.PathLike, out_path: str | os.PathLike, choice_path: str | os.PathLike,
           scores_path: str | os.PathLike | None = None, allow_empty: bool = False) -> dict:
    """Write the chosen stage's answers as the submission (validated; `allow_empty`: submission.allow_empty)
    and the choice beside it."""
    chosen = choose(requested, dpo_enabled, scores_path)
    if chosen["stage"] not in generations:
        raise ValueError(f"submission.stage: {chosen['stage']} was chosen, but its answers are not among "
                         f"{', '.join(generations)}")
    write_submission(generations_path=generations[chosen["stage"]], tasks_path=tasks_path, out_path=out_path,
                     allow_empty=allow_empty)
    write_json(choice_path, {**chosen, "generations": os.fspath(generations[chosen["stage"]])})
    return chosen


# ---- the summary's note: another stage better than the submitted one beyond noise ----
def measure(result: dict) -> tuple[str, float] | None:
    """What a stage is ranked by: the judge's mean grade when it graded, else exact match (chrF breaks ties)."""
    judge = result.get("judge")
    if judge and judge.get("mean") is not None:
        return "judge mean", judge["mean"]
    if "exact_match" in result:
        return "exact match", result["exact_match"]
    return None


def better_stages(summary: dict) -> list[tuple[str, dict]]:
    """(stage, test) of the stages the evaluation's paired test finds better than the submitted one on its measure."""
    stages, submitted = summary["scores"]["stages"], summary["submission"]["stage"]
    if submitted not in stages or measure(stages[submitted]) is None:
        return []
    name = {"judge mean": "judge grade"}.get(measure(stages[submitted])[0], measure(stages[submitted])[0])
    report = {"comparisons": summary["scores"].get("comparisons", [])}
    tests = {stage: comparison(report, submitted, stage).get(name) for stage in stages if stage != submitted}
    return [(stage, result) for stage, result in tests.items() if result and result["verdict"] == BETTER]


def comparison_note(summary: dict, plain=str, code=lambda text: f"`{text}`") -> str | None:
    """The note that another stage scores above the submitted one beyond noise (the paired test's figures);
    `plain` and `code` mark up its text and the setting to change (the terminal's backticks, the report's
    reStructuredText)."""
    better = better_stages(summary)
    if not better:
        return None
    submitted = summary["submission"]["stage"]
    tests = "; ".join(f"{submitted} → {stage}: {describe(result)}" for stage, result in better)
    names = [stage for stage, _ in better]
    return (plain(f"{' and '.join(names)} {'scores' if len(names) == 1 else 'score'} above the submitted "
                  f"{submitted} beyond noise ({tests}); ")
            + code(f"submission.stage: {names[0]}") + plain(" would submit it."))
