"""The rows a training stage hands trl, and an honest count of what trl does with them.

SFT and the preference stage read the curated Parquet datasets (rows whose `split` is `validation` give the eval
metrics) and render them with the recipe's one template into prompt/completion text, so trl computes
the loss on responses only and generation later sees the same prompt text. trl then tokenises each
row with the base model's tokenizer and, at `max_length`, cuts the end of a long completion and
drops a row whose prompt alone fills `max_length` (nothing of its response would remain). Both are
measured here with the same tokenizer before training, so the adapter's metadata and the log say how
many rows trained and how many were dropped or truncated, and why. `long_prompts: truncate_left`
keeps such rows instead: the start of the prompt's input is cut (the template's markers stay) until
the prompt leaves room for the response.

The same tokenisation checks each row's token boundary (`check_boundaries`): trl finds the answer where the
tokenized prompt and the tokenized prompt + answer part, so a token spanning the end of the prompt and the
start of the answer (`回答\n` | answer) means training saw another context than generation will; and BOS
must be in each sequence exactly once (never, for a tokenizer that adds none).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
PROMPT_FILLS = "prompt_fills_max_length"  # trl drops these: their response would be cut away entirely
RESPONSE_CUT = "response_cut_at_max_length"
PROMPT_NOT_PREFIX = "prompt_not_a_token_prefix"  # the prompt's tokens are not the first tokens of prompt + answer
BOS_NOT_ONCE = "bos_not_once"
SHOWN = 5  # offending rows shown per check
PROMPT_CUT_LEFT = "prompt_cut_from_left"


def split_rows(rows, dataset_path: str = "dataset"):
    """(train, eval) rows by the curated `split` column: `validation` rows give the eval loss, `train`
    rows are trained on. Curation assigns each row's side by its content hash, so it never moves
    between runs or when other rows are added. Data without the column trains on every row."""
    if "split" not in rows.column_names:
        return rows, None
    sides = rows["split"]
    unknown = sorted(set(sides) - set(SPLITS))
    if unknown:
        raise ValueError(f"{dataset_path}: split column holds {unknown}; expected only {list(SPLITS)}")
    train = rows.select([index for index, side in enumerate(sides) if side == "train"])
    held = [index for index, side in enumerate(sides) if side == "validation"]
    return train, (rows.select(held) if held else None)


@dataclass
class Lengths:
    """What `max_length` does to one split's rows, measured with the training tokenizer."""
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)
    mismatched: int = 0  # rows failing a boundary check (check_boundaries)
    mismatches: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)  # (where, check, what differs) of the first few

    def kept(self) -> int:
        return self.rows - sum(self.dropped.values())

    def as_metadata(self, prefix: str, trained: int | None = None) -> dict:
        return {f"{prefix}rows": self.kept() if trained is None else trained, f"{prefix}rows_curated": self.rows,
                f"{prefix}rows_dropped": dict(self.dropped), f"{prefix}rows_truncated": dict(self.truncated)}

    def describe(self) -> str:
        parts = [f"{self.kept()} of {self.rows} rows train"]
        if self.dropped:
            parts.append("dropped: " + ", ".join(f"{count} {reason}" for reason, count in sorted(self.dropped.items())))
        if self.truncated:
            parts.append("truncated: " + ", ".join(f"{count} {reason}" for reason, count in
                                                   sorted(self.truncated.items())))
        return "; ".join(parts)


