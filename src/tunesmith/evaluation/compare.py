"""`tunesmith compare A B`: what changed between two finished runs, row by row and score by score.

A and B are recipe files, sweep variant names (of `--recipe`) or result keys (the key of
results/evaluated/<key>/ or results/submissions/<key>/). Everything is read from what the runs left on
disk (nothing is trained or generated), in seconds:
- the data diff per curated dataset: the rows (source file and line) kept by one side only, with the
  reason the other side quarantined them, counted per reason and per source, with examples;
- the rows each training stage trained on (the adapters' tunesmith.json);
- score deltas per stage, per task family and overall (exact match, chrF, judge grade, preference
  accuracy), each with its paired test over the same tasks and a verdict at the evaluation's confidence
  (tunesmith.evaluation.significance);
- the answers that changed, regressions first.
When both sides were trained under several seeds (`repeats`), the scores are compared over the seeds
too (tunesmith.evaluation.replicated): each side's score pooled over its seeds, the interval of B − A from a
bootstrap that resamples each side's seeds and then the tasks (so it holds seed spread and task
sampling), the verdict from that interval, and each side's seed spread (sd, range) beside it; the
single-run table (each side's own evaluation) follows. When one side alone has replicates, the page
says so and compares the single runs.
The same text is printed and written as a Markdown page (results/compare/<A>_vs_<B>.md by default).
Over 350 lines because the page's sections (data, rows trained, scores, changed answers) read as one
story; the data diff (data_diff, trained) is the first piece to move out.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from tunesmith.config import plan
from tunesmith.config.recipe import load_recipe, variants
from tunesmith.data.normalize import match_key, normalize_text
from tunesmith.evaluation import replicated
from tunesmith.evaluation.paired import compare_answers, report_answers, report_references
from tunesmith.evaluation.significance import BETTER, WORSE, compare_binary, compare_grades, describe
from tunesmith.jobs.atomic import atomic_path
from tunesmith.jobs.manifest import index_manifests

KEY = re.compile(r"^[0-9a-f]{12}$")
EXAMPLES = 5  # rows shown per side of a data diff, and changed answers per kind
SHOWN = 100  # characters of a row or answer shown


class CompareError(ValueError):
    """A side that names no finished run."""


@dataclass
class Side:
    """One run: where its evaluation, curated data and adapters are."""
    name: str
    described: str
    evaluation: Path | None
    curated: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # role -> (kept, quarantine)
    adapters: dict[str, Path] = field(default_factory=dict)  # stage -> adapter folder
    submitted: str | None = None
    seeds: dict[int, Path] = field(default_factory=dict)  # seed -> evaluation, when it has seed replicates


# ---- finding the runs ----
def _from_recipe(name: str, recipe: dict, described: str, root: Path) -> Side:
    steps = plan.steps(recipe)
    side = Side(name, described, root / plan.folder_of(steps["evaluate"]) / "eval.json")
    for role in ("sft", "preference"):
        if f"curate_{role}" in steps:
            folder = root / plan.folder_of(steps[f"curate_{role}"])
            side.curated[role] = (folder / f"{role}.parquet", folder / f"{role}.quarantine.parquet")
    for stage in ("sft", "dpo"):
        if stage in steps:
            side.adapters[stage] = root / plan.folder_of(steps[stage]) / "adapter"
    choice = root / plan.folder_of(steps["submit"]) / "choice.json"
    side.submitted = json.loads(choice.read_text(encoding="utf-8"))["stage"] if choice.is_file() else None
    side.seeds = replicated.recipe_evaluations(recipe, root)
    return side


def _ancestors(start: str, root: Path) -> set[str]:
    """Every file the workflow's manifests say `start` was made from, transitively."""
    index, seen, queue = index_manifests(root), set(), [start]
    while queue:
        path = os.path.normpath(queue.pop())
        if path in seen:
            continue
        seen.add(path)
        manifest = index.get(path)
        queue += list((manifest or {}).get("inputs", {}))
    return seen


