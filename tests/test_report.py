"""`snakemake --report` right after the README's first command: it builds, opens on the results in a
real headless browser (Chromium from Debian's packages), and works after `snakemake submission.jsonl`
alone. Uses the session's one finished default run (tests/conftest.py `default_run`)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, snakemake

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def in_default_run(*args, directory):
    """Snakemake with `args` in a run of the default recipe (`directory`)."""
    return snakemake("--directory", directory, *args, "--config", f"recipe={REPO / 'recipes/default.yaml'}", timeout=900)


def build_report(directory) -> str:
    result = in_default_run("--report", "report.html", "--cores", "1", directory=directory)
    assert result.returncode == 0, result.stderr[-3000:]
    return (Path(directory) / "report.html").read_text(encoding="utf-8")


def embedded(html: str, name: str):
    """A JSON value the report's page script defines (`var name = ...;`)."""
    return json.loads(re.findall(rf"var {name} = (.*);\n", html)[-1])  # the data follow the bundled scripts


def chromium(*args, profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium as root in a container: no sandbox, no GPU, nothing fetched on its own."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               "--virtual-time-budget=15000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_the_report_builds_right_after_the_readme_command_with_the_results_first(default_run):
    html = build_report(default_run)
    scores = json.loads((default_run / "results/eval.json").read_text(encoding="utf-8"))["stages"]
    first_page = embedded(html, "workflow_desc")
    # The first page: the submitted stage, the score table with this run's figures, the data-card counts.
    assert "Submitted:" in first_page and "<strong>dpo</strong>" in first_page
    table = first_page.split("Scores (references")[1].split("</table>")[0]
    for stage, result in scores.items():
        # Each score with its interval in brackets (tunesmith.evaluation.significance).
        assert f"<td>{stage}" in table and f"<td>{result['exact_match']:.1%} (" in table, stage
        assert f"<td>{result['chrf']:.1f} (" in table
    card = json.loads(next(default_run.glob("results/curated/*/sft.card.json")).read_text(encoding="utf-8"))
    sources = first_page.split("Data: records per source")[1].split("</table>")[0]
    for name, entry in card["sources"].items():
        assert f"<td>{name}</td>" in sources and f"<td>{entry['rows_in']}</td>" in sources
    assert "system-message" not in first_page, "reStructuredText errors on the first page"
    results = embedded(html, "results")
    names = {entry["name"] for entry in results.values()}
    assert {"answers.html", "eval.md", "lineage.txt", "manifests.json", "training_curves.png"} <= names, names
    assert {"sft.lengths.png", "preference.lengths.png"} <= names
    # The cards and the evaluation are pages to read in the report, beside their raw files.
    assert {"sft.html", "preference.html", "evaluation.html", "sft.card.md", "eval.json"} <= names
    assert "Recipe:" in first_page and "made at commit" in first_page and "data:image/png;base64," in first_page
    categories = embedded(html, "categories")
    assert {"Data cards", "Training curves", "Evaluation", "Manifests"} <= set(categories)


@pytest.mark.e2e
def test_the_report_works_after_the_submission_alone(default_run, tmp_path):
    """`snakemake submission.jsonl` builds no scores, lineage or summary: the report shows what there is."""
    work = tmp_path / "run"
    shutil.copytree(default_run, work, symlinks=True)
    for built in ("results/eval.json", "results/eval.md", "results/lineage.txt", "results/manifests.json",
                  "results/report", "report.html"):
        path = work / built
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    html = build_report(work)
    first_page = embedded(html, "workflow_desc")
    text = re.sub(r"<[^>]+>", "", first_page)  # docutils splits a literal into spans
    assert "No summary of this recipe" in text and "snakemake --cores 1 --resources gpu=1" in text
    assert "manifests (not built yet)" in first_page
    names = {entry["name"] for entry in embedded(html, "results").values()}
    assert "training_curves.png" in names and "eval.md" not in names and "lineage.txt" not in names
    assert "evaluation.html" not in names and "sft.html" not in names


@pytest.mark.e2e
def test_the_summary_printed_at_the_end_of_the_readme_command(default_run):
    console = (default_run / "console.txt").read_text(encoding="utf-8")
    end = console[console.rindex("submission.jsonl is ready"):]
    assert end.startswith("submission.jsonl is ready: 100 answers of stage dpo (submission.stage is dpo).")
    scores = json.loads((default_run / "results/eval.json").read_text(encoding="utf-8"))["stages"]
    for stage, result in scores.items():
        row = next(line.split() for line in end.splitlines() if line.split()[:1] == [stage])
        assert f"{result['exact_match']:.1%}" in row and f"{result['chrf']:.1f}" in row, (stage, row)
    assert "sample_sft" in end and "Trained:" in end
    assert "`snakemake --report report.html --cores 1` writes report.html" in end
    assert "\x1b[" not in end.split("submission.jsonl is ready")[1], "terminal escapes in the summary"


@pytest.mark.e2e
def test_the_readme_command_run_again_has_nothing_to_do(default_run):
    """The summary's pages are inputs of nothing and read only files: a finished run stays finished."""
    result = in_default_run("-n", "--cores", "1", "--resources", "gpu=1", directory=default_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)")
def test_the_report_opens_on_the_score_table_in_a_browser(default_run, tmp_path):
    report = default_run / "report.html"
    if not report.is_file():
        build_report(default_run)
    shots = Path(os.environ.get("TUNESMITH_SCREENSHOTS", tmp_path))  # set it to keep them for a human eye
    shots.mkdir(parents=True, exist_ok=True)
    dom = chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout.split('<div id="app">', 1)[1]  # what React drew, not the page's data scripts
    rendered = rendered.split("<script", 1)[0]
    assert "<table" in rendered and "exact match" in rendered and "chrF" in rendered, rendered[:3000]
    assert "Submitted:" in rendered
    shot = shots / "report.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1600,1100", report.as_uri(),
                     profile=tmp_path / "profile-shot")
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    answers = next(default_run.glob("results/report/answers.html"))
    page = chromium("--dump-dom", answers.as_uri(), profile=tmp_path / "profile-answers")
    assert page.returncode == 0 and "<h2" in page.stdout and "(submitted)" in page.stdout
    chromium(f"--screenshot={shots / 'answers.png'}", "--window-size=1400,1000", answers.as_uri(),
             profile=tmp_path / "profile-answers-shot")


