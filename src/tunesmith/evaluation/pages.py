"""The report's readable pages: each data card and the evaluation as HTML (Markdown rendered with
markdown-it, tables included, the length histograms embedded), which Snakemake's report shows in a frame;
the raw Markdown, JSON and PNG files stay in the report as downloads beside them."""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

from tunesmith.jobs.atomic import atomic_path

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2937; max-width: 80rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; } h3 { font-size: 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #d1d5db; padding: .3rem .5rem; vertical-align: top; text-align: left; }
th { background: #f3f4f6; }
pre { background: #f8fafc; border: 1px solid #e5e7eb; padding: .4rem .6rem; white-space: pre-wrap;
      word-break: break-word; }
img { max-width: 100%; } .note { color: #4b5563; }
"""
IMAGE = re.compile(r'<img src="([^":]+\.png)"')


# The two measures a user sees side by side, named apart (the score table's and the DPO curve's).
PREFERENCE_MEASURES = (
    "Preference accuracy (score table): the share of held-out preference pairs whose chosen answer the stage's "
    "model alone finds more likely than the rejected one. The DPO curve's reward accuracy (Training curves) "
    "is trl's: the share of those pairs whose implicit reward, the log-probability ratio against the SFT "
    "reference model, favours the chosen answer, so it counts what DPO changed, not what the model prefers; "
    "a pair SFT already ranks right counts there only if DPO widened the gap.")


def _renderer():
    from markdown_it import MarkdownIt  # where a page is written: every workflow start imports this module

    return MarkdownIt("commonmark", {"html": False}).enable("table")


def _embed_images(body: str, folder: Path) -> str:
    """Relative PNGs beside the Markdown file as data URIs: the report shows the page from memory."""
    def inline(match):
        image = folder / match.group(1)
        if not image.is_file():
            return match.group(0)
        return f'<img src="data:image/png;base64,{base64.b64encode(image.read_bytes()).decode("ascii")}"'
    return IMAGE.sub(inline, body)


def markdown_html(path: str | os.PathLike) -> str:
    """A Markdown file as an HTML fragment, its relative images embedded."""
    path = Path(path)
    return _embed_images(_renderer().render(path.read_text(encoding="utf-8")), path.parent)


def page(title: str, body: str) -> str:
    return "\n".join(["<!doctype html>", '<html lang="ja"><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>", body,
                      "</body></html>", ""])


def _write(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def card_markdown(card_json: str | os.PathLike) -> Path:
    """The Markdown card curation writes beside its JSON card (`sft.card.json` -> `sft.card.md`)."""
    return Path(os.fspath(card_json).removesuffix(".json") + ".md")


def write_pages(files: dict, summary: dict, cards_folder, evaluation_path) -> list[str]:
    """One page per data card (`<role>.html` in `cards_folder`) and the evaluation page. Returns the paths."""
    written = []
    Path(cards_folder).mkdir(parents=True, exist_ok=True)
    for role, card in files["cards"].items():
        markdown = card_markdown(card)
        if not markdown.is_file():
            continue
        target = Path(cards_folder) / f"{role}.html"
        note = (f'<p class="note">Rendered from <code>{html.escape(os.fspath(markdown))}</code> (also in the report, '
                "as Markdown and JSON, with the length histograms as PNG).</p>")
        _write(target, page(f"Data card: {role}", note + markdown_html(markdown)))
        written.append(os.fspath(target))
    _write(evaluation_path, evaluation_page(files, summary))
    written.append(os.fspath(evaluation_path))
    return written


def evaluation_page(files: dict, summary: dict) -> str:
    """results/eval.md (when it scored this recipe's answers), the seeds' spread when there are replicates,
    and what the preference measures mean."""

    scores = summary["scores"]
    parts = ["<h1>Evaluation</h1>"]
    table = Path(os.fspath(files["scores"]).removesuffix(".json") + ".md")
    if scores["from"] == os.fspath(files["scores"]) and table.is_file():
        parts += [f'<p class="note">From <code>{html.escape(os.fspath(table))}</code> ({html.escape(scores["configured"])}); '
                  "every task's answers are on the page answers.html.</p>", markdown_html(table)]
    else:
        parts.append(f"<p>{html.escape(scores['note'] or 'No scores of this recipe.')}</p>")
    replicates = (files.get("replicates") or {}).get("path")
    if summary.get("replicates") and replicates:
        parts += ["<h2>Seed replicates</h2>", markdown_html(Path(replicates).with_suffix(".md"))]
    if scores.get("preference"):
        parts += ["<h2>Two preference measures</h2>", f"<p>{html.escape(PREFERENCE_MEASURES)}</p>"]
    return page("Evaluation", "\n".join(parts))
