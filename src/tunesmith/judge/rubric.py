"""The judge's grading prompt and the reading of its replies.

The prompt is the ELYZA-tasks-100 rubric (problem, reference answer when there is one, the 1–5
criteria with the deductions for unnatural Japanese, partly false facts and over-cautious refusals,
the task's own `eval_aspect` when known, the answer), a Jinja template shipped as package data that
`judge.prompt_template` can replace. Replies are read robustly: a JSON object (bare, in a code fence,
or inside prose), else a grade written in free text ("評価: 4", "4点", "Score: 4/5", "[[4]]"); a reply
with none of these is unparseable, which the judge retries and then records as such (never a zero).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2
from jinja2 import meta

PACKAGED_TEMPLATE = "judge_prompt.jinja"
VARIABLES = {"input", "reference", "eval_aspect", "answer"}
REQUIRED_VARIABLES = {"input", "answer"}
# Sent after an unparseable reply. Part of the template hash: a change regrades.
RETRY_PROMPT = ('採点結果を読み取れませんでした。次の形式の JSON だけで、もう一度出力してください。\n'
                '{"reason": "採点の理由", "grade": 1から5の整数}')
GRADE_KEYS = ("grade", "score", "rating", "評価", "点数", "得点", "スコア")
REASON_KEYS = ("reason", "explanation", "理由", "根拠")
# Free-text grades, strongest first; the last match of the first pattern that matches counts, since
# judges tend to reason first and conclude with the grade.
FREE_TEXT_GRADES = [
    re.compile(r"\[\[\s*([1-5])\s*\]\]"),
    re.compile(r"(?:評価|点数|得点|スコア|採点|grade|score|rating)\s*(?:は|:|=|：)?\s*[\"'「]?\s*([1-5])(?![0-9.])",
               re.IGNORECASE),
    re.compile(r"(?<![0-9.\-−])([1-5])\s*(?:/\s*5|点(?!満点))"),
]


class RubricError(ValueError):
    """A grading template that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Rubric:
    text: str  # the Jinja source
    origin: str  # the file it came from, for messages

    @property
    def hash(self) -> str:
        """What the cache keys on: the template and the retry prompt."""
        return hashlib.sha256((self.text + "\0" + RETRY_PROMPT).encode("utf-8")).hexdigest()[:16]

    def render(self, input: str, answer: str, reference: str | None = None, eval_aspect: str | None = None) -> str:
        return _compiled(self.text).render(input=input, answer=answer, reference=reference or None,
                                           eval_aspect=eval_aspect or None).strip() + "\n"


@cache
def _compiled(text: str) -> jinja2.Template:
    # Not autoescaped: the prompt is plain text; keep_trailing_newline so answers end as written.
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(text)


def load_rubric(path: str | None = None) -> Rubric:
    """The shipped ELYZA rubric, or the recipe's replacement template file."""
    if path is None:
        text = resources.files("tunesmith").joinpath(PACKAGED_TEMPLATE).read_text(encoding="utf-8")
        return Rubric(text, f"tunesmith/{PACKAGED_TEMPLATE}")
    file = Path(path)
    if not file.is_file():
        raise RubricError(f"{path}: file not found")
    rubric = Rubric(file.read_text(encoding="utf-8"), str(path))
    _check(rubric)
    return rubric


def _check(rubric: Rubric) -> None:
    environment = jinja2.Environment()
    try:
        used = meta.find_undeclared_variables(environment.parse(rubric.text))
    except jinja2.TemplateSyntaxError as error:
        raise RubricError(f"{rubric.origin}:{error.lineno}: not a valid Jinja template ({error.message})") from None
    if unknown := used - VARIABLES:
        raise RubricError(f"{rubric.origin}: unknown variable(s) {', '.join(sorted(unknown))}; "
                          f"a grading template may use {', '.join(sorted(VARIABLES))}")
    if missing := REQUIRED_VARIABLES - used:
        raise RubricError(f"{rubric.origin}: never shows {', '.join('{{ ' + name + ' }}' for name in sorted(missing))}")


def check_judge_settings(judge: dict) -> list[str]:
    """Problems of a configured judge found before any job runs, each naming its recipe key."""
    problems = []
    if judge["prompt_template"]:
        try:
            load_rubric(judge["prompt_template"])
        except RubricError as error:
            problems.append(f"judge.prompt_template: {error}")
    if judge["backend"] == "openai":
        for key in ("base_url", "model"):
            if not judge["openai"][key]:
                problems.append(f"judge.openai.{key}: judge.backend openai needs it")
    elif not judge["local"]["path"]:
        problems.append(f"judge.local.path: judge.backend {judge['backend']} needs a model folder or hub id")
    return problems


@dataclass(frozen=True)
class Verdict:
    grade: int | None  # None: the reply held no grade
    reason: str


def _json_objects(text: str):
    """Every JSON object embedded in the text (code fences and prose around them ignored)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value


def _as_grade(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer() and 1 <= value <= 5:
        return int(value)
    if isinstance(value, str):
        found = re.fullmatch(r"\s*([1-5])(?:\.0)?\s*(?:点|/\s*5)?\s*", value)
        return int(found.group(1)) if found else None
    return None


def parse_reply(reply: str) -> Verdict:
    """The grade (1–5) and reason in a judge's reply; grade None when there is none to read."""
    text = unicodedata.normalize("NFKC", reply or "")  # full-width digits and colons
    for value in reversed(list(_json_objects(text))):
        lowered = {str(key).lower(): item for key, item in value.items()}
        grade = next((_as_grade(lowered[key]) for key in GRADE_KEYS if key in lowered), None)
        if grade is not None:
            reason = next((str(lowered[key]) for key in REASON_KEYS if key in lowered), "")
            return Verdict(grade, reason.strip())
    for pattern in FREE_TEXT_GRADES:
        found = pattern.findall(text)
        if found:
            return Verdict(int(found[-1]), reply.strip())
    return Verdict(None, reply.strip())
