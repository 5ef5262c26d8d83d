"""KTO's training rows: single answers labelled desirable or undesirable, made from the curated preference pairs.

KTO learns from answers judged one at a time (good or bad), not from pairs. Curation writes pairs (prompt,
chosen, rejected, split); the unpair_preferences rule (beside curation, when `dpo.method` is kto) turns them
into the curated dataset KTO trains on, `results/curated/<key>/unpaired.parquet`, with its quarantine and card.
Each pair gives two answers, its chosen answer desirable and its rejected answer undesirable, both in the
pair's split. An answer several pairs share (the same prompt and answer) is one row: it is one piece of
evidence, and the first pair's split keeps it, so it never lands in both splits. An answer chosen in one pair
and rejected in another (a ranking A > B > C gives B both labels) is left out: KTO would be asked to raise and
to lower the same answer. Every answer is kept or quarantined with its reason, so 2 x pairs = kept +
quarantined. The rows are then shuffled with the recipe's seed: KTO trains in order (its KL estimate pairs
each answer with the next row's prompt in the batch), and a shuffled order mixes prompts and labels within
each batch instead of running all desirable answers first.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from tunesmith.jobs.atomic import atomic_path, write_json

log = logging.getLogger(__name__)

SHARED_ANSWER = "answer_shared_by_pairs"
BOTH_LABELS = "answer_both_chosen_and_rejected"


def unpaired_rows(pairs, seed: int) -> tuple[list[dict], list[dict], dict]:
    """(rows of prompt, completion, label, split; the answers left out, each with its `reason`; counts of pairs,
    desirable, undesirable and answers left out) from rows of prompt, chosen, rejected and (optionally) split."""
    labels: dict[tuple[str, str], set[bool]] = {}
    first: dict[tuple[str, str], dict] = {}
    left_out: list[dict] = []
    count = 0
    for pair in pairs:
        count += 1
        for answer, label in ((pair["chosen"], True), (pair["rejected"], False)):
            key = (pair["prompt"], answer)
            row = {"prompt": pair["prompt"], "completion": answer, "label": label,
                   **({"split": pair["split"]} if "split" in pair else {})}
            if key in first:
                left_out.append({**row, "reason": SHARED_ANSWER})
            else:
                first[key] = row
            labels.setdefault(key, set()).add(label)
    rows = []
    for key, row in first.items():
        if len(labels[key]) > 1:
            left_out.append({**row, "reason": BOTH_LABELS})
        else:
            rows.append(row)
    random.Random(seed).shuffle(rows)
    desirable = sum(row["label"] for row in rows)
    return rows, left_out, {"pairs": count, "desirable": desirable, "undesirable": len(rows) - desirable,
                            "answers_left_out": dict(Counter(row["reason"] for row in left_out))}


class UnpairError(ValueError):
    """The curated pairs give KTO nothing to learn from: no desirable or no undesirable training answer."""


def write_unpaired(pairs_path: str | os.PathLike, seed: int, kept_path: str | os.PathLike,
                   quarantine_path: str | os.PathLike, card_path: str | os.PathLike) -> dict:
    """The rule's job: the curated pairs at `pairs_path` as KTO's labelled answers (Parquet), the answers left out
    with their reason (Parquet) and the counts (JSON card, also returned). Raises UnpairError, naming the file,
    when the training split holds no desirable or no undesirable answer."""
    pairs = pq.read_table(pairs_path).to_pylist()
    rows, left_out, counts = unpaired_rows(pairs, seed)
    train = [row["label"] for row in rows if row.get("split", "train") == "train"]
    if not any(train) or all(train):
        missing = "desirable" if not any(train) else "undesirable"
        raise UnpairError(f"{pairs_path}: the {len(pairs)} curated pairs give no {missing} training answer for KTO "
                          f"(dpo.method: kto); answers left out: {counts['answers_left_out'] or 'none'}")
    split = pa.field("split", pa.string())
    columns = [pa.field("prompt", pa.string()), pa.field("completion", pa.string()), pa.field("label", pa.bool_())]
    with_split = any("split" in row for row in rows + left_out)
    kept_schema = pa.schema(columns + ([split] if with_split else []))
    quarantine_schema = pa.schema(columns + ([split] if with_split else []) + [pa.field("reason", pa.string())])
    for path, found, schema in ((kept_path, rows, kept_schema), (quarantine_path, left_out, quarantine_schema)):
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(found, schema=schema), tmp)
    splits = Counter(row.get("split", "train") for row in rows)
    card = {**counts, "answers_in": 2 * counts["pairs"], "kept": len(rows), "quarantined": counts["answers_left_out"],
            "splits": dict(sorted(splits.items())), "pairs_path": os.fspath(pairs_path)}
    write_json(card_path, card)
    log.info("kto: %d pairs gave %d desirable and %d undesirable answers (left out: %s)", counts["pairs"],
             counts["desirable"], counts["undesirable"], counts["answers_left_out"] or "none")
    return card
