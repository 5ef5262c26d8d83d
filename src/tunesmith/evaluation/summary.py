"""What a finished run tells its user: the end-of-run summary on the terminal and the report's first
page, two renderings of one collection of facts (`collect`); the rule also writes the report's
per-task answers page (`tunesmith.evaluation.answers`).

The facts: which stage was submitted and why; the scores per stage (exact match, chrF, the judge's
grade), from results/eval.json only when that file scored this recipe's own answers (a table from
another recipe or from older answers is never shown as this one's), else exact match and chrF
computed on the spot from the answers on disk when there are references; the records kept and
quarantined per source (the data cards); the rows each training stage really trained on (the
adapters' tunesmith.json); the recipe's key settings and commit, the seed replicates' spread and the
stage chart on the first page.

Over 350 lines because the terminal and the first page render the same facts side by side (each table
once per medium); the first page's recipe, chart and replicate parts are the candidates to move out.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from tunesmith.config.recipe import lookup
from tunesmith.data.tasks import read_task_families
from tunesmith.evaluation.pages import PREFERENCE_MEASURES, write_pages
from tunesmith.evaluation.replicates import rows as replicate_rows
from tunesmith.generation.submission import read_generations
from tunesmith.jobs.atomic import atomic_path, read_jsonl, write_json

# Every `snakemake` start imports this module (rules/common.smk: holds_inputs, summary_inputs), so what
# scores and draws (sacrebleu, scipy, matplotlib: about 1 s) is imported by the functions that use it.

SHOWN_REASONS = 3  # quarantine reasons named per source on the terminal; the data card has them all
REPORT = "report.html"
REPORT_COMMAND = f"snakemake --report {REPORT} --cores 1"
BUILD_ALL = "snakemake --cores 1 --resources gpu=1"


def holds_inputs(path: str | os.PathLike, expected: list[str]) -> bool:
    """Whether the JSON at `path` records exactly `expected` as its `inputs`: the files of this recipe
    that it was computed from (eval.json and summary.json name theirs)."""
    found = _json_object(path)
    return found is not None and found.get("inputs") == sorted(map(os.fspath, expected))


def _json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object at `path`; None when there is none or the file holds something else (an empty
    placeholder, as `snakemake --touch` leaves): the summary then shows less rather than stopping."""
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def summary_inputs(files: dict) -> list[str]:
    """The keyed files a summary of `files` is computed from; their paths name the recipe's stages."""
    return sorted(map(os.fspath, [*files["generations"].values(), *files["judged"].values(),
                                  *files["cards"].values(), *files["adapters"].values()]))


# The recipe keys the first page names (where the recipe has them): what a reader needs to tell two runs apart.
KEY_SETTINGS = ("seed", "repeats", "base_model.path", "base_model.quantization", "sft.num_train_epochs", "sft.learning_rate",
                "sft.lora.r", "dpo.enabled", "dpo.method", "dpo.beta", "dpo.learning_rate", "dpo.num_train_epochs",
                "generate.max_new_tokens", "generate.repetition_penalty", "submission.stage", "tasks.path")
# The two preference measures a run shows, which count different things on the same held-out pairs.
def key_settings(recipe: dict) -> dict:
    """The recipe's values of KEY_SETTINGS (dotted key -> value), skipping DPO's when DPO is off."""
    found = {}
    for dotted in KEY_SETTINGS:
        if dotted.startswith("dpo.") and dotted != "dpo.enabled" and not recipe["dpo"]["enabled"]:
            continue
        try:
            found[dotted] = lookup(recipe, dotted)
        except (KeyError, IndexError, TypeError):
            continue
    return found


def collect(files: dict, stage: str, reason: str, recipe: dict | None = None) -> dict:
    """Every fact the summary shows. `files` (built by rules/common.smk for the recipe): submission,
    tasks, references, scores (results/eval.json), scored (the files eval.json must name to be this
    recipe's), configured (what scores the recipe, in words, or None), and stage → path maps
    generations, judged, adapters, role → path cards; submitted and choice: the recipe's keyed submission
    and the choice of stage written beside it, which for `submission.stage: best` names the stage and why;
    optionally replicates (results/replicates.json) and the evaluations it must name.
    `recipe`: {"path", "settings" (key_settings)}."""
    chosen = (_json_object(files["choice"]) if files.get("choice") else None) or {}
    stage, reason = chosen.get("stage", stage), chosen.get("reason", reason)
    return {
        "recipe": recipe,
        "replicates": _replicates(files),
        "submission": {**_submission(files, stage, reason), "steps": chosen.get("steps", [])},
        "scores": _scores(files),
        "data": {role: _card(path) for role, path in files["cards"].items()},
        "training": {name: _trained(path) for name, path in files["adapters"].items()},
        "inputs": summary_inputs(files),
    }