def _from_key(key: str, root: Path) -> Side:
    evaluation = root / "results" / "evaluated" / key / "eval.json"
    submission = root / "results" / "submissions" / key / "submission.jsonl"
    submitted = None
    if not evaluation.is_file() and submission.is_file():
        choice = json.loads((submission.parent / "choice.json").read_text(encoding="utf-8"))
        submitted = choice["stage"]
        found = [path for path in sorted((root / "results" / "evaluated").glob("*/eval.json"))
                 if choice["generations"] in json.loads(path.read_text(encoding="utf-8")).get("files", {})
                 .get("generations", {}).values()]
        if not found:
            raise CompareError(f"{key}: no evaluation under results/evaluated/ scored this submission's answers")
        evaluation = found[0]
    if not evaluation.is_file():
        raise CompareError(f"{key}: no results/evaluated/{key}/eval.json or results/submissions/{key}/ under {root}")
    side = Side(key, f"result key {key}", evaluation, submitted=submitted,
                seeds=replicated.key_evaluations(evaluation, root))
    for path in sorted(_ancestors(os.fspath(evaluation.relative_to(root)), root)):
        curated = re.match(r"^results/curated/[0-9a-f]{12}/(sft|preference)\.parquet$", path)
        adapter = re.match(r"^results/(sft|dpo)/[0-9a-f]{12}/adapter$", path)
        if curated:
            side.curated[curated[1]] = (root / path, root / path.replace(".parquet", ".quarantine.parquet"))
        elif adapter:
            side.adapters[adapter[1]] = root / path
    return side


def resolve(name: str, recipe_path: str | os.PathLike | None, root: Path) -> Side:
    """A side named by a recipe file, a sweep variant of `recipe_path`, or a result key."""
    if Path(name).is_file():
        return _from_recipe(name, load_recipe(name, check_files=False), f"recipe {name}", root)
    if KEY.match(name):
        return _from_key(name, root)
    if recipe_path is None:
        raise CompareError(f"{name}: not a recipe file, nor a result key (12 hex digits); a sweep variant "
                           "needs --recipe naming the recipe whose sweep it is")
    sweep = variants(load_recipe(recipe_path, check_files=False), str(recipe_path))
    if name not in sweep:
        known = ", ".join(sweep) or "none"
        raise CompareError(f"{name}: not a recipe file, a result key or a sweep variant of {recipe_path} "
                           f"(its variants: {known})")
    return _from_recipe(name, sweep[name], f"sweep variant {name} of {recipe_path}", root)


# ---- the data ----
def _short(text, limit: int = SHOWN) -> str:
    text = " ".join(str(text if text is not None else "").split())
    return text if len(text) <= limit else text[:limit] + "…"


def data_diff(first: tuple[Path, Path], second: tuple[Path, Path]) -> dict:
    """Rows (source, file, line) one side kept and the other did not, with the other side's reason."""
    con = duckdb.connect()
    sides = {}
    for label, (kept, quarantine) in (("a", first), ("b", second)):
        con.execute(f"CREATE TABLE kept_{label} AS SELECT DISTINCT source, file, line FROM "
                    f"read_parquet('{_sql(kept)}')")
        con.execute(f"CREATE TABLE quarantine_{label} AS SELECT source, file, line, reason, detail, raw FROM "
                    f"read_parquet('{_sql(quarantine)}')")
        sides[label] = con.execute(f"SELECT count(*) FROM kept_{label}").fetchall()[0][0]
    found = {"kept": sides}
    for only, other in (("a", "b"), ("b", "a")):
        rows = con.execute(
            f"SELECT k.source, k.file, k.line, q.reason, q.detail, q.raw FROM kept_{only} k "
            f"LEFT JOIN kept_{other} o USING (source, file, line) "
            f"LEFT JOIN quarantine_{other} q USING (source, file, line) "
            f"WHERE o.line IS NULL ORDER BY k.source, k.file, k.line").fetchall()
        entries = [{"source": source, "file": file, "line": line, "reason": reason or "not in the other run's sources",
                    "detail": detail, "raw": raw} for source, file, line, reason, detail, raw in rows]
        found[f"only_{only}"] = {
            "rows": len(entries),
            "by_reason": dict(Counter(entry["reason"] for entry in entries).most_common()),
            "by_source": dict(Counter(entry["source"] for entry in entries).most_common()),
            "examples": entries[:EXAMPLES],
            "all": entries,
        }
    con.close()
    return found


