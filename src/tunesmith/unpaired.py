"""KTO's training rows: single answers labelled desirable or undesirable, made from the curated preference pairs.

KTO learns from answers judged one at a time (good or bad), not from pairs. Curation writes pairs (prompt,
chosen, rejected, split); each pair gives two rows here, its chosen answer desirable and its rejected answer
undesirable, both in the pair's split. An answer several pairs share (the same prompt and answer) is one row:
it is one piece of evidence, and the first pair's split keeps it, so it never lands in both splits. An answer
chosen in one pair and rejected in another (a ranking A > B > C gives B both labels) is left out: KTO would be
asked to raise and to lower the same answer. Both are counted. The rows are then shuffled with the recipe's
seed: KTO trains in order (its KL estimate pairs each answer with the next row's prompt in the batch), and a
shuffled order mixes prompts and labels within each batch instead of running all desirable answers first.
"""

from __future__ import annotations

import random
from collections import Counter

SHARED_ANSWER = "answer_shared_by_pairs"
BOTH_LABELS = "answer_both_chosen_and_rejected"


def unpaired_rows(pairs, seed: int) -> tuple[list[dict], dict]:
    """(rows of prompt, completion, label, split; counts of pairs, desirable, undesirable and answers left out)
    from rows of prompt, chosen, rejected and (optionally) split."""
    labels: dict[tuple[str, str], set[bool]] = {}
    first: dict[tuple[str, str], dict] = {}
    dropped: Counter = Counter()
    count = 0
    for pair in pairs:
        count += 1
        for answer, label in ((pair["chosen"], True), (pair["rejected"], False)):
            key = (pair["prompt"], answer)
            if key in first:
                dropped[SHARED_ANSWER] += 1
            else:
                first[key] = {"prompt": pair["prompt"], "completion": answer, "label": label,
                              **({"split": pair["split"]} if "split" in pair else {})}
            labels.setdefault(key, set()).add(label)
    rows = []
    for key, row in first.items():
        if len(labels[key]) > 1:
            dropped[BOTH_LABELS] += 1
        else:
            rows.append(row)
    random.Random(seed).shuffle(rows)
    desirable = sum(row["label"] for row in rows)
    return rows, {"pairs": count, "desirable": desirable, "undesirable": len(rows) - desirable,
                  "answers_left_out": dict(dropped)}
