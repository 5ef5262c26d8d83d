"""The data card of a curated dataset: its data, read from the curation pipeline's tables (a dict,
written as JSON), rendered as Markdown, and its length histograms as a PNG.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import numpy

from tunesmith.data.curate_checks import Shape
from tunesmith.data.curate_pipeline import REASONS, SPLITS
from tunesmith.jobs.atomic import atomic_path

EXAMPLES_PER_REASON = 3
KEPT_EXAMPLES = 3
EXAMPLE_CHARS = 1000  # a 10 MB record would make the card unreadable
CARD_CLUSTERS = 100  # the largest near-duplicate clusters listed in the card (all are counted)
# The examples are drawn from `classified` alone; only theirs are read from the raw records or the texts. A
# quarantined record's raw text is read from the quarantine file just written (a row of it per quarantined
# record, in pos order), not from the whole ingested source: a join reads every row group of the file it scans.
EXAMPLES_SQL = f"""SELECT e.reason, q.source, q.file, q.line, e.detail, left(q.raw, {EXAMPLE_CHARS}) FROM (
  SELECT pos, outcome.reason AS reason, outcome.detail AS detail, row_number() OVER (ORDER BY pos) - 1 AS quarantine_row
  FROM classified WHERE outcome IS NOT NULL  -- QUALIFY filters after both windows: row numbers count every such row
  QUALIFY row_number() OVER (PARTITION BY outcome.reason ORDER BY uniform(pos, $seed, 'example')) <= $n
) e JOIN read_parquet($quarantine, file_row_number = true) q ON q.file_row_number = e.quarantine_row ORDER BY e.pos"""
KEPT_EXAMPLES_SQL = """SELECT source, file, line, split, {columns} FROM (SELECT pos, split FROM classified
WHERE outcome IS NULL ORDER BY uniform(pos, $seed, 'example') LIMIT $n) c JOIN keyed USING (pos)
ORDER BY uniform(pos, $seed, 'example')"""
CONTAMINATION_CARD_SQL = """SELECT d.source, d.file, d.line, c.task_id, round(c.overlap, 4) FROM contamination c
JOIN classified d USING (pos) WHERE d.outcome.reason = 'contaminated' ORDER BY pos, task_id"""
CLUSTERS_CARD_SQL = """SELECT c.cluster, count(*) OVER (PARTITION BY c.cluster) AS size, d.source, d.file, d.line,
  c.pos = c.label AS kept, round(c.jaccard, 4) FROM clusters c JOIN classified d USING (pos)