def _submission(files: dict, stage: str, reason: str) -> dict:
    path = Path(files["submission"])
    found = {"path": os.fspath(path), "stage": stage, "reason": reason, "rows": None, "other_recipe": False}
    if path.is_file():
        found["rows"] = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        manifest = path.with_name(path.name + ".manifest.json")  # which answers it was written from
        if manifest.is_file():
            written = json.loads(manifest.read_text(encoding="utf-8"))
            copied = files.get("submitted") or files["generations"].get(stage)
            found["other_recipe"] = os.fspath(copied) not in written["inputs"]
            found["commit"] = written.get("git_commit")
    found["fallbacks"] = _fallbacks(files["generations"].get(stage))
    return found


def _replicates(files: dict) -> dict | None:
    """The seed replicates' spread (tunesmith.evaluation.replicates), when results/replicates.json is this recipe's."""
    found = files.get("replicates")
    if not found or not holds_inputs(found["path"], found["evaluations"]):
        return None
    return json.loads(Path(found["path"]).read_text(encoding="utf-8"))


def _fallbacks(generations) -> int | None:
    """How many answers of the submitted stage were empty after every attempt and were generated again
    with end-of-sequence blocked (tunesmith.generation.generate: a row's `fallback`)."""
    if not generations or not Path(generations).is_file():
        return None
    return sum(1 for row in read_jsonl(generations) if row.get("fallback"))


def _fallback_note(submission: dict) -> str | None:
    count = submission.get("fallbacks")
    return (f"{count} of these answers were empty after every attempt (the model ended them at once) and were "
            "generated again with end-of-sequence blocked for their first tokens (their generations rows say "
            "`fallback`).") if count else None


def _scores(files: dict) -> dict:
    from tunesmith.evaluation.answers import reference_answers
    from tunesmith.evaluation.evaluate import family_scores, score
    from tunesmith.evaluation.paired import score_intervals

    configured, target = files["configured"], os.fspath(files["scores"])
    if configured is None:
        return {"stages": {}, "from": None, "configured": None,
                "note": "No scores: this recipe has no judge (judge.backend) and no references (tasks.references)."}
    if holds_inputs(files["scores"], files["scored"]):
        report = json.loads(Path(files["scores"]).read_text(encoding="utf-8"))
        return {"stages": report["stages"], "from": target, "configured": configured, "note": None,
                "judge": report.get("judge"), "per_task": report.get("per_task", {}),
                "preference": report.get("preference") or {}, "comparisons": report.get("comparisons", []),
                "confidence": report.get("confidence", 0.95)}
    stale = Path(files["scores"]).is_file()
    note = (f"{target} holds the scores of another recipe or of older answers, not shown; " if stale
            else "No scores yet: ") + f"`snakemake {target}` scores this recipe's answers ({configured})."
    stages = {}
    references = reference_answers(files["references"], files["tasks"]) if files["references"] else None
    if references:  # exact match and chrF cost nothing: score the answers that exist
        families = read_task_families(files["tasks"]) if files["tasks"] else {}
        for stage, path in files["generations"].items():
            if Path(path).is_file():
                outputs = read_generations(path)
                stages[stage] = {key: value for key, value in score(outputs, references).items() if key != "per_task"}
                stages[stage].update(score_intervals(outputs, references, 0.95, 1000, 0))
                if families:
                    stages[stage]["families"] = family_scores(outputs, references, families)
    return {"stages": stages, "from": "answers" if stages else None, "configured": configured, "note": note}


def _card(path) -> dict | None:
    card = _json_object(path)
    if card is None or "sources" not in card:  # not a card (an empty placeholder): no data counts shown
        return None
    return {"path": os.fspath(path),
            "sources": {name: {"rows_in": entry["rows_in"], "kept": entry["kept"],
                               "quarantined": dict(sorted(entry["quarantined"].items(), key=lambda item: -item[1]))}
                        for name, entry in card["sources"].items()}}


