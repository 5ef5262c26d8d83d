"""Preference accuracy: how often a stage's model finds the chosen answer of a held-out preference pair
more likely than the rejected one.

It measures what DPO is meant to teach, on pairs it never trained on (the curated `validation` split),
under each stage's model alike, so SFT and DPO can be compared on the same pairs. A pair's score is
the summed log-probability of each answer's tokens (and the EOS that ends it) after the prompt. The
text is built and split the way trl's DPO trainer builds it: the rendered prompt, the rendered answer
with EOS appended, tokenized together, the answer starting where the tokens of prompt and prompt+answer
part.
"""

from __future__ import annotations

import logging
import os

import torch

from tunesmith.jobs.atomic import write_json
from tunesmith.model.model import load_model, load_tokenizer
from tunesmith.model.template import PromptTemplate

log = logging.getLogger(__name__)


def _common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def pair_tokens(tokenizer, prompt: str, chosen: str, rejected: str) -> list[tuple[list[int], int]]:
    """For chosen and rejected: the token ids of prompt + answer + EOS, and where the answer starts (the
    first position where the prompt's own tokens and either sequence differ, as trl's DPO trainer splits)."""
    eos = tokenizer.eos_token or ""
    prompt_ids = tokenizer(prompt).input_ids
    sequences = [tokenizer(prompt + (answer if answer.endswith(eos) else answer + eos)).input_ids
                 for answer in (chosen, rejected)]
    start = min(_common_prefix_length(prompt_ids, ids) for ids in sequences)
    return [(ids, start) for ids in sequences]


def answer_log_probs(model, sequences: list[tuple[list[int], int]], pad_id: int, batch_size: int = 32) -> list[float]:
    """Summed log-probability of the tokens from each sequence's start to its end, in the order given."""
    scores: list[float] = []
    model.eval()
    for first in range(0, len(sequences), batch_size):
        batch = sequences[first : first + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)  # positions whose token belongs to the answer
        for row, (ids, start) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            scored[row, start : len(ids)] = True
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits
        # The logits at position t predict the token at t + 1.
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1).cpu()
        token_log_probs = log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        scores += (token_log_probs * scored[:, 1:]).sum(dim=-1).tolist()
    return scores


def held_out_pairs(dataset_path: str | os.PathLike) -> list[dict]:
    """The curated preference rows of the validation split (prompt, chosen, rejected, line)."""
    import pyarrow.parquet as pq

    table = pq.read_table(dataset_path, columns=["prompt", "chosen", "rejected", "split", "source", "line"])
    rows = [row for row in table.to_pylist() if row["split"] == "validation"]
    if not rows:
        raise ValueError(f"{dataset_path}: no preference pairs in the validation split to measure on; "
                         "raise curate.validation_fraction")
    return rows


def compare_pairs(model, tokenizer, template: PromptTemplate, pairs: list[dict], batch_size: int = 32) -> dict:
    """Preference accuracy (share of pairs whose chosen answer is the more likely), the mean log-probability
    margin (chosen minus rejected) and each pair's two scores."""
    sequences = []
    for pair in pairs:
        prompt = template.render_prompt(pair["prompt"], tokenizer)
        chosen, rejected = (template.render_completion(pair["prompt"], pair[side], tokenizer)
                            for side in ("chosen", "rejected"))
        sequences += pair_tokens(tokenizer, prompt, chosen, rejected)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = answer_log_probs(model, sequences, pad_id, batch_size)
    chosen, rejected = scores[0::2], scores[1::2]
    per_pair = [{"source": pair["source"], "line": pair["line"], "prompt": pair["prompt"], "chosen": pair["chosen"],
                 "rejected": pair["rejected"], "chosen_log_prob": good, "rejected_log_prob": bad,
                 "prefers_chosen": good > bad}
                for pair, good, bad in zip(pairs, chosen, rejected)]
    return {
        "pairs": len(pairs),
        "accuracy": sum(pair["prefers_chosen"] for pair in per_pair) / len(per_pair),
        "mean_margin": sum(good - bad for good, bad in zip(chosen, rejected)) / len(per_pair),
        "per_pair": per_pair,
    }


def score_preferences(
    base_path: str, base_section: dict, adapter: str | None, template_section: dict, dataset_path: str,
    out_path: str, threads: int = 1,
) -> dict:
    """Preference accuracy of one stage's model (the base with the stage's standalone adapter folder) on
    the held-out preference pairs; written to `out_path` as JSON."""
    torch.set_num_threads(threads)
    template = PromptTemplate(template_section)
    tokenizer = load_tokenizer(base_path, base_section)
    model = load_model(base_path, base_section, adapter=adapter)
    result = compare_pairs(model, tokenizer, template, held_out_pairs(dataset_path))
    log.info("preference accuracy %.3f on %d held-out pairs (mean margin %.2f)", result["accuracy"],
             result["pairs"], result["mean_margin"])
    write_json(out_path, result)
    return result