# Measured in the page as laid out: the top of the first page's heading, "Submitted" line and score table,
# and how far the page scrolls (appended to a copy of the report; Chromium writes the DOM after its scripts ran).
MEASURE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const app = document.getElementById("app");
  const find = (selector, text) => [...app.querySelectorAll(selector)].find(node => node.textContent.includes(text));
  const top = node => node ? Math.round(node.getBoundingClientRect().top) : null;
  const heading = find("h1, h2", "Results");
  let scroller = heading;
  while (scroller && scroller !== document.body && getComputedStyle(scroller).overflowY !== "auto") {
    scroller = scroller.parentElement;
  }
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify({heading: top(heading), submitted: top(find("p", "Submitted:")),
    table: top(find("table", "exact match")), window: window.innerHeight,
    scrollTop: scroller ? scroller.scrollTop : null});
  document.body.appendChild(out);
}, 1000));
</script>"""


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)")
def test_the_first_page_starts_at_the_top_of_a_1440x900_window(default_run, tmp_path):
    """Snakemake centres the first page in a full-height box: a page taller than the window began above
    its top, out of the scrollbar's reach (the heading at -305 px). report/workflow.rst fixes that."""
    report = default_run / "report.html"
    if not report.is_file():
        build_report(default_run)
    html = report.read_text(encoding="utf-8")
    measured_page = tmp_path / "measured.html"
    end = html.rindex("</body>")
    measured_page.write_text(html[:end] + MEASURE + html[end:], encoding="utf-8")
    dom = chromium("--dump-dom", "--window-size=1440,900", measured_page.as_uri(), profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = json.loads(re.search(r'<pre id="measured">([^<]*)</pre>', dom.stdout)[1])
    assert found["scrollTop"] == 0, found
    assert 0 <= found["heading"] < found["submitted"] < found["table"] < found["window"], found
    shots = Path(os.environ.get("TUNESMITH_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    taken = chromium(f"--screenshot={shots / 'report-1440x900.png'}", "--window-size=1440,900", report.as_uri(),
                     profile=tmp_path / "profile-shot")
    assert taken.returncode == 0 and (shots / "report-1440x900.png").stat().st_size > 10_000, taken.stderr[-2000:]


# The README's figures are the ones a fresh run prints: its Measured table states each stage's scores
# as a range ("about"), and a fresh default run must fall inside it. Whoever changes what the default
# learns measures clean runs and writes the new ranges there.
SCORES_ROW = re.compile(r"^\| scores of the default run[^|]*\| (?P<figures>[^|]+) \|$", re.MULTILINE)
STAGE_RANGE = re.compile(r"(?P<stage>base|SFT|DPO) (?P<exact>[\d.]+–[\d.]+)% / (?P<chrf>[\d.]+–[\d.]+)")


def readme_score_ranges() -> dict[str, dict[str, tuple[float, float]]]:
    match = SCORES_ROW.search((REPO / "README.md").read_text(encoding="utf-8"))
    assert match, "README.md: no '| scores of the default run ... |' row in the Measured table"
    ranges = {}
    for found in STAGE_RANGE.finditer(match["figures"]):
        ranges[found["stage"].lower()] = {key: tuple(map(float, found[key].split("–"))) for key in ("exact", "chrf")}
    return ranges


def test_the_readme_states_a_score_range_for_every_stage():
    ranges = readme_score_ranges()
    assert set(ranges) == {"base", "sft", "dpo"}, ranges
    for stage, measures in ranges.items():
        for low, high in measures.values():
            assert low <= high, (stage, measures)


@pytest.mark.e2e
def test_a_fresh_default_run_scores_within_the_readmes_ranges(default_run):
    scores = json.loads((default_run / "results/eval.json").read_text(encoding="utf-8"))["stages"]
    for stage, measures in readme_score_ranges().items():
        exact, chrf = 100 * scores[stage]["exact_match"], scores[stage]["chrf"]
        assert measures["exact"][0] <= exact <= measures["exact"][1], (stage, "exact match %", exact, measures)
        assert measures["chrf"][0] <= chrf <= measures["chrf"][1], (stage, "chrF", chrf, measures)