class Renderer:
    """Renders curated rows for trl and measures them, cutting long prompts from the left when asked."""

    def __init__(self, template, tokenizer, max_length: int, long_prompts: str, packing: str | None = None,
                 drop_here: bool = False):
        self.template, self.tokenizer, self.max_length = template, tokenizer, max_length
        self.long_prompts, self.packing = long_prompts, packing
        # Trainers that keep a row whose prompt fills max_length (with an empty answer) get it dropped here instead.
        self.drop_here = drop_here

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]  # BOS included, as trl tokenises

    def _length(self, text: str) -> int:
        return len(self._ids(text))

    def _bos_expected(self) -> int:
        """BOS tokens a sequence should hold: what the tokenizer adds to plain text (0 or 1)."""
        if not hasattr(self, "_bos"):
            bos = self.tokenizer.bos_token_id
            self._bos = int(bos is not None and self._ids("回答")[:1] == [bos])
        return self._bos

    def _check_boundary(self, prompt_ids: list[int], full: list[list[int]], lengths: Lengths, where: str) -> None:
        bos, found = self.tokenizer.bos_token_id, []
        for ids in full:
            if ids[:len(prompt_ids)] != prompt_ids:
                common = next((index for index, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), len(ids))
                pieces = self.tokenizer.convert_ids_to_tokens
                found.append((PROMPT_NOT_PREFIX, f"prompt ends {pieces(prompt_ids[common:])[:4]}, prompt + answer "
                                                 f"has {pieces(ids[common:common + 4])} there"))
            if bos is not None and ids.count(bos) != self._bos_expected():
                found.append((BOS_NOT_ONCE, f"{ids.count(bos)} BOS (id {bos}) where the tokenizer adds "
                                            f"{self._bos_expected()}"))
        if not found:
            return
        lengths.mismatched += 1
        for check, what in dict(found).items():
            lengths.mismatches[check] += 1
            if sum(1 for example in lengths.examples if example[1] == check) < SHOWN:
                lengths.examples.append((where, check, what))

    def _prompt(self, user_text: str, completion_tokens: int, lengths: Lengths) -> str:
        prompt = self.template.render_prompt(user_text, self.tokenizer)
        if self.long_prompts != "truncate_left" or self._length(prompt) + completion_tokens <= self.max_length:
            return prompt
        # Room for the whole response when it is short, else for half the window: the row keeps both.
        budget = self.max_length - min(completion_tokens, self.max_length // 2)
        low, high = 0, len(user_text)  # the fewest leading characters to cut so that the prompt fits
        while low < high:
            middle = (low + high) // 2
            if self._length(self.template.render_prompt(user_text[middle:], self.tokenizer)) <= budget:
                high = middle
            else:
                low = middle + 1
        lengths.truncated[PROMPT_CUT_LEFT] += 1
        return self.template.render_prompt(user_text[low:], self.tokenizer)

    def _with_eos(self, completion: str) -> str:
        eos = self.tokenizer.eos_token  # trl appends it to completions that lack it
        return completion if completion.endswith(eos) else completion + eos

    def _account(self, prompt: str, completions: list[str], lengths: Lengths, where: str) -> bool:
        """Count the row and check its token boundary; whether it is dropped."""
        prompt_ids = self._ids(prompt)
        full = [self._ids(prompt + self._with_eos(completion)) for completion in completions]
        self._check_boundary(prompt_ids, full, lengths, where)
        prompt_tokens, longest = len(prompt_ids), max(len(ids) for ids in full)
        lengths.rows += 1
        if self.packing == "wrapped":  # one token stream cut into blocks: every token trains
            return False
        if prompt_tokens >= self.max_length:
            lengths.dropped[PROMPT_FILLS] += 1
            return True
        if longest > self.max_length:
            lengths.truncated[RESPONSE_CUT] += 1
        return False

    def _completion_tokens(self, completions: list[str]) -> int:
        return max(len(self.tokenizer(self._with_eos(completion), add_special_tokens=False)["input_ids"])
                   for completion in completions)

    def sft(self, row: dict, lengths: Lengths) -> dict:
        completion = self.template.render_completion(row["prompt"], row["response"], self.tokenizer)
        prompt = self._prompt(row["prompt"], self._completion_tokens([completion]), lengths)
        self._account(prompt, [completion], lengths, _where(row))
        return {"prompt": prompt, "completion": completion}

    def preference(self, row: dict, lengths: Lengths) -> dict:
        chosen = self.template.render_completion(row["prompt"], row["chosen"], self.tokenizer)
        rejected = self.template.render_completion(row["prompt"], row["rejected"], self.tokenizer)
        prompt = self._prompt(row["prompt"], self._completion_tokens([chosen, rejected]), lengths)
        if self._account(prompt, [chosen, rejected], lengths, _where(row)) and self.drop_here:
            return None
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def unpaired(self, row: dict, lengths: Lengths) -> dict | None:
        """A single answer with its label (KTO; tunesmith.data.unpaired makes these rows from the pairs)."""
        completion = self.template.render_completion(row["prompt"], row["completion"], self.tokenizer)
        prompt = self._prompt(row["prompt"], self._completion_tokens([completion]), lengths)
        if self._account(prompt, [completion], lengths, _where(row)) and self.drop_here:
            return None
        return {"prompt": prompt, "completion": completion, "label": bool(row["label"])}


def _where(row: dict) -> str:
    """A curated row as a person finds it: its source and line (the id when those are missing)."""
    if row.get("source") is not None and row.get("line") is not None:
        return f"{row['source']} line {row['line']}"
    return str(row.get("id", "?"))[:16]


def check_boundaries(train: Lengths, held: Lengths | None, max_share: float, dataset_path: str) -> None:
    """Log the rows whose token boundary or BOS count is wrong (counted while rendering), and refuse to train when
    their share of all rows is above `max_share` (template.max_boundary_mismatch)."""
    parts = [lengths for lengths in (train, held) if lengths is not None]
    rows, mismatched = sum(part.rows for part in parts), sum(part.mismatched for part in parts)
    if not mismatched:
        return
    counts = sum((part.mismatches for part in parts), Counter())
    shown = "\n".join(f"  {where}: {check}: {what}" for part in parts for where, check, what in part.examples)
    summary = (f"{dataset_path}: {mismatched} of {rows} rows ({mismatched / rows:.1%}) tokenize inconsistently with "
               f"the template ({', '.join(f'{count} {check}' for check, count in sorted(counts.items()))}); "
               f"training and generation would see different tokens. First of them:\n{shown}")
    if mismatched / rows > max_share:
        raise ValueError(f"{summary}\nAbove template.max_boundary_mismatch ({max_share:g}): end the template's prompt "
                         "on a token boundary (e.g. a newline the tokenizer keeps apart), fix a chat template that "
                         "writes BOS, or raise template.max_boundary_mismatch to train anyway")
    log.warning("%s", summary)


def rendered(rows, render) -> tuple[list[dict], Lengths]:
    """`render(row, lengths)` over rows, in order, with the measures of the split; rows it drops are left out."""
    lengths = Lengths()
    kept = [render(row, lengths) for row in rows]
    return [row for row in kept if row is not None], lengths
