"""Grading every answer of a stage with an LLM judge on the ELYZA-tasks-100 1–5 scale, cached.

One `judge_answers` job per compared stage reads that stage's generations, the task file and (when
there is one) the references file, renders the rubric for each answer (`tunesmith.judge.rubric`), and asks
the judge (`tunesmith.judge.judge_backends`) only for answers the cache (`tunesmith.judge.judge_cache`) has not
graded before. A reply without a readable grade is asked again, `parse_retries` times, with the bad
reply and a request for the JSON format; if it still has none, it is recorded as `unparseable` with
every reply, and counted by the evaluation, never turned into a grade.

The same job grades the answers of a reference grades file (`judge.reference_grades`, e.g. GPT-4's
grades of some answers), so the evaluation can say how far this judge is from that one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from tunesmith.data.normalize import normalize_text
from tunesmith.data.tasks import load_references, read_reference_grades, read_tasks
from tunesmith.generation.submission import read_generations
from tunesmith.jobs.atomic import write_jsonl
from tunesmith.jobs.progress import Progress
from tunesmith.judge.judge_backends import judge_identity, make_backend
from tunesmith.judge.judge_cache import GradeCache, entry_key, text_hash
from tunesmith.judge.rubric import RETRY_PROMPT, load_rubric, parse_reply

log = logging.getLogger(__name__)

UNPARSEABLE = "unparseable"
GRADED = "graded"


@dataclass(frozen=True)
class Item:
    task_id: int
    answer: str
    prompt: str
    key: str


def _items(tasks, references, answers: dict[int, str], rubric, identity: dict) -> list[Item]:
    items = []
    for task in tasks:
        if task.task_id not in answers:
            continue
        reference = references.get(task.task_id)
        fields = {"task_id": task.task_id, "input": task.prompt_text,
                  "reference": normalize_text(reference.output) if reference and reference.output else None,
                  "eval_aspect": normalize_text(reference.eval_aspect) if reference and reference.eval_aspect else None}
        answer = answers[task.task_id]
        prompt = rubric.render(input=fields["input"], answer=answer, reference=fields["reference"],
                               eval_aspect=fields["eval_aspect"])
        items.append(Item(task.task_id, answer, prompt, entry_key(identity, rubric.hash, fields, answer)))
    return items


def grade(items: list[Item], backend_factory, parse_retries: int, on_graded) -> int:
    """Ask the judge about every item, retrying unparseable replies; `on_graded(item, entry)` gets each
    final result as soon as it is known. Returns the number of requests sent (0 when nothing is asked)."""
    if not items:
        return 0
    backend = backend_factory()
    backend.check_reachable()
    replies: dict[int, list[str]] = {item.task_id: [] for item in items}
    conversations = {item.task_id: [{"role": "user", "content": item.prompt}] for item in items}
    todo = list(items)
    for attempt in range(parse_retries + 1):
        last = attempt == parse_retries
        done = set()

        def on_reply(index: int, reply: str) -> None:
            item = todo[index]
            replies[item.task_id].append(reply)
            verdict = parse_reply(reply)
            if verdict.grade is not None or last:
                done.add(item.task_id)
                on_graded(item, {"grade": verdict.grade, "reason": verdict.reason,
                                 "status": GRADED if verdict.grade is not None else UNPARSEABLE,
                                 "replies": replies[item.task_id]})

        backend.complete([conversations[item.task_id] for item in todo], on_reply)
        todo = [item for item in todo if item.task_id not in done]
        if not todo:
            break
        for item in todo:
            conversations[item.task_id] = [{"role": "user", "content": item.prompt},
                                           {"role": "assistant", "content": replies[item.task_id][-1]},
                                           {"role": "user", "content": RETRY_PROMPT}]
    return backend.requests


def judge_answers(
    answers_path: str, tasks_path: str, references_path: str | None, settings: dict, seed: int, out_path: str,
    cache_dir: str, answers_kind: str = "generations", threads: int = 1,
) -> dict:
    """Grade every answer of `answers_path` (a generations file, or with answers_kind "reference_grades"
    a file of already graded answers) and write one row per answer in task-id order:
    task_id, answer, grade (1–5, or null when unparseable), reason, status, attempts, reply."""
    tasks = read_tasks(tasks_path)
    references = load_references(references_path, tasks).by_task if references_path else {}
    earlier = {}
    if answers_kind == "reference_grades":
        earlier = read_reference_grades(answers_path, tasks)
        answers = {task_id: graded.output for task_id, graded in earlier.items()}
    else:
        answers = read_generations(answers_path)
    rubric = load_rubric(settings["prompt_template"])
    identity = judge_identity(settings)
    items = _items(tasks, references, answers, rubric, identity)
    cache = GradeCache(cache_dir)
    entries = {}
    for item in items:
        hit = cache.get(item.key)
        if hit is not None:
            entries[item.task_id] = hit
    pending = [item for item in items if item.task_id not in entries]
    log.info("%d answers to grade with %s %s (rubric %s): %d in the cache, %d to ask", len(items),
             identity["backend"], identity["model"], rubric.hash, len(entries), len(pending))

    graded = Progress("judge", len(pending), "answers graded", every=10)

    def on_graded(item: Item, entry: dict) -> None:
        graded.update()
        entry = {**entry, "task_id": item.task_id, "answer_sha256": text_hash(item.answer), "judge": identity,
                 "rubric": rubric.hash}
        cache.put(item.key, entry)
        entries[item.task_id] = entry

    work_dir = os.path.dirname(os.path.abspath(out_path))
    requests = grade(pending, lambda: make_backend(settings, seed, work_dir, threads), settings["parse_retries"], on_graded)
    graded.close()
    rows = []
    for item in items:
        entry = entries[item.task_id]
        row = {"task_id": item.task_id, "answer": item.answer, "grade": entry["grade"], "reason": entry["reason"],
               "status": entry["status"], "attempts": len(entry["replies"]), "reply": entry["replies"][-1]}
        if item.task_id in earlier:
            row["reference_grade"] = earlier[item.task_id].grade
        rows.append(row)
    write_jsonl(out_path, rows)
    unparseable = sum(row["status"] == UNPARSEABLE for row in rows)
    log.info("graded %d answers: %d from the cache, %d requests sent, %d unparseable", len(rows),
             len(items) - len(pending), requests, unparseable)
    return {"answers": len(rows), "cached": len(items) - len(pending), "requests": requests, "unparseable": unparseable}
