"""The report's readable pages (tunesmith.evaluation.pages): data cards and the evaluation rendered as HTML."""

import json
import re
from pathlib import Path

from tunesmith.evaluation.pages import card_markdown, evaluation_page, write_pages

CARD = """# Data card: sft

## Near-duplicate clusters

| cluster | size | kept | quarantined (estimated Jaccard with the kept row) |
|---|---|---|---|
| 1 | 2 | sample_sft sft.jsonl:241 | sample_sft sft.jsonl:335 (0.90) |

![Length histograms](sft.lengths.png)

## Contamination

| row | task_id | overlap |
|---|---|---|
| sample_sft sft.jsonl:1197 | 89 | 1.00 |

### Quarantined: not_object

- sample_sft sft.jsonl:733: array

  ```
  ["<b>次の言葉</b>", "こあら"]
  ```
"""
PNG = b"\\x89PNG\\r\\n\\x1a\\n" + b"0" * 64


def files_of(tmp_path, scores_inputs=None):
    folder = tmp_path / "results/curated/abc"
    folder.mkdir(parents=True)
    (folder / "sft.card.json").write_text("{}")
    (folder / "sft.card.md").write_text(CARD, encoding="utf-8")
    (folder / "sft.lengths.png").write_bytes(PNG)
    return {"cards": {"sft": str(folder / "sft.card.json")}, "scores": str(tmp_path / "results/eval.json")}


def test_a_data_card_is_a_page_with_its_tables_examples_and_histogram(tmp_path):
    files = files_of(tmp_path)
    assert card_markdown(files["cards"]["sft"]).name == "sft.card.md"
    summary = {"scores": {"stages": {}, "from": None, "configured": None, "note": "No scores yet."}}
    written = write_pages(files, summary, tmp_path / "cards", tmp_path / "evaluation.html")
    assert written == [str(tmp_path / "cards/sft.html"), str(tmp_path / "evaluation.html")]
    page = (tmp_path / "cards/sft.html").read_text(encoding="utf-8")
    clusters = page.split("Near-duplicate clusters")[1].split("</table>")[0]
    assert "<td>sample_sft sft.jsonl:241</td>" in clusters and "<td>sample_sft sft.jsonl:335 (0.90)</td>" in clusters
    assert "<td>sample_sft sft.jsonl:1197</td>\n<td>89</td>" in page.split("Contamination")[1]
    # Examples are shown as text (markup in a row is escaped), the histogram is embedded in the page.
    assert "<pre><code>[&quot;&lt;b&gt;次の言葉&lt;/b&gt;&quot;" in page and "<b>次の言葉" not in page
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="Length histograms"', page)
    assert "No scores yet." in (tmp_path / "evaluation.html").read_text(encoding="utf-8")


def test_the_evaluation_page_renders_eval_md_and_the_seed_spread_and_names_both_preference_measures(tmp_path):
    files = files_of(tmp_path)
    Path(files["scores"]).write_text("{}")
    Path(files["scores"]).with_suffix(".md").write_text("| stage | exact match |\n|:--|--:|\n| sft | 65.0% |\n")
    (tmp_path / "results/replicates.md").write_text("| stage | measure | mean |\n|--|--|--|\n| sft | exact match | 61.0% |\n")
    files["replicates"] = {"path": str(tmp_path / "results/replicates.json"), "evaluations": []}
    summary = {"scores": {"stages": {"sft": {}}, "from": files["scores"], "configured": "references r.jsonl",
                          "note": None, "preference": {"sft": {"accuracy": 0.9}}},
               "replicates": json.loads('{"seeds": [42, 43]}')}
    page = evaluation_page(files, summary)
    assert re.search(r"<td[^>]*>sft</td>\n<td[^>]*>65.0%</td>", page), page
    assert "<h2>Seed replicates</h2>" in page and "<td>61.0%</td>" in page
    assert "reward accuracy" in page and "Preference accuracy (score table)" in page
    # eval.json of another recipe is not this one's: its table is not shown.
    summary["scores"].update({"from": None, "note": "results/eval.json holds the scores of another recipe"})
    assert "65.0%" not in evaluation_page(files, summary)
