"""The data card of a curated dataset as Markdown, and its length histograms as a PNG.

`tunesmith.curate` builds the card (a dict, also written as JSON); this module only renders it.
"""

from __future__ import annotations

import io
from pathlib import Path

from tunesmith.atomic import atomic_path

SNIPPET_CHARS = 300


def _snippet(text) -> str:
    text = "" if text is None else str(text)
    text = text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + " …"
    return text.replace("`", "ˋ")  # keep code spans and fences intact


def _cell(text) -> str:
    return _snippet(text).replace("|", "\\|").replace("\n", "⏎")


def _ref(row: dict) -> str:
    return f"{row['source']} {Path(row['file']).name}:{row['line']}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(card: dict, lengths_image: str | None = None) -> str:
    """The card as a Markdown document (counts, lengths, clusters, contamination, examples)."""
    totals = card["totals"]
    reasons = list(totals["quarantined"])
    out = [f"# Data card: {card['role']}", "",
           f"{totals['rows_in']} records in, {totals['kept']} kept ({totals['written']['train']} train rows and "
           f"{totals['written']['validation']} validation rows written), "
           f"{sum(totals['quarantined'].values())} quarantined. Every record is either kept or quarantined, "
           "per source (checked when the files were written).", "", "## Counts per source", ""]
    out += _table(["source", "format", "style", "files", "weight", "max_rows", "in", "kept", "train", "validation",
                   *reasons],
                  [[source, entry["format"], entry["style"], entry["files"], entry["weight"], entry["max_rows"],
                    entry["rows_in"], entry["kept"], entry["written"]["train"], entry["written"]["validation"],
                    *(entry["quarantined"].get(reason, 0) for reason in reasons)]
                   for source, entry in card["sources"].items()])
    out += ["## Lengths of the kept rows", "",
            "Tokens are estimated: one per Japanese character, one per 4 other non-space characters.", ""]
    out += _table(["field", "measure", "count", "min", "p50", "p90", "p99", "max", "mean"],
                  [[field, measure, *(summary.get(key, "") for key in ("count", "min", "p50", "p90", "p99", "max",
                                                                       "mean"))]
                   for field, measures in card["lengths"].items() for measure, summary in measures.items()])
    if lengths_image:
        out += [f"![Length histograms]({lengths_image})", ""]
    clusters = card["near_duplicate_clusters"]
    out += ["## Near-duplicate clusters", "",
            f"{clusters['count']} clusters; the {len(clusters['listed'])} largest are listed. Each keeps its first row.",
            ""]
    out += _table(["cluster", "size", "kept", "quarantined (estimated Jaccard with the kept row)"],
                  [[entry["cluster"], entry["size"], _ref(entry["kept"]),
                    ", ".join(f"{_ref(member)} ({member['jaccard']:.2f})" for member in entry["members"])]
                   for entry in clusters["listed"]])
    out += ["## Contamination", "", f"{len(card['contamination'])} matches of a row with a task input.", ""]
    out += _table(["row", "task_id", "overlap"],
                  [[_ref(match), match["task_id"], f"{match['overlap']:.2f}"] for match in card["contamination"]])
    out += ["## Examples", "", "### Kept (random, seeded)", ""]
    for row in card["kept_examples"]:
        fields = {key: value for key, value in row.items() if key not in ("source", "file", "line", "split")}
        out += [f"- {_ref(row)} ({row['split']})", "", "  ```", *(f"  {key}: {_snippet(value)}"
                                                                    for key, value in fields.items()), "  ```", ""]
    for reason, rows in card["examples"].items():
        out += [f"### Quarantined: {reason}", ""]
        for row in rows:
            out += [f"- {_ref(row)}" + (f": {_cell(row['detail'])}" if row["detail"] else ""), "", "  ```",
                    f"  {_snippet(row['raw'])}", "  ```", ""]
    return "\n".join(out)


def write_markdown(card: dict, path: str, lengths_image: str | None = None) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_markdown(card, lengths_image), encoding="utf-8")


def plot_lengths(lengths: dict, role: str, path: str) -> None:
    """Histograms of the kept rows' lengths: one row of panels per text field, characters and
    estimated tokens side by side."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(len(lengths), 2, figsize=(9, 2.6 * len(lengths)), squeeze=False)
    for row, (field, measures) in enumerate(lengths.items()):
        for column, (measure, values) in enumerate(measures.items()):
            axis = axes[row][column]
            if len(values):
                axis.hist(values, bins=min(50, max(1, len(set(values.tolist())))), color="#4c72b0")
            axis.set_title(f"{role} {field}: {measure} ({len(values)} kept rows)", fontsize=9)
            axis.set_xlabel("characters" if measure == "chars" else "estimated tokens", fontsize=8)
            axis.set_ylabel("rows", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    pyplot.close(figure)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
