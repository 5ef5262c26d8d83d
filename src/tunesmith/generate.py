"""Batched generation over the task file, with the same template code as training.

Prompts are sorted by length and left-padded into batches (one prompt at a time is what makes a
notebook take 40 minutes); answers are cleaned of template markers and written in task-id order.
"""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from tunesmith.atomic import write_jsonl
from tunesmith.model import ModelError, device, load_model, load_tokenizer, read_metadata
from tunesmith.tasks import read_tasks
from tunesmith.template import PromptTemplate

log = logging.getLogger(__name__)


def check_template(adapters: list[str], template: PromptTemplate, allow_mismatch: bool = False) -> None:
    """Refuse adapters trained under another template: their answers would be silently worse."""
    for adapter in adapters:
        trained = read_metadata(adapter).get("template_hash")
        if trained != template.hash and not allow_mismatch:
            raise ModelError(
                f"{adapter} was trained with template {trained}, but the recipe's template is {template.hash}; "
                "rebuild the adapter or set template.allow_mismatch"
            )


def generate_batched(model, tokenizer, prompts: list[str], settings: dict, seed: int) -> list[str]:
    """Generate one answer per prompt, in the order given; batches are built from length-sorted prompts."""
    # Left padding keeps every prompt's last token next to the first generated one.
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    lengths = [len(tokenizer(prompt).input_ids) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda index: (lengths[index], index))
    answers: list[str | None] = [None] * len(prompts)
    generation = dict(
        max_new_tokens=settings["max_new_tokens"],
        do_sample=settings["do_sample"],
        repetition_penalty=settings["repetition_penalty"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if settings["do_sample"]:
        generation.update(temperature=settings["temperature"], top_p=settings["top_p"])
    torch.manual_seed(seed)
    model.eval()
    batch_size = settings["batch_size"]
    for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch"):
        indices = order[start : start + batch_size]
        batch = tokenizer([prompts[index] for index in indices], return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            output = model.generate(**batch, **generation)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        for index, text in zip(indices, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[index] = text
    tokenizer.padding_side = padding_side
    return answers


def generate_answers(
    base_path: str, base_section: dict, adapters: list[str], template_section: dict, settings: dict,
    tasks_path: str, seed: int, out_path: str, threads: int = 1,
) -> int:
    """Answer every task with the base model plus the adapter chain; write JSONL in task-id order."""
    torch.set_num_threads(threads)
    template = PromptTemplate(template_section)
    check_template(adapters, template, allow_mismatch=template_section["allow_mismatch"])
    tasks = read_tasks(tasks_path)
    tokenizer = load_tokenizer(base_path, base_section, padding_side="left")
    model = load_model(base_path, base_section, adapters=adapters)
    prompts = [template.render_prompt(task.prompt_text, tokenizer) for task in tasks]
    raw = generate_batched(model, tokenizer, prompts, settings, seed)
    log.info("generated %d answers on %s", len(raw), device())
    rows = (
        {"task_id": task.task_id, "input": task.input, "output": template.clean_output(text), "raw_output": text}
        for task, text in zip(tasks, raw)
    )
    return write_jsonl(out_path, rows)
