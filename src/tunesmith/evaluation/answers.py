"""The report's per-task page: every task with each scored stage's answer beside the reference answer
(exact match and chrF of each answer, the judge's grade and reason when there is one), grouped by the
task file's `family` field. A standalone HTML page (inline style, nothing fetched), which Snakemake's
report shows in a frame."""

from __future__ import annotations

import html

from tunesmith.data.tasks import load_references, read_task_families, read_tasks
from tunesmith.evaluation.evaluate import score
from tunesmith.generation.submission import read_generations
from tunesmith.jobs.atomic import read_jsonl


def reference_answers(path, tasks_path) -> dict[int, str]:
    """Reference outputs by task id (a references file may also hold rows with criteria alone)."""
    loaded = load_references(path, read_tasks(tasks_path))
    return {task_id: reference.output for task_id, reference in loaded.by_task.items() if reference.output}


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2937; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; table-layout: fixed; }
th, td { border: 1px solid #d1d5db; padding: .35rem .5rem; vertical-align: top; text-align: left; }
th { background: #f3f4f6; } td.id { width: 3rem; text-align: right; }
.text { white-space: pre-wrap; word-break: break-word; }
.exact { background: #ecfdf5; } .missed { background: #fef2f2; }
.meta { color: #4b5563; font-size: .85em; margin-top: .25rem; }
table.scores { width: auto; } nav a { margin-right: .75rem; }
fieldset { border: 1px solid #d1d5db; margin: .5rem 0 1rem; } fieldset label { margin-right: 1rem; }
"""


def regressions(stages: dict[str, dict[int, dict]]) -> dict[str, list[int]]:
    """Stage -> the tasks it got wrong that the stage before it (in build order) got right (exact match)."""
    names = list(stages)
    found = {}
    for before, stage in zip(names, names[1:]):
        found[stage] = sorted(task_id for task_id, row in stages[before].items()
                              if row.get("exact") and not stages[stage].get(task_id, {}).get("exact"))
    return found


def _regression_filter(stages: dict, lost: dict[str, list[int]]) -> list[str]:
    """Radio buttons (pure CSS, no script) that show only one stage's regressions, and their style."""
    if not lost:
        return []
    names = list(stages)
    style = "".join(f"#only-{stage}:checked ~ table tr.task:not(.lost-{stage}) {{ display: none; }}"
                    f"#only-{stage}:checked ~ h2, #only-{stage}:checked ~ table.scores {{ display: none; }}"
                    for stage in lost)
    buttons = ['<input type="radio" name="show" id="show-all" checked><label for="show-all">every task</label>']
    buttons += [f'<input type="radio" name="show" id="only-{stage}"><label for="only-{stage}">only what {stage} got '
                f"wrong that {names[names.index(stage) - 1]} got right ({len(ids)})</label>"
                for stage, ids in lost.items()]
    return [f"<style>{style}</style>", "<p><strong>Show:</strong></p>", *buttons]


def _answers_by_stage(files: dict, references: dict[int, str] | None) -> dict[str, dict[int, dict]]:
    stages = {}
    for stage, path in files["generations"].items():
        outputs = read_generations(path)
        rows = {task_id: {"answer": answer} for task_id, answer in outputs.items()}
        if references:
            for row in score(outputs, references)["per_task"]:
                rows.setdefault(row["task_id"], {"answer": ""}).update(exact=row["exact"], chrf=row["chrf"])
        if stage in files["judged"]:
            for row in read_jsonl(files["judged"][stage]):
                rows.setdefault(row["task_id"], {"answer": row["answer"]}).update(
                    grade=row["grade"], reason=row.get("reason"), status=row.get("status"))
        stages[stage] = rows
    return stages


def _answer_cell(row: dict | None) -> str:
    if row is None:
        return '<td class="missed"><div class="meta">no answer</div></td>'
    kind = {True: "exact", False: "missed"}.get(row.get("exact"), "")
    meta = []
    if "exact" in row:
        meta.append(("✓ exact" if row["exact"] else "✗") + f" · chrF {row['chrf']:.0f}")
    if "grade" in row or "status" in row:
        grade = "unparseable" if row.get("status") == "unparseable" else f"grade {row.get('grade')}"
        meta.append(grade + (f": {html.escape(str(row['reason']))}" if row.get("reason") else ""))
    meta_html = "".join(f'<div class="meta">{part}</div>' for part in meta)
    return f'<td class="{kind}"><div class="text">{html.escape(row["answer"])}</div>{meta_html}</td>'


def _family_scores(stages: dict, task_ids: list[int]) -> str:
    cells = []
    for stage, rows in stages.items():
        found = [rows[task_id] for task_id in task_ids if task_id in rows]
        parts = []
        if any("exact" in row for row in found):
            parts.append(f"{sum(row.get('exact', False) for row in found)}/{len(task_ids)} exact")
        grades = [row["grade"] for row in found if row.get("grade") is not None]
        if grades:
            parts.append(f"grade {sum(grades) / len(grades):.2f}")
        cells.append(f"<td>{html.escape(', '.join(parts) or '–')}</td>")
    return "".join(cells)


def answers_page(files: dict, submitted: str) -> str:
    """Every task with each stage's answer beside the reference (and the judge's grade and reason), by family."""
    tasks = read_tasks(files["tasks"])
    references = (reference_answers(files["references"], files["tasks"]) if files["references"] else None) or None
    stages = _answers_by_stage(files, references)
    families = read_task_families(files["tasks"])
    groups: dict[str, list[int]] = {}
    for task in tasks:
        groups.setdefault(families.get(task.task_id, "all"), []).append(task.task_id)
    inputs = {task.task_id: task.prompt_text for task in tasks}
    names = [stage + (" (submitted)" if stage == submitted else "") for stage in stages]
    lost = regressions(stages) if references else {}
    out = ["<!doctype html>", '<html lang="ja"><head><meta charset="utf-8"><title>Answers per task</title>',
           f"<style>{PAGE_STYLE}</style></head><body>", "<h1>Answers per task</h1>",
           f"<p>{len(tasks)} tasks{', grouped by family' if len(groups) > 1 else ''}. Each stage's answer beside "
           + ("the reference; green: exact match after normalisation, with the answer's chrF." if references
              else "the others (no references).")
           + (" The judge's grade (1–5) and reason under each answer." if files["judged"] else "") + "</p>"]
    if len(groups) > 1:
        out.append("<nav>" + "".join(f'<a href="#family-{index}">{html.escape(name)} ({len(ids)})</a>'
                                     for index, (name, ids) in enumerate(groups.items())) + "</nav>")
    out += _regression_filter(stages, lost)
    header = "<tr><th>task</th><th>input</th>" + ("<th>reference</th>" if references else "") + "".join(
        f"<th>{html.escape(name)}</th>" for name in names) + "</tr>"
    for index, (family, task_ids) in enumerate(groups.items()):
        out += [f'<h2 id="family-{index}">{html.escape(family)}: {len(task_ids)} tasks</h2>',
                '<table class="scores"><tr>' + "".join(f"<th>{html.escape(name)}</th>" for name in names) + "</tr>"
                f"<tr>{_family_scores(stages, task_ids)}</tr></table>", f"<table>{header}"]
        for task_id in task_ids:
            cells = [f'<td class="id">{task_id}</td>', f'<td><div class="text">{html.escape(inputs[task_id])}</div></td>']
            if references:
                cells.append(f'<td><div class="text">{html.escape(references.get(task_id, "–"))}</div></td>')
            cells += [_answer_cell(stages[stage].get(task_id)) for stage in stages]
            classes = " ".join(["task", *(f"lost-{stage}" for stage, ids in lost.items() if task_id in ids)])
            out.append(f'<tr class="{classes}">' + "".join(cells) + "</tr>")
        out.append("</table>")
    return "\n".join(out + ["</body></html>", ""])