def _sql(path: Path) -> str:
    return os.fspath(path).replace("'", "''")


def trained(adapter: Path) -> dict | None:
    path = adapter / "tunesmith.json"
    if not path.is_file():
        return None
    metadata = json.loads(path.read_text(encoding="utf-8"))
    return {key: metadata[key] for key in ("rows", "rows_curated", "eval_rows", "method") if key in metadata}


# ---- the scores ----
def _families(report: dict, stage: str) -> dict[int, str]:
    return {row["task_id"]: row["family"] for row in report["per_task"].get(stage, []) if row.get("family")}


def score_diff(first: dict, second: dict, confidence: float, samples: int, seed: int,
               root: str | os.PathLike = ".") -> dict:
    """Per stage both runs scored: every measure overall and exact match (and judge grade) per family, paired.
    The reports' files are read relative to the workflow's working directory `root`."""
    references = report_references(first, root) or report_references(second, root)
    found = {}
    for stage in [stage for stage in first["stages"] if stage in second["stages"]]:
        answers = report_answers(first, stage, root), report_answers(second, stage, root)
        overall = compare_answers(*answers, references, confidence, samples, seed)
        families = {}
        family_of = _families(first, stage) or _families(second, stage)
        for family in sorted(set(family_of.values())):
            ids = sorted(task for task, name in family_of.items() if name == family)
            measures = {}
            if references and all("outputs" in side for side in answers):
                exact = [[match_key(normalize_text(side["outputs"].get(task, ""))) == match_key(
                    normalize_text(references.get(task, ""))) for task in ids if task in references]
                         for side in answers]
                measures["exact match"] = compare_binary(*exact, confidence, samples, seed)
            if all(side.get("grades") for side in answers):
                shared = [task for task in ids if all(task in side["grades"] for side in answers)]
                if shared:
                    measures["judge grade"] = compare_grades(*[[side["grades"][task] for task in shared]
                                                               for side in answers], confidence, samples, seed)
            families[family] = measures
        found[stage] = {"overall": overall, "families": families,
                        "changed": changed_answers(*answers, references)}
    return found


def changed_answers(first: dict, second: dict, references: dict | None) -> list[dict]:
    """Tasks whose answer differs, regressions first (right → wrong, or a lower grade), then improvements,
    then the rest."""
    outputs_a, outputs_b = first.get("outputs") or {}, second.get("outputs") or {}
    grades_a, grades_b = first.get("grades") or {}, second.get("grades") or {}
    found = []
    for task in sorted(set(outputs_a) | set(outputs_b)):
        a, b = outputs_a.get(task, ""), outputs_b.get(task, "")
        if normalize_text(a) == normalize_text(b):
            continue
        entry = {"task_id": task, "a": a, "b": b, "reference": (references or {}).get(task),
                 "grade_a": grades_a.get(task), "grade_b": grades_b.get(task)}
        change = 0
        if references and task in references:
            right = [match_key(normalize_text(text)) == match_key(normalize_text(references[task])) for text in (a, b)]
            entry["exact_a"], entry["exact_b"] = right
            change = int(right[1]) - int(right[0])
        if not change and entry["grade_a"] is not None and entry["grade_b"] is not None:
            change = (entry["grade_b"] > entry["grade_a"]) - (entry["grade_b"] < entry["grade_a"])
        entry["change"] = {-1: "regression", 1: "improvement", 0: "changed"}[change]
        found.append(entry)
    order = {"regression": 0, "improvement": 1, "changed": 2}
    return sorted(found, key=lambda entry: (order[entry["change"]], entry["task_id"]))