ORDER BY size DESC, c.cluster, c.pos"""


def card_data(con, role: str, shape: Shape, counts: dict, seed: int, quarantine_path) -> dict:
    """The card's data; `quarantine_path`: the quarantine file curation wrote (QUARANTINE_SQL's rows)."""
    examples: dict[str, list[dict]] = {reason: [] for reason in REASONS}
    for reason, source, file, line, detail, raw in con.execute(EXAMPLES_SQL, {
            "n": EXAMPLES_PER_REASON, "seed": seed, "quarantine": str(quarantine_path)}).fetchall():
        examples[reason].append({"source": source, "file": file, "line": line, "detail": detail, "raw": raw})
    kept_columns = [column.split(" AS ")[-1] for column in shape.kept_columns.split(", ")]
    kept_examples = [dict(zip(["source", "file", "line", "split", *kept_columns], row)) for row in con.execute(
        KEPT_EXAMPLES_SQL.format(columns=shape.kept_columns), {"n": KEPT_EXAMPLES, "seed": seed}).fetchall()]
    totals = sum((Counter(entry["quarantined"]) for entry in counts.values()), Counter())
    cluster_count, clusters = _clusters(con)
    return {
        "role": role,
        "sources": counts,
        "totals": {"rows_in": sum(entry["rows_in"] for entry in counts.values()),
                   "kept": sum(entry["kept"] for entry in counts.values()),
                   "written": {split: sum(entry["written"][split] for entry in counts.values()) for split in SPLITS},
                   "quarantined": {reason: totals[reason] for reason in REASONS if totals[reason]}},
        "contamination": [{"source": source, "file": file, "line": line, "task_id": task_id, "overlap": overlap}
                          for source, file, line, task_id, overlap in con.execute(CONTAMINATION_CARD_SQL).fetchall()],
        "near_duplicate_clusters": {"count": cluster_count, "listed": clusters},
        "examples": {reason: rows for reason, rows in examples.items() if rows},
        "kept_examples": kept_examples,
    }


def lengths(con, shape: Shape, kept: bool = True) -> dict:
    """Per text field of the kept rows (or of the dropped rows whose fields could be read and
    measured): characters and tokens, as numpy arrays; plus "total" tokens (the prompt and its
    longest answer: what a training row's max_length cuts)."""
    fields = [("prompt", "prompt_text")] + [(r if len(shape.responses) > 1 else "response", r)
                                            for r in shape.responses]
    selected = ", ".join(f"{column}_chars AS {name}_chars, {column}_tokens AS {name}_tokens" for name, column in fields)
    total = "prompt_text_tokens + greatest(" + ", ".join(f"{r}_tokens" for r in shape.responses) + ")"
    which = "outcome IS NULL" if kept else "outcome IS NOT NULL AND prompt_text_tokens IS NOT NULL"
    arrays = con.execute(f"SELECT {selected}, {total} AS total_tokens FROM classified JOIN keyed USING (pos) "
                         f"WHERE {which} AND {' AND '.join(f'{r}_tokens IS NOT NULL' for r in shape.responses)} "
                         "ORDER BY pos").fetchnumpy()
    measured = {name: {"chars": arrays[f"{name}_chars"], "tokens": arrays[f"{name}_tokens"]} for name, _ in fields}
    return measured | {"total": {"tokens": arrays["total_tokens"]}}


def summary(values) -> dict:
    if not len(values):
        return {"count": 0}
    quantiles = numpy.quantile(values, [0.5, 0.9, 0.99], method="lower")
    return {"count": int(len(values)), "min": int(values.min()), "p50": int(quantiles[0]), "p90": int(quantiles[1]),
            "p99": int(quantiles[2]), "max": int(values.max()), "mean": round(float(values.mean()), 2)}


def _clusters(con) -> tuple[int, list[dict]]:
    clusters: dict[int, dict] = {}
    for cluster, size, source, file, line, kept, jaccard in con.execute(CLUSTERS_CARD_SQL).fetchall():
        if cluster not in clusters and len(clusters) == CARD_CLUSTERS:
            continue
        entry = clusters.setdefault(cluster, {"cluster": cluster, "size": size, "kept": None, "members": []})
        row = {"source": source, "file": file, "line": line}
        if kept:
            entry["kept"] = row
        else:
            entry["members"].append({**row, "jaccard": jaccard})
    total = con.execute("SELECT count(DISTINCT cluster) FROM clusters").fetchone()[0]
    return total, list(clusters.values())




SNIPPET_CHARS = 300


def _snippet(text) -> str:
    text = "" if text is None else str(text)
    text = text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + " …"
    return text.replace("`", "ˋ")  # keep code spans and fences intact


def _verbatim(text) -> list[str]:
    """A list item's fenced block showing `text` exactly (whitespace, backticks, full-width forms), cut
    at EXAMPLE_CHARS: the fence is longer than any run of backticks inside."""
    text = "" if text is None else str(text)
    cut = text[:EXAMPLE_CHARS]
    longest = max((len(run) for run in re.findall("`+", cut)), default=0)
    fence = "`" * max(3, longest + 1)
    lines = [f"  {fence}text", *(f"  {line}" if line else "" for line in cut.split("\n")), f"  {fence}"]
    return lines + ([f"  … ({len(text) - len(cut)} more characters)"] if len(cut) < len(text) else [])


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
    counted = card.get("tokens", {})
    out += ["## Lengths of the kept rows", "",
            (f"Tokens are counted by the tokenizer {counted['tokenizer']}." if counted.get("counted_by") == "tokenizer"
             else "Tokens are estimated: one per Japanese character, one per 4 other non-space characters."
             + (f" ({counted['why']})" if counted.get("why") else "")), ""]
    if counted.get("max_length"):
        out += [f"{counted['kept_over_max_length']} kept rows have more tokens (prompt and longest answer) than the "
                f"training max_length {counted['max_length']}; training cuts or drops them.", ""]
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
    out += ["## Examples", "", "### Kept (random, seeded), as they will be trained", ""]
    for row in card["kept_examples"]:
        fields = {key: value for key, value in row.items() if key not in ("source", "file", "line", "split")}
        out += [f"- {_ref(row)} ({row['split']})", ""]
        for key, value in fields.items():
            out += [f"  {key}:", "", *_verbatim(value), ""]
    for reason, rows in card["examples"].items():
        out += [f"### Quarantined: {reason}", ""]
        for row in rows:
            out += [f"- {_ref(row)}" + (f": {_cell(row['detail'])}" if row["detail"] else ""), "", "  ```",
                    f"  {_snippet(row['raw'])}", "  ```", ""]
    return "\n".join(out)


def write_markdown(card: dict, path: str, lengths_image: str | None = None) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_markdown(card, lengths_image), encoding="utf-8")


def plot_lengths(kept: dict, dropped: dict, role: str, path: str, max_length: int | None = None,
                 counted_by: str = "estimated") -> None:
    """Histograms of the rows' lengths, kept and dropped on the same bins: one row of panels per text
    field (characters and tokens side by side), and the prompt with its longest answer in tokens
    with the training max_length marked: rows right of the line are cut or dropped in training."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(len(kept), 2, figsize=(9, 2.6 * len(kept)), squeeze=False)
    for row, (field, measures) in enumerate(kept.items()):
        for column in range(2):
            axis = axes[row][column]
            if column >= len(measures):
                axis.axis("off")
                continue
            measure = list(measures)[column]
            values, others = measures[measure], dropped.get(field, {}).get(measure, numpy.zeros(0))
            both = numpy.concatenate([values, others]) if len(others) else values
            if len(both):
                bins = numpy.histogram_bin_edges(both, bins=min(50, max(1, len(set(both.tolist())))))
                axis.hist([values, others], bins=bins, stacked=True, color=["#4c72b0", "#dd8452"],
                          label=[f"kept ({len(values)})", f"dropped ({len(others)})"])
                axis.legend(fontsize=7)
            what = "prompt + longest answer" if field == "total" else field
            if field == "total" and max_length:
                axis.axvline(max_length, color="#c44e52", linestyle="--")
                what += f" (max_length {max_length}: {int((values > max_length).sum())} kept rows over)"
            axis.set_title(f"{role} {what}: {measure}", fontsize=9)
            axis.set_xlabel("characters" if measure == "chars" else f"{counted_by} tokens", fontsize=8)
            axis.set_ylabel("rows", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    pyplot.close(figure)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