def _trained(adapter) -> dict | None:
    path = Path(adapter) / "tunesmith.json"
    if not path.is_file():
        return None
    metadata = json.loads(path.read_text(encoding="utf-8"))
    keys = ("rows", "rows_seen", "epochs_seen", "rows_curated", "rows_dropped", "rows_truncated", "eval_rows",
            "sequences", "method")
    return {key: metadata[key] for key in keys if key in metadata}


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def score_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The score table: header and one row per stage (the submitted one marked)."""
    stages = summary["scores"]["stages"]
    judged = any("judge" in result for result in stages.values())
    referenced = any("exact_match" in result for result in stages.values())
    preference = summary["scores"].get("preference") or {}
    header = ["stage"] + (["exact match", "chrF"] if referenced else []) + (
        ["preference accuracy"] if preference else []) + (["judge (1–5)", "interval", "unparseable"] if judged else [])
    rows = []
    for stage, result in stages.items():
        row = [stage + (" (submitted)" if stage == summary["submission"]["stage"] else "")]
        if referenced:
            row += [_with_interval(_percent(result.get("exact_match")), result.get("exact_match_interval"), True),
                    _with_interval("–" if "chrf" not in result else f"{result['chrf']:.1f}", result.get("chrf_interval"))]
        if preference:
            found = preference.get(stage, {})
            row += [_with_interval(_percent(found.get("accuracy")), found.get("interval"), True)]
        if judged:
            grades = result.get("judge") or {}
            interval = grades.get("interval")
            row += ["–" if grades.get("mean") is None else f"{grades['mean']:.2f}",
                    "–" if not interval else f"{interval[0]:.2f}–{interval[1]:.2f}", str(grades.get("unparseable", "–"))]
        rows.append(row)
    return header, rows


def _with_interval(value: str, interval, percent: bool = False) -> str:
    """A score with its interval: `65.0% (55.3%–73.8%)`, `41.2 (38.0–44.5)`."""
    from tunesmith.evaluation.evaluate import interval_text

    return value if not interval or value == "–" else f"{value} ({interval_text(interval, percent)})"


def family_rows(summary: dict) -> tuple[list[str], list[list[str]]] | None:
    """Exact match per task family (the task file's `family` field): a row per family, a column per stage;
    None when the task file names no families or nothing has references."""
    stages = {stage: result["families"] for stage, result in summary["scores"]["stages"].items()
              if result.get("families")}
    if not stages:
        return None
    families = list(dict.fromkeys(family for found in stages.values() for family in found))
    submitted = summary["submission"]["stage"]
    header = ["family", "tasks"] + [stage + (" (submitted)" if stage == submitted else "") for stage in stages]
    rows = []
    for family in families:
        counts = [found[family]["n"] for found in stages.values() if family in found]
        rows.append([family, str(max(counts))] + [_percent(found.get(family, {}).get("exact_match"))
                                                  for found in stages.values()])
    return header, rows


def data_rows(summary: dict) -> list[list[str]]:
    rows = []
    for role, card in summary["data"].items():
        for source, entry in (card or {}).get("sources", {}).items():
            quarantined = entry["quarantined"]
            reasons = ", ".join(f"{reason} {count}" for reason, count in list(quarantined.items())[:SHOWN_REASONS])
            if len(quarantined) > SHOWN_REASONS:
                reasons += f", {len(quarantined) - SHOWN_REASONS} more"
            rows.append([role, source, str(entry["rows_in"]), str(entry["kept"]), str(sum(quarantined.values())),
                         reasons])
    return rows


def training_rows(summary: dict) -> list[list[str]]:
    rows = []
    for stage, counts in summary["training"].items():
        if not counts:
            continue
        unit = "rows" if stage != "dpo" else "answers" if counts.get("method") == "kto" else "pairs"
        lost = [f"{sum(counts[key].values())} {word} ({', '.join(counts[key])})"
                for key, word in (("rows_dropped", "dropped"), ("rows_truncated", "truncated")) if counts.get(key)]
        trained = f"{counts['rows']} {unit}" + (f" in {counts['sequences']} packed sequences" if "sequences" in counts else "")
        if "rows_seen" in counts:  # available vs seen: with max_steps, training may stop before an epoch
            trained = f"{counts['rows_seen']} of {trained} seen ({counts['epochs_seen']:.2f} epochs)"
        rows.append([stage, trained, str(counts.get("rows_curated", "–")), "; ".join(lost) or "none",
                     str(counts.get("eval_rows", "–"))])
    return rows


TRAINING_HEADER = ["stage", "trained", "curated train rows", "lost at max_length", "validation rows"]
DATA_HEADER = ["dataset", "source", "records in", "kept", "quarantined", "main reasons"]


# ---- the terminal ----
def _aligned(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in [header, *rows]]


def terminal(summary: dict, summary_current: bool) -> str:
    """The few lines the end of a run prints."""
    from tunesmith.evaluation.choice import comparison_note

    submission, scores = summary["submission"], summary["scores"]
    if submission["rows"] is None:
        lines = [f"{submission['path']} is not built yet: `snakemake {submission['path']} --cores 1 --resources gpu=1`."]
    elif submission["other_recipe"]:
        lines = [f"{submission['path']} holds the answers of another recipe, not of this one's {submission['stage']} "
                 f"stage: `snakemake {submission['path']} --cores 1 --resources gpu=1` rebuilds it."]
    else:
        lines = [f"{submission['path']} is ready: {submission['rows']} answers of stage {submission['stage']} "
                 f"({submission['reason']})."]
        lines += [f"  {step}" for step in submission.get("steps", [])]  # submission.stage: best's tests
        lines += [f"  {_fallback_note(submission)}"] if _fallback_note(submission) else []
    if scores["stages"]:
        where = f"from {scores['from']}" if scores["from"] != "answers" else "computed now from the answers on disk"
        lines += ["", f"Scores ({scores['configured']}; {where}):", *_aligned(*score_rows(summary)),
                  f"(In brackets: {scores.get('confidence', 0.95):.0%} intervals over the tasks.)"]
        note = comparison_note(summary)
        lines += [f"  Note: {note}"] if note else []
        families = family_rows(summary)
        lines += ["", "Exact match per task family:", *_aligned(*families)] if families else []
    if summary.get("replicates"):
        lines += ["", f"Over {len(summary['replicates']['seeds'])} seeds (repeats; results/replicates.md):",
                  *_aligned(*replicate_rows(summary["replicates"]))]
    if scores["note"]:
        lines += ["", scores["note"]]
    if any(summary["data"].values()):
        lines += ["", "Data (every record kept or quarantined; reasons in the data cards):",
                  *_aligned(DATA_HEADER, data_rows(summary))]
    if training_rows(summary):
        lines += ["", "Trained:", *_aligned(TRAINING_HEADER, training_rows(summary))]
    report = (f"`{REPORT_COMMAND}` writes {REPORT}: these tables on its first page, every task's answers beside "
              "its reference (Evaluation › answers.html), data cards, training curves and manifests."
              if summary_current else
              f"`{BUILD_ALL}` builds the scores and the report's pages, then `{REPORT_COMMAND}` writes {REPORT}.")
    return "\n".join([*lines, "", f"Report: {report}", "Logs: logs/<rule>/ (one per job, every attempt kept)."])


# ---- the report's first page (reStructuredText, included by report/workflow.rst) ----
def _rst_text(text: str) -> str:
    """Plain text that reStructuredText shows as written."""
    return "".join("\\" + char if char in "\\`*_|[]<>:" else char for char in str(text))


def _list_table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [f".. list-table:: {_rst_text(title)}", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines += [f"   {'*' if index == 0 else ' '} - {_rst_text(cell) or '..'}" for index, cell in enumerate(row)]
    return lines + [""]


def _recipe_lines(summary: dict) -> list[str]:
    recipe, commit = summary.get("recipe"), summary["submission"].get("commit")
    if not recipe:
        return []
    made = f", made at commit ``{commit[:12]}{'+dirty' if commit.endswith('+dirty') else ''}``" if commit else ""
    settings = ", ".join(f"``{key}: {json.dumps(value, ensure_ascii=False)}``"
                         for key, value in recipe["settings"].items())
    return [f"**Recipe:** ``{recipe['path']}``{made}. Key settings: {settings}.", ""]


def _replicate_lines(summary: dict) -> list[str]:
    replicates = summary.get("replicates")
    if not replicates:
        return []
    return _list_table(f"Over {len(replicates['seeds'])} seeds (repeats): mean, spread and each seed's score",
                       *replicate_rows(replicates))


def start_page(summary: dict, chart: bytes | None = None) -> str:
    """The first page; `chart` (PNG bytes, tunesmith.evaluation.stage_chart) is embedded under the score table."""
    from tunesmith.evaluation.choice import comparison_note

    submission, scores = summary["submission"], summary["scores"]
    lines = ["Results", "=======", "",
             f"**Submitted:** ``{submission['path']}``, {submission['rows']} answers of stage "
             f"**{submission['stage']}** ({_rst_text(submission['reason'])}).", ""]
    lines += [f"- {_rst_text(step)}" for step in submission.get("steps", [])] + ([""] if submission.get("steps") else [])
    lines += [_rst_text(_fallback_note(submission)), ""] if _fallback_note(submission) else []
    lines += _recipe_lines(summary)
    if scores["stages"]:
        lines += _list_table(f"Scores ({scores['configured']})", *score_rows(summary))
        if chart:
            # docutils refuses lines over 10,000 characters; an image URI may wrap (whitespace is removed).
            uri = f"data:image/png;base64,{base64.b64encode(chart).decode('ascii')}"
            lines += [".. image::", *(f"   {uri[start:start + 100]}" for start in range(0, len(uri), 100)),
                      "   :alt: each stage's scores with their intervals", ""]
        if scores.get("preference"):
            lines += [_rst_text(PREFERENCE_MEASURES), ""]
        lines += _replicate_lines(summary)
        note = comparison_note(summary, plain=_rst_text, code=lambda text: f"``{text}``")
        lines += [f"**Note:** {note}", ""] if note else []
        families = family_rows(summary)
        lines += _list_table("Exact match per task family", *families) if families else []
        lines += ["Every task's answer of each stage beside the reference, by task family: `answers.html`_ "
                  "(category `Evaluation`_).", ""]
    if scores["note"]:
        lines += [_rst_text(scores["note"]), ""]
    if any(summary["data"].values()):
        lines += _list_table("Data: records per source (every record kept or quarantined)", DATA_HEADER,
                             data_rows(summary))
        lines += ["Reasons, length histograms and examples: `Data cards`_.", ""]
    if training_rows(summary):
        lines += _list_table("Rows trained per stage", TRAINING_HEADER, training_rows(summary))
        lines += ["Loss, learning rate and, for DPO, reward margins and accuracies: `Training curves`_.", ""]
    return "\n".join(lines)


# ---- entry points ----
def chart_of(summary: dict) -> bytes | None:
    """The stage comparison chart of the summary's scores and their intervals (eval.json's)."""
    from tunesmith.evaluation.stage_chart import stage_chart

    scores = summary["scores"]
    if not scores["stages"]:
        return None
    return stage_chart(scores["stages"], scores.get("confidence", 0.95), summary["submission"]["stage"],
                       summary.get("replicates"))


def write_summary(files: dict, stage: str, reason: str, summary_path, start_page_path, answers_path,
                  recipe: dict | None = None, cards_folder=None, evaluation_path=None) -> dict:
    """The rule's job: summary.json (the facts, with the files they came from), the report's first page
    (reStructuredText) and its per-task answers page (HTML); with `cards_folder` and `evaluation_path`, the
    data cards and the evaluation as HTML pages (tunesmith.evaluation.pages)."""
    from tunesmith.evaluation.answers import answers_page

    summary = collect(files, stage, reason, recipe)
    with atomic_path(start_page_path) as tmp:
        Path(tmp).write_text(start_page(summary, chart_of(summary)), encoding="utf-8")
    if cards_folder is not None:
        write_pages(files, summary, cards_folder, evaluation_path)
    with atomic_path(answers_path) as tmp:
        Path(tmp).write_text(answers_page(files, stage), encoding="utf-8")
    write_json(summary_path, summary)
    return summary


def end_of_run(files: dict, stage: str, reason: str, summary_path) -> str:
    """What the end of every successful run prints, computed afresh from the files this recipe names."""
    return terminal(collect(files, stage, reason), holds_inputs(summary_path, summary_inputs(files)))