# ---- the page ----
def _table(header: list[str], rows: list[list]) -> list[str]:
    escape = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "|".join(":--" for _ in header) + "|",
            *("| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows), ""]


def _verdict_cell(result: dict) -> str:
    return {BETTER: "**better**", WORSE: "**worse**"}.get(result["verdict"], result["verdict"])


def _measure_row(label: str, name: str, result: dict) -> list:
    percent = name in ("exact match", "preference accuracy")
    scale, unit = (100, " pts") if percent else (1, "")
    value = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.2f}")
    interval = result["interval"]
    if not result["n"]:  # e.g. preference accuracy when the two runs hold out no pair in common
        return [label, name, 0, "–", "–", "–", "–", "–", "not compared: no item in common"]
    return [label, name, result["n"], value(result["a"]), value(result["b"]),
            f"{result['difference'] * scale:+.1f}{unit}",
            "–" if interval is None else f"{interval[0] * scale:+.1f} to {interval[1] * scale:+.1f}",
            f"{result['test']} p={result['p_value']:.3g}", _verdict_cell(result)]


def page(first: Side, second: Side, comparison: dict) -> str:
    lines = ["# Comparing A and B", "", f"- A: {first.described}", f"- B: {second.described}", ""]
    for side, label in ((first, "A"), (second, "B")):
        if side.submitted:
            lines.append(f"{label} submits stage {side.submitted}.")
    confidence = comparison["confidence"]
    lines += ["", "## Data: rows kept by one side only", ""]
    for role, diff in comparison["data"].items():
        lines += [f"### {role}", "", f"Kept rows: A {diff['kept']['a']}, B {diff['kept']['b']}.", ""]
        for only, other in (("a", "B"), ("b", "A")):
            found = diff[f"only_{only}"]
            lines.append(f"Kept only in {only.upper()}: {found['rows']} rows "
                         f"(the reason {other} quarantined them)." if found["rows"] else
                         f"Kept only in {only.upper()}: none.")
            if not found["rows"]:
                lines.append("")
                continue
            lines += ["", *_table(["reason", "rows"], list(found["by_reason"].items()))]
            lines += _table(["source", "rows"], list(found["by_source"].items()))
            lines += _table(["source", "file:line", f"{other}'s reason", "detail", "record"],
                            [[entry["source"], f"{entry['file']}:{entry['line']}", entry["reason"],
                              _short(entry["detail"], 60), _short(entry["raw"])] for entry in found["examples"]])
    if not comparison["data"]:
        lines += ["No curated datasets found for both sides.", ""]
    lines += ["## Rows trained per stage", ""]
    rows = [[stage, *(("–" if not counts else f"{counts.get('rows', '–')} of {counts.get('rows_curated', '–')} "
                       "curated") for counts in pair)] for stage, pair in comparison["trained"].items()]
    lines += _table(["stage", "A trained", "B trained"], rows) if rows else ["No adapters found.", ""]
    if comparison.get("seeds"):
        lines += ["## Scores over the seed replicates (B against A)", "",
                  *replicated.heading(comparison["seeds"], confidence),
                  *_table(replicated.HEADER, replicated.table_rows(comparison["seeds"]["scores"]))]
    lines += [f"## Scores{' of one run each' if comparison.get('seeds') else ''} (B against A, paired over the "
              "same tasks)", "", *([comparison["seed_note"], ""] if comparison.get("seed_note") else []),
              f"Verdicts at {confidence:.0%} confidence: better or worse only when the paired test's p-value is "
              f"below {1 - confidence:.2g}; intervals are paired bootstrap intervals of the difference.", ""]
    header = ["stage / family", "measure", "n", "A", "B", "B − A", f"{confidence:.0%} interval", "test", "verdict"]
    rows = []
    for stage, found in comparison["scores"].items():
        rows += [_measure_row(stage, name, result) for name, result in found["overall"].items()]
        rows += [_measure_row(f"{stage} / {family}", name, result)
                 for family, measures in found["families"].items() for name, result in measures.items()]
    lines += _table(header, rows) if rows else ["No stage was scored by both runs.", ""]
    lines += ["## Answers that changed (regressions first)", ""]
    for stage, found in comparison["scores"].items():
        changed = found["changed"]
        counts = Counter(entry["change"] for entry in changed)
        lines += [f"### {stage}: {len(changed)} answers changed ({counts['regression']} regressions, "
                  f"{counts['improvement']} improvements, {counts['changed']} other)", ""]
        shown = [entry for kind in ("regression", "improvement", "changed")
                 for entry in [item for item in changed if item["change"] == kind][:EXAMPLES]]
        if shown:
            lines += _table(["task", "change", "A", "B", "reference", "grades A→B"],
                            [[entry["task_id"], entry["change"], _short(entry["a"], 60), _short(entry["b"], 60),
                              _short(entry["reference"], 60),
                              "–" if entry["grade_a"] is None else f"{entry['grade_a']}→{entry['grade_b']}"]
                             for entry in shown])
    return "\n".join(lines).rstrip() + "\n"


