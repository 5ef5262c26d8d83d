"""The end-of-run summary, the report's first page (tunesmith.evaluation.summary) and its per-task answers page
(tunesmith.evaluation.answers), on a small made-up run."""

import json
import re
from pathlib import Path

import pytest

from tunesmith.evaluation import significance
from tunesmith.evaluation.answers import answers_page
from tunesmith.evaluation.choice import submission_reason
from tunesmith.evaluation.paired import compare_answers
from tunesmith.evaluation.summary import collect, end_of_run, start_page, summary_inputs, terminal, write_summary

TASKS = [(0, "「かぜ」を2回繰り返してください。", "repetition", "かぜかぜ"),
         (1, "8と4の合計は？", "addition", "12"),
         (2, "「<b>」を2回繰り返してください。", "repetition", "<b><b>")]
ANSWERS = {"base": ["りんご", "10", "x"], "sft": ["かぜかぜ", "12", "<b><b>"], "dpo": ["かぜかぜ", "10", "<b><b>"]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A finished run's files as rules/common.smk names them (keys made up), in a working directory."""
    monkeypatch.chdir(tmp_path)
    tasks = write_jsonl(Path("data/tasks.jsonl"), [{"task_id": i, "input": text, "family": family}
                                                   for i, text, family, _ in TASKS])
    references = write_jsonl(Path("data/references.jsonl"), [{"task_id": i, "output": out} for i, _, _, out in TASKS])
    generations = {stage: write_jsonl(Path(f"results/generations/{key}/{stage}.jsonl"),
                                      [{"task_id": i, "output": answer} for i, answer in enumerate(ANSWERS[stage])])
                   for stage, key in (("base", "aaaaaaaaaaa1"), ("sft", "aaaaaaaaaaa2"), ("dpo", "aaaaaaaaaaa3"))}
    Path("submission.jsonl").write_text("".join(json.dumps({"task_id": i, "input": TASKS[i][1], "output": a},
                                                           ensure_ascii=False) + "\n"
                                                for i, a in enumerate(ANSWERS["dpo"])), encoding="utf-8")
    Path("submission.jsonl.manifest.json").write_text(json.dumps({"inputs": {str(generations["dpo"]): "sha256:0"}}))
    cards = {}
    for role, sources in (("sft", {"sample_sft": (120, 100, {"duplicate": 12, "contaminated": 5, "too_long": 2,
                                                                "blank_line": 1})}),
                          ("preference", {"sample_preference": (50, 48, {"chosen_equals_rejected": 2})})):
        cards[role] = Path(f"results/curated/bbbbbbbbbbb{len(cards)}/{role}.card.json")
        cards[role].parent.mkdir(parents=True)
        cards[role].write_text(json.dumps({"sources": {name: {"rows_in": rows_in, "kept": kept, "quarantined": q}
                                                       for name, (rows_in, kept, q) in sources.items()}}))
    adapters = {}
    for stage, counts in (("sft", {"rows": 95, "rows_curated": 95, "rows_dropped": {}, "rows_truncated": {},
                                   "eval_rows": 5}),
                          ("dpo", {"rows": 44, "rows_curated": 46, "rows_dropped": {"prompt_fills_max_length": 2},
                                   "rows_truncated": {}, "eval_rows": 2, "rows_seen": 24, "epochs_seen": 0.5455})):
        adapters[stage] = Path(f"results/{stage}/ccccccccccc{len(adapters)}/adapter")
        adapters[stage].mkdir(parents=True)
        (adapters[stage] / "tunesmith.json").write_text(json.dumps({"stage": stage, **counts}))
    files = {"submission": "submission.jsonl", "tasks": str(tasks), "references": str(references),
             "scores": "results/eval.json", "scored": sorted(map(str, generations.values())),
             "configured": f"references {references}", "generations": {k: str(v) for k, v in generations.items()},
             "judged": {}, "cards": {k: str(v) for k, v in cards.items()},
             "adapters": {k: str(v) for k, v in adapters.items()}}
    return files


def write_scores(files, inputs=None, stages=None, comparisons=None):
    stages = stages or {"base": {"exact_match": 0.0, "chrf": 3.1, "n": 3}, "sft": {"exact_match": 1.0, "chrf": 100.0,
                                                                                   "n": 3},
                        "dpo": {"exact_match": 2 / 3, "chrf": 80.0, "n": 3}}
    if comparisons is None:  # the paired tests of the fixture's own answers, as the evaluation makes them
        references = {i: out for i, _, _, out in TASKS}
        answers = {stage: {"outputs": dict(enumerate(ANSWERS[stage]))} for stage in stages}
        names = list(stages)
        comparisons = [{"a": a, "b": b, "measures": compare_answers(answers[a], answers[b], references, 0.95, 200, 0)}
                       for index, a in enumerate(names) for b in names[index + 1:]]
    Path(files["scores"]).parent.mkdir(parents=True, exist_ok=True)
    Path(files["scores"]).write_text(json.dumps({"stages": stages, "judge": None, "per_task": {},
                                                 "comparisons": comparisons,
                                                 "inputs": files["scored"] if inputs is None else inputs}))


def block(text: str, title: str) -> list[list[str]]:
    """The rows (split into words) of the terminal's table under the line starting with `title`."""
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("  ") or line.startswith("  Note:"):
            break
        rows.append(line.split())
    return rows


def dpo_summary(files):
    return collect(files, "dpo", submission_reason("dpo", "dpo", True))


def test_the_terminal_says_what_was_submitted_the_scores_the_rows_and_the_report(run):
    write_scores(run)
    text = terminal(dpo_summary(run), summary_current=True)
    lines = text.splitlines()
    assert lines[0] == "submission.jsonl is ready: 3 answers of stage dpo (submission.stage is dpo)."
    assert "Scores (references data/references.jsonl; from results/eval.json):" in text
    table = lines[lines.index("Scores (references data/references.jsonl; from results/eval.json):") + 1:][:4]
    assert table[0].split() == ["stage", "exact", "match", "chrF"]
    assert table[1].split() == ["base", "0.0%", "3.1"]
    assert table[3].split() == ["dpo", "(submitted)", "66.7%", "80.0"]
    # sft scores above the submitted dpo, but on three tasks (one differs) that is noise: no note.
    assert "Note:" not in text
    data = next(line for line in lines if "sample_sft" in line).split()
    assert data[:5] == ["sft", "sample_sft", "120", "100", "20"]
    assert "duplicate 12, contaminated 5, too_long 2, 1 more" in text
    trained = next(line for line in lines if line.strip().startswith("dpo") and "pairs" in line)
    assert "44 pairs" in trained and "2 dropped (prompt_fills_max_length)" in trained
    # max_steps stopped DPO half-way through its pairs: the rows available and the rows seen, not "44 trained".
    assert "24 of 44 pairs seen (0.55 epochs)" in trained
    assert "`snakemake --report report.html --cores 1` writes report.html" in text


def test_the_note_follows_the_paired_test_not_a_tie_break(run):
    # The case: every stage 0.0% exact, chrF orders them; nothing is better beyond noise.
    zero = [False] * 30
    tied = significance.compare_binary(zero, zero, 0.95, 200, 0)
    stages = {stage: {"exact_match": 0.0, "chrf": chrf, "n": 30, "exact_match_interval": [0.0, 0.1135]}
              for stage, chrf in (("base", 9.0), ("sft", 8.0), ("dpo", 7.0))}
    write_scores(run, stages=stages, comparisons=[{"a": "base", "b": "dpo", "measures": {"exact match": tied}},
                                                  {"a": "sft", "b": "dpo", "measures": {"exact match": tied}}])
    text = terminal(dpo_summary(run), summary_current=True)
    assert "Note:" not in text
    assert block(text, "Scores (")[0] == ["base", "0.0%", "(0.0%–11.3%)", "9.0"]
    # 12 tasks sft gets right and dpo does not, none the other way: beyond noise, with the test's figures.
    dpo, sft = [False] * 12 + [True] * 18, [True] * 30
    stages["sft"]["exact_match"], stages["dpo"]["exact_match"] = 1.0, 0.6
    better = significance.compare_binary(dpo, sft, 0.95, 200, 0)
    write_scores(run, stages=stages, comparisons=[{"a": "sft", "b": "dpo", "measures": {
        "exact match": significance.compare_binary(sft, dpo, 0.95, 200, 0)}}])
    text = terminal(dpo_summary(run), summary_current=True)
    assert (f"Note: sft scores above the submitted dpo beyond noise (dpo → sft: {significance.describe(better)}); "
            "`submission.stage: sft` would submit it.") in text
    assert "McNemar exact p=0.000488" in text  # 2 / 2**12


def test_answers_that_needed_the_empty_answer_fallback_are_counted(run):
    assert "end-of-sequence blocked" not in terminal(dpo_summary(run), summary_current=True)
    write_jsonl(Path(run["generations"]["dpo"]), [{"task_id": i, "output": answer, "fallback": "eos_blocked" if i else None}
                                                  for i, answer in enumerate(ANSWERS["dpo"])])
    summary = dpo_summary(run)
    assert summary["submission"]["fallbacks"] == 2
    lines = terminal(summary, summary_current=True).splitlines()
    assert lines[1].startswith("  2 of these answers were empty after every attempt") and "`fallback`" in lines[1]
    assert "2 of these answers were empty after every attempt" in start_page(summary)


def test_scores_of_another_recipe_are_never_shown(run):
    write_scores(run, inputs=["results/generations/ffffffffffff/dpo.jsonl"])
    run["references"] = None  # nothing to compute on the spot either
    text = terminal(dpo_summary(run), summary_current=False)
    assert "results/eval.json holds the scores of another recipe or of older answers, not shown" in text
    assert "`snakemake results/eval.json` scores this recipe's answers" in text
    assert "66.7%" not in text and "Scores (" not in text
    run["configured"] = None
    text = terminal(dpo_summary(run), summary_current=False)
    assert "No scores: this recipe has no judge (judge.backend) and no references (tasks.references)." in text
    assert "None" not in text
    Path(run["scores"]).unlink()
    run["configured"] = "judge m"
    assert "No scores yet: `snakemake results/eval.json` scores this recipe's answers (judge m)." in terminal(
        dpo_summary(run), summary_current=False)


def test_without_eval_json_exact_match_and_chrf_are_computed_from_the_answers_on_disk(run):
    Path(run["generations"]["base"]).unlink()  # `snakemake submission.jsonl` built only some stages
    text = terminal(dpo_summary(run), summary_current=False)
    assert "Scores (references data/references.jsonl; computed now from the answers on disk):" in text
    rows = block(text, "Scores (")
    # Wilson's 95% interval of 3 of 3 starts at 43.85%; chrF's bootstrap over the three tasks.
    assert rows[0] == ["sft", "100.0%", "(43.9%–100.0%)", "100.0", "(100.0–100.0)"]
    assert rows[1][:3] == ["dpo", "(submitted)", "66.7%"]
    assert "No scores yet: `snakemake results/eval.json`" in text
    assert "`snakemake --cores 1 --resources gpu=1` builds the scores and the report's pages" in text


def test_empty_placeholders_leave_the_summary_printing(run):
    """`snakemake --touch` over empty outputs (bench/dag.py builds its DAG so), or any file that is not what
    its rule writes: the end-of-run summary names the recipe's stage and leaves the data counts out."""
    choice = Path("results/choice.json")
    choice.parent.mkdir(parents=True, exist_ok=True)
    choice.write_text("")
    Path(run["cards"]["sft"]).write_text("")
    Path(run["cards"]["preference"]).write_text("[]")
    summary = collect({**run, "choice": str(choice)}, "dpo", "the recipe's stage")
    assert summary["submission"]["stage"] == "dpo" and summary["data"] == {"sft": None, "preference": None}
    assert "dpo" in terminal(summary, summary_current=False)
    choice.write_text(json.dumps({"stage": "sft", "reason": "best on validation"}))
    assert collect({**run, "choice": str(choice)}, "dpo", "the recipe's stage")["submission"]["stage"] == "sft"


def test_what_every_snakemake_start_imports_leaves_scipy_and_matplotlib_out():
    """rules/common.smk imports these at every `snakemake` start, a no-op `-n` included (bench/dag.py): scipy.stats
    and matplotlib (about 1 s together) belong to the jobs and summaries that score and draw; sacrebleu, the
    Markdown renderer and pyarrow's Parquet (~40 ms) to the jobs that compute chrF, write pages, export data."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys\n"
                             "from tunesmith import workflow\nfrom tunesmith.evaluation import summary\n"
                             "from tunesmith.jobs import logs\nfrom tunesmith.training import launcher\n"
                             "from tunesmith.evaluation.choice import submission_reason\n"  # the parse asks for it
                             "from tunesmith.hub.hub import MODEL_SECTIONS\n"  # and for this (publish.smk)
                             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                             "('scipy', 'matplotlib', 'sacrebleu', 'markdown_it', 'pyarrow')))"],
                            capture_output=True, text=True, check=True).stdout
    assert "scipy.stats" not in loaded and "matplotlib.pyplot" not in loaded, loaded
    assert "sacrebleu" not in loaded and "markdown_it" not in loaded and "pyarrow.parquet" not in loaded, loaded


def test_a_submission_of_another_recipe_is_said_to_be_one(run):
    Path("submission.jsonl.manifest.json").write_text(json.dumps({"inputs": {"results/generations/x/dpo.jsonl": ""}}))
    assert terminal(dpo_summary(run), True).startswith("submission.jsonl holds the answers of another recipe")
    Path("submission.jsonl").unlink()
    assert terminal(dpo_summary(run), True).startswith("submission.jsonl is not built yet")


def test_why_a_stage_was_submitted():
    assert submission_reason("sft", "dpo", False) == "submission.stage is dpo, but dpo.enabled is false: SFT's answers"
    assert submission_reason("sft", "sft", True) == "submission.stage is sft"


def test_judge_grades_lead_the_comparison(run):
    judge = lambda mean: {"mean": mean, "interval": [mean - 0.3, mean + 0.3], "unparseable": 1}  # noqa: E731
    write_scores(run, stages={"sft": {"exact_match": 1.0, "chrf": 90.0, "judge": judge(2.5)},
                              "dpo": {"exact_match": 0.5, "chrf": 80.0, "judge": judge(3.25)}})
    text = terminal(dpo_summary(run), True)
    header = next(line for line in text.splitlines() if line.strip().startswith("stage"))
    assert header.split() == ["stage", "exact", "match", "chrF", "judge", "(1–5)", "interval", "unparseable"]
    assert block(text, "Scores (")[1] == ["dpo", "(submitted)", "50.0%", "80.0", "3.25", "2.95–3.55", "1"]
    assert "Note:" not in text  # the judge ranks: dpo's 3.25 beats sft's 2.5, whatever exact match says


def beyond_noise():
    """A paired test saying sft beats dpo on exact match (12 tasks only sft gets right, none the other way)."""
    return [{"a": "sft", "b": "dpo", "measures": {"exact match": significance.compare_binary(
        [True] * 30, [False] * 12 + [True] * 18, 0.95, 200, 0)}}]


def test_the_start_page_is_restructuredtext_with_the_score_and_data_tables(run):
    from docutils.core import publish_parts

    write_scores(run, comparisons=beyond_noise())
    page = start_page(dpo_summary(run))
    # The link targets Snakemake's report defines for its categories and files.
    targets = "".join(f"\n.. _{name}: javascript:void(0)" for name in ("Evaluation", "Data cards", "Training curves",
                                                                     "answers.html"))
    body = publish_parts(page + "\n" + targets, writer="html", settings_overrides={"report_level": 2})["html_body"]
    assert "system-message" not in body, body
    assert '<th class="head">exact match</th>' in body
    assert "<td>66.7%</td>" in body and "<td>sample_sft</td>" in body
    # The setting to change is set as code, not as text holding literal backticks.
    assert re.search(r'<(tt|code) class="docutils literal">(<span class="pre">)?submission.stage:', body), body
    assert "`" not in body


def families_of(stages):
    """eval.json's per-family block for each stage: (exact match of repetition, of addition)."""
    return {stage: {"repetition": {"exact_match": rep, "chrf": 0.0, "n": 2},
                    "addition": {"exact_match": add, "chrf": 0.0, "n": 1}} for stage, (rep, add) in stages.items()}


def test_exact_match_per_family_and_preference_accuracy_are_on_the_terminal_and_the_first_page(run):
    from docutils.core import publish_parts

    families = families_of({"base": (0.0, 0.0), "sft": (1.0, 1.0), "dpo": (1.0, 0.0)})
    write_scores(run, stages={stage: {"exact_match": 0.5, "chrf": 1.0, "n": 3, "families": found}
                              for stage, found in families.items()})
    scores = json.loads(Path(run["scores"]).read_text())
    scores["preference"] = {"sft": {"pairs": 27, "accuracy": 0.7, "mean_margin": 1.0},
                            "dpo": {"pairs": 27, "accuracy": 0.9, "mean_margin": 2.0}}
    Path(run["scores"]).write_text(json.dumps(scores))
    text = terminal(dpo_summary(run), True)
    assert block(text, "Scores (")[:2] == [["base", "50.0%", "1.0", "–"], ["sft", "50.0%", "1.0", "70.0%"]]
    assert block(text, "Exact match per task family:") == [["repetition", "2", "0.0%", "100.0%", "100.0%"],
                                                           ["addition", "1", "0.0%", "100.0%", "0.0%"]]
    page = start_page(dpo_summary(run))
    body = publish_parts(page, writer="html", settings_overrides={"report_level": 2})["html_body"]
    assert '<th class="head">preference accuracy</th>' in body and "<td>90.0%</td>" in body
    assert "Exact match per task family" in body and "<td>repetition</td>" in body


def test_answers_on_disk_are_scored_per_family_without_eval_json(run):
    text = terminal(dpo_summary(run), summary_current=False)
    assert block(text, "Exact match per task family:") == [["addition", "1", "0.0%", "100.0%", "0.0%"],
                                                           ["repetition", "2", "0.0%", "100.0%", "100.0%"]]
    write_jsonl(Path(run["tasks"]), [{"task_id": i, "input": text} for i, text, _, _ in TASKS])
    assert "per task family" not in terminal(dpo_summary(run), summary_current=False)


def test_the_answers_page_puts_each_stage_beside_the_reference_by_family(run):
    judged = write_jsonl(Path("results/judged/ddddddddddd1/dpo.jsonl"),
                         [{"task_id": i, "answer": a, "grade": 5 - i, "reason": f"理由{i}", "status": "graded"}
                          for i, a in enumerate(ANSWERS["dpo"])])
    run["judged"] = {"dpo": str(judged)}
    page = answers_page(run, "dpo")
    families = re.findall(r'<h2 id="family-\d">([^<]+)</h2>', page)
    assert families == ["repetition: 2 tasks", "addition: 1 tasks"]
    assert "<th>base</th><th>sft</th><th>dpo (submitted)</th>" in page
    repetition = page.split("<h2")[1]
    assert "<td>0/2 exact</td><td>2/2 exact</td><td>2/2 exact, grade 4.00</td>" in repetition
    row = next(line for line in page.splitlines() if re.match(r'<tr class="[^"]*"><td class="id">2</td>', line))
    assert "「&lt;b&gt;」を2回" in row and "<b>" not in row  # task text is escaped, never markup
    assert row.count('class="exact"') == 2 and row.count('class="missed"') == 1
    assert "grade 3: 理由2" in row
    addition = next(line for line in page.splitlines() if re.match(r'<tr class="[^"]*"><td class="id">1</td>', line))
    assert addition.index("12") < addition.index("10")  # the reference, then the answers in stage order


def test_a_task_file_without_families_is_one_group(run):
    write_jsonl(Path(run["tasks"]), [{"task_id": i, "input": text} for i, text, _, _ in TASKS])
    page = answers_page(run, "dpo")
    assert "<nav>" not in page and re.findall(r'<h2 id="family-\d">([^<]+)</h2>', page) == ["all: 3 tasks"]


def test_the_rule_writes_its_pages_and_the_end_of_run_knows_they_are_this_recipes(run):
    write_scores(run)
    paths = ("results/report/summary.json", "results/report/summary.rst", "results/report/answers.html")
    write_summary(run, "dpo", "submission.stage is dpo", *paths)
    written = json.loads(Path(paths[0]).read_text())
    assert written["inputs"] == summary_inputs(run)
    assert "--cores 1` writes report.html: these tables" in end_of_run(run, "dpo", "x", paths[0])
    other = {**run, "generations": {**run["generations"], "dpo": "results/generations/eeeeeeeeeeee/dpo.jsonl"}}
    assert "builds the scores and the report's pages" in end_of_run(other, "dpo", "x", paths[0])


def test_the_answers_page_can_show_only_what_a_stage_got_wrong_that_the_stage_before_got_right(run):
    from tunesmith.evaluation.answers import regressions

    page = answers_page(run, "dpo")
    # sft answers all three tasks exactly; dpo loses the addition (task 1); base had nothing sft lost.
    rows = {int(found[2]): found[1].split() for found in re.finditer(r'<tr class="([^"]*)"><td class="id">(\d+)</td>',
                                                                        page)}
    assert rows == {0: ["task"], 2: ["task"], 1: ["task", "lost-dpo"]}
    assert regressions({"base": {1: {"exact": True}, 2: {"exact": False}}, "sft": {1: {"exact": False},
                        2: {"exact": True}}}) == {"sft": [1]}
    assert '<input type="radio" name="show" id="only-dpo">' in page
    assert "only what dpo got wrong that sft got right (1)" in page and "only what sft got wrong that base got right (0)" in page
    # Checked, the button hides every task row but the lost ones (the radio comes before the tables it filters).
    assert "#only-dpo:checked ~ table tr.task:not(.lost-dpo) { display: none; }" in page
    assert page.index('id="only-dpo"') < page.index('<table>')


def test_the_first_page_names_the_recipe_and_commit_and_shows_the_stage_chart(run):
    from docutils.core import publish_parts

    from tunesmith.config.recipe import validate_recipe
    from tunesmith.evaluation.summary import chart_of, key_settings

    write_scores(run)
    scores = json.loads(Path(run["scores"]).read_text())
    for stage, result in scores["stages"].items():
        result["exact_match_interval"] = [max(0.0, result["exact_match"] - 0.2), min(1.0, result["exact_match"] + 0.2)]
    Path(run["scores"]).write_text(json.dumps(scores))
    Path("submission.jsonl.manifest.json").write_text(json.dumps({"inputs": {run["generations"]["dpo"]: "sha256:0"},
                                                                  "git_commit": "0123456789abcdef+dirty"}))
    settings = key_settings(validate_recipe({"sources": [{"id": "s", "path": "data/tasks.jsonl", "role": "sft"},
                                                         {"id": "p", "path": "data/tasks.jsonl", "role": "preference"},
                                                         {"id": "t", "path": "data/tasks.jsonl", "format": "text",
                                                          "role": "pretrain"}],
                                             "tasks": {"path": "data/tasks.jsonl"}}))
    assert settings["dpo.beta"] == 0.1 and settings["seed"] == 42 and settings["submission.stage"] == "dpo"
    summary = collect(run, "dpo", "submission.stage is dpo",
                      {"path": "recipes/default.yaml", "settings": settings})
    chart = chart_of(summary)
    assert chart[:8] == b"\x89PNG\r\n\x1a\n" and len(chart) > 5000
    page = start_page(summary, chart)
    targets = "".join(f"\n.. _{name}: javascript:void(0)" for name in ("Evaluation", "Data cards", "Training curves",
                                                                     "answers.html"))
    body = publish_parts(page + "\n" + targets, writer="html", settings_overrides={"report_level": 2})["html_body"]
    assert "system-message" not in body, body
    text = re.sub(r"<[^>]+>", "", body)
    assert "Recipe: recipes/default.yaml, made at commit 0123456789ab+dirty" in text
    assert "dpo.beta: 0.1" in text and "submission.stage: &quot;dpo&quot;" in text
    assert '<img alt="each stage\'s scores with their intervals" src="data:image/png;base64,' in body


def test_the_chart_draws_each_stages_interval_and_the_seeds(run):
    from tunesmith.evaluation.stage_chart import panels

    drawn = panels({"sft": {"exact_match": 0.5, "exact_match_interval": [0.4, 0.6],
                            "judge": {"mean": 3.0, "interval": [2.8, 3.2]}}, "base": {"exact_match": 0.1}},
                   {"stages": {"sft": {"exact_match": {"per_seed": {"42": 0.5, "43": 0.56}}}}})
    assert [panel["title"] for panel in drawn] == ["exact match (%)", "judge mean grade (1–5)"]
    assert drawn[0]["intervals"] == {"sft": [0.4, 0.6], "base": None}
    assert drawn[0]["seeds"] == {"sft": [0.5, 0.56], "base": []} and drawn[1]["intervals"] == {"sft": [2.8, 3.2]}


def test_the_seed_spread_is_on_the_terminal_and_the_first_page_only_when_it_is_this_recipes(run):
    from docutils.core import publish_parts

    from tunesmith.evaluation.replicates import summarise_replicates

    write_scores(run)
    other = Path("results/replicates/seed=43/eval.json")
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps({"stages": {"sft": {"exact_match": 0.5, "chrf": 70.0}}}))
    summarise_replicates({42: run["scores"], 43: str(other)}, "results/replicates.json", "results/replicates.md")
    run["replicates"] = {"path": "results/replicates.json", "evaluations": [run["scores"], str(other)]}
    text = terminal(dpo_summary(run), True)
    rows = block(text, "Over 2 seeds (repeats; results/replicates.md):")
    assert ["sft", "exact", "match", "75.0%", "35.4", "pt", "50.0%–100.0%", "100.0%", "50.0%"] in rows
    body = publish_parts(start_page(dpo_summary(run)), writer="html", settings_overrides={"report_level": 5})["html_body"]
    assert "Over 2 seeds (repeats)" in body and "<td>35.4 pt</td>" in body
    # A replicates file made from other evaluations (another recipe's, older answers) is not shown.
    run["replicates"]["evaluations"] = [run["scores"], "results/replicates/seed=44/eval.json"]
    assert "seeds" not in terminal(dpo_summary(run), True) and dpo_summary(run)["replicates"] is None
