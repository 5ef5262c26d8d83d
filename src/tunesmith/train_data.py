"""The rows a training stage hands trl, and an honest count of what trl does with them.

SFT and DPO read the curated Parquet datasets (rows whose `split` is `validation` give the eval
metrics) and render them with the recipe's one template into prompt/completion text, so trl computes
the loss on responses only and generation later sees the same prompt text. trl then tokenises each
row with the base model's tokenizer and, at `max_length`, cuts the end of a long completion and
drops a row whose prompt alone fills `max_length` (nothing of its response would remain). Both are
measured here with the same tokenizer before training, so the adapter's metadata and the log say how
many rows trained and how many were dropped or truncated, and why. `long_prompts: truncate_left`
keeps such rows instead: the start of the prompt's input is cut (the template's markers stay) until
the prompt leaves room for the response.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

SPLITS = ("train", "validation")
PROMPT_FILLS = "prompt_fills_max_length"  # trl drops these: their response would be cut away entirely
RESPONSE_CUT = "response_cut_at_max_length"
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

    def __init__(self, template, tokenizer, max_length: int, long_prompts: str, packing: str | None = None):
        self.template, self.tokenizer, self.max_length = template, tokenizer, max_length
        self.long_prompts, self.packing = long_prompts, packing

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])  # BOS included, as trl tokenises

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

    def _account(self, prompt: str, completions: list[str], lengths: Lengths) -> None:
        prompt_tokens = self._length(prompt)
        longest = max(self._length(prompt + self._with_eos(completion)) for completion in completions)
        lengths.rows += 1
        if self.packing == "wrapped":  # one token stream cut into blocks: every token trains
            return
        if prompt_tokens >= self.max_length:
            lengths.dropped[PROMPT_FILLS] += 1
        elif longest > self.max_length:
            lengths.truncated[RESPONSE_CUT] += 1

    def _completion_tokens(self, completions: list[str]) -> int:
        return max(len(self.tokenizer(self._with_eos(completion), add_special_tokens=False)["input_ids"])
                   for completion in completions)

    def sft(self, row: dict, lengths: Lengths) -> dict:
        completion = self.template.render_completion(row["prompt"], row["response"], self.tokenizer)
        prompt = self._prompt(row["prompt"], self._completion_tokens([completion]), lengths)
        self._account(prompt, [completion], lengths)
        return {"prompt": prompt, "completion": completion}

    def preference(self, row: dict, lengths: Lengths) -> dict:
        chosen = self.template.render_completion(row["prompt"], row["chosen"], self.tokenizer)
        rejected = self.template.render_completion(row["prompt"], row["rejected"], self.tokenizer)
        prompt = self._prompt(row["prompt"], self._completion_tokens([chosen, rejected]), lengths)
        self._account(prompt, [chosen, rejected], lengths)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def rendered(rows, render) -> tuple[list[dict], Lengths]:
    """`render(row, lengths)` over rows, in order, with the measures of the split."""
    lengths = Lengths()
    return [render(row, lengths) for row in rows], lengths