def compare(first_name: str, second_name: str, recipe: str | os.PathLike | None = None,
            root: str | os.PathLike = ".", out_path: str | os.PathLike | None = None) -> tuple[str, dict, Path]:
    """Compare two finished runs; returns the page's text, the facts behind it, and where the page went."""
    root = Path(root)
    first, second = (resolve(os.fspath(name), recipe, root) for name in (first_name, second_name))
    for side in (first, second):
        if side.evaluation is None or not side.evaluation.is_file():
            raise CompareError(f"{side.described}: no evaluation at {side.evaluation}; build it first "
                               "(`snakemake --cores 1 --resources gpu=1 --config recipe=...`)")
    reports = [json.loads(side.evaluation.read_text(encoding="utf-8")) for side in (first, second)]
    confidence = reports[1].get("confidence", 0.95)
    samples = reports[1].get("bootstrap_samples", 1000)
    data = {}
    for role in [role for role in first.curated if role in second.curated]:
        if all(path.is_file() for side in (first, second) for path in side.curated[role]):
            data[role] = data_diff(first.curated[role], second.curated[role])
    facts = {
        "a": first.described, "b": second.described, "confidence": confidence, "data": data,
        "trained": {stage: (trained(first.adapters[stage]) if stage in first.adapters else None,
                            trained(second.adapters[stage]) if stage in second.adapters else None)
                    for stage in sorted(set(first.adapters) | set(second.adapters), key=["sft", "dpo"].index)},
        "scores": score_diff(*reports, confidence, samples, 0, root=root),
        "seed_note": replicated.fallback(first.seeds, second.seeds, first.evaluation, second.evaluation),
        "seeds": None if min(len(first.seeds), len(second.seeds)) < 2 else {
            "a": list(first.seeds), "b": list(second.seeds),
            "scores": replicated.seed_scores(first.seeds, second.seeds, confidence, samples, 0, root=root)},
    }
    text = page(first, second, facts)
    target = Path(out_path) if out_path else root / "results" / "compare" / f"{_slug(first.name)}_vs_{_slug(second.name)}.md"
    with atomic_path(target) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return text, facts, target


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=,_-]+", "_", Path(name).stem if name.endswith((".yaml", ".yml")) else name)


def summary_lines(facts: dict) -> list[str]:
    """The verdict lines alone (one per stage and measure), for the terminal's last lines: over the seed
    replicates when both sides have them."""
    seeds = facts.get("seeds")
    shown = f" (seeds {len(seeds['a'])} vs {len(seeds['b'])})" if seeds else ""
    return [f"{stage}{shown}: {describe(result)}" for stage, found in (seeds or facts)["scores"].items()
            for result in found["overall"].values()]
