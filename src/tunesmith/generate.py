"""Batched generation over the task file, with the same template code as training.

Two backends: transformers (below) and vLLM (`generate.backend: vllm`, CUDA only), which share the
prompts, the stop handling, the guards and the task-order output.

Prompts are sorted by length and left-padded into batches (one prompt at a time is what makes a
notebook take 40 minutes); answers are cleaned of template markers, checked by the recipe's guards,
the failing ones regenerated a bounded number of times, and all are written in task-id order.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace

import torch
from tqdm import tqdm

from tunesmith.atomic import write_jsonl
from tunesmith.model import ModelError, device, load_model, load_tokenizer, read_metadata
from tunesmith.tasks import read_tasks
from tunesmith.template import PromptTemplate

log = logging.getLogger(__name__)


def check_template(adapters: list[str], template: PromptTemplate, allow_mismatch: bool = False) -> None:
    """Refuse adapters trained under another template: their answers would be silently worse. The
    continued-pretraining adapter saw raw text only, so it has no template to match."""
    for adapter in adapters:
        metadata = read_metadata(adapter)
        if metadata.get("stage") == "cpt":
            continue
        trained = metadata.get("template_hash")
        if trained != template.hash and not allow_mismatch:
            raise ModelError(
                f"{adapter} was trained with template {trained}, but the recipe's template is {template.hash}; "
                "rebuild the adapter or set template.allow_mismatch"
            )


def cut_at_stop_strings(text: str, stop_strings: list[str]) -> str:
    """The text before the first stop string. Generation halts on the token that completes one, and
    that token may carry more text after it."""
    return text[: min((text.find(stop) for stop in stop_strings if stop in text), default=len(text))]


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
    stop_strings = list(settings["stop_strings"])
    if stop_strings:
        generation.update(stop_strings=stop_strings, tokenizer=tokenizer)
    model.eval()
    batch_size = settings["batch_size"]
    for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch"):
        indices = order[start : start + batch_size]
        batch = tokenizer([prompts[index] for index in indices], return_tensors="pt", padding=True).to(model.device)
        torch.manual_seed(seed)  # each batch's samples depend on the seed, not on the batches before it
        with torch.inference_mode():
            output = model.generate(**batch, **generation)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        for index, text in zip(indices, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[index] = cut_at_stop_strings(text, stop_strings)
    tokenizer.padding_side = padding_side
    return answers


def cuda_available() -> bool:
    return torch.cuda.is_available()


def check_backend(settings: dict) -> None:
    """Refuse a backend that cannot run here, before anything is loaded."""
    if settings["backend"] != "vllm":
        return
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ModelError(
            "generate.backend is 'vllm', but the vllm package is not installed; install it "
            "(pip install vllm, on a CUDA machine) or set generate.backend: transformers"
        ) from None
    if not cuda_available():
        raise ModelError(
            "generate.backend is 'vllm', which needs a CUDA GPU, and none is present; "
            "set generate.backend: transformers to generate on CPU"
        )


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_sampling(settings: dict, seed: int) -> dict:
    """Our generation settings as vLLM SamplingParams keywords: greedy is temperature 0; a sampled
    answer is seeded per request, so it does not depend on how vLLM batches."""
    sampling = dict(
        max_tokens=settings["max_new_tokens"],
        repetition_penalty=settings["repetition_penalty"],  # the same multiplicative penalty as transformers'
        stop=list(settings["stop_strings"]),
        skip_special_tokens=True,
    )
    if settings["do_sample"]:
        sampling.update(temperature=settings["temperature"], top_p=settings["top_p"], seed=seed)
    else:
        sampling.update(temperature=0.0, top_p=1.0)
    return sampling


def vllm_generator(base_path: str, base_section: dict, adapters: list[str], settings: dict, seed: int,
                   work_dir: str):
    """A `generate(prompts, settings, seed)` on a vLLM engine. One adapter is served as a LoRA request;
    a chain (each adapter trained on the model merged with the ones before it) cannot be, so it is
    merged on CPU into a temporary model folder in `work_dir`, removed once the engine has loaded it."""
    from vllm import LLM, SamplingParams

    quantization = {"none": None, "nf4": "bitsandbytes"}.get(base_section["quantization"], "unsupported")
    if quantization == "unsupported":
        raise ModelError(f"generate.backend vllm cannot load base_model.quantization "
                         f"'{base_section['quantization']}'; use nf4 or none, or generate.backend: transformers")
    lora_request, engine = None, {}
    if len(adapters) == 1:
        from vllm.lora.request import LoRARequest

        with open(os.path.join(adapters[0], "adapter_config.json"), encoding="utf-8") as handle:
            rank = json.load(handle)["r"]
        lora_request = LoRARequest("adapter", 1, adapters[0])
        # vLLM accepts only these ranks for its LoRA buffers; the adapter's must fit.
        engine = dict(enable_lora=True, max_lora_rank=next(size for size in VLLM_LORA_RANKS if size >= rank),
                      max_loras=1)
    with tempfile.TemporaryDirectory(prefix=".merged-", dir=work_dir) as scratch:
        model_path = base_path
        if len(adapters) > 1:
            from tunesmith.model import export_merged

            model_path = os.path.join(scratch, "model")
            export_merged(base_path, base_section, adapters, model_path, on=torch.device("cpu"))
        llm = LLM(
            model=model_path,
            tokenizer=model_path,
            dtype=base_section["dtype"],
            quantization=quantization,
            trust_remote_code=base_section["trust_remote_code"],
            seed=seed,
            gpu_memory_utilization=settings["vllm"]["gpu_memory_utilization"],
            max_model_len=settings["vllm"]["max_model_len"],
            **engine,
        )

    def generate(prompts: list[str], some_settings: dict, some_seed: int) -> list[str]:
        stop_strings = list(some_settings["stop_strings"])
        outputs = llm.generate(prompts, SamplingParams(**vllm_sampling(some_settings, some_seed)),
                               lora_request=lora_request, use_tqdm=False)
        if [output.prompt for output in outputs] != list(prompts):
            raise ModelError("vLLM returned its answers in another order than the prompts")
        return [cut_at_stop_strings(output.outputs[0].text, stop_strings) for output in outputs]

    return generate


def repeated_ngram_count(text: str, size: int) -> int:
    """How often the most frequent n-gram of `size` characters occurs, overlaps included."""
    counts = Counter(text[start : start + size] for start in range(len(text) - size + 1))
    return max(counts.values(), default=0)


def output_problems(text: str, guards: dict) -> list[str]:
    """Reason codes for an answer that should not be submitted as it is; empty when it passes."""
    text = text.strip()
    if not text:
        return ["empty"]
    problems = []
    if len(text) < guards["min_chars"]:
        problems.append("too_short")
    if len(text) > guards["max_chars"]:
        problems.append("too_long")
    visible = "".join(text.split())
    if len(visible) >= guards["char_share_min_length"]:
        if Counter(visible).most_common(1)[0][1] > guards["max_char_share"] * len(visible):
            problems.append("degenerate_char")
    if repeated_ngram_count(text, guards["ngram_size"]) > guards["max_ngram_repeats"]:
        problems.append("repeated_ngram")
    return problems


@dataclass(frozen=True)
class Answer:
    raw: str
    output: str  # cleaned of template markers, as submitted
    problems: list[str]  # the guards' reasons against `output`; empty when it passes
    regenerated: list[list[str]] = field(default_factory=list)  # the problems of each attempt thrown away


def answer_with_guards(generate, prompts: list[str], settings: dict, seed: int, clean) -> list[Answer]:
    """Answer every prompt, then regenerate only the failing answers, all together, with the guards'
    retry settings, up to `retries` times; keep the first passing answer, else the last attempt."""
    guards = settings["guards"]

    def judged(raw: str) -> Answer:
        output = clean(raw)
        return Answer(raw, output, output_problems(output, guards))

    answers = [judged(raw) for raw in generate(prompts, settings, seed)]
    retry_settings = {**settings, **guards["retry"]}
    for attempt in range(1, guards["retries"] + 1):
        failing = [index for index, answer in enumerate(answers) if answer.problems]
        if not failing:
            break
        # Another seed per attempt, so a sampled retry does not repeat the attempt before it.
        fresh = generate([prompts[index] for index in failing], retry_settings, seed + attempt)
        for index, raw in zip(failing, fresh):
            before = answers[index]
            answers[index] = replace(judged(raw), regenerated=before.regenerated + [before.problems])
    return answers


def log_guard_summary(answers: list[Answer]) -> None:
    regenerated = [answer for answer in answers if answer.regenerated]
    reasons = Counter(reason for answer in regenerated for attempt in answer.regenerated for reason in attempt)
    still = Counter(reason for answer in answers for reason in answer.problems)
    log.info("regenerated %d of %d answers (%s); %d still fail the guards (%s)",
             len(regenerated), len(answers), dict(reasons) or "none",
             sum(1 for answer in answers if answer.problems), dict(still) or "none")


def generate_answers(
    base_path: str, base_section: dict, adapters: list[str], template_section: dict, settings: dict,
    tasks_path: str, seed: int, out_path: str, threads: int = 1,
) -> int:
    """Answer every task with the base model plus the adapter chain (merged in order, or served by
    vLLM with generate.backend vllm); write JSONL in task-id order."""
    torch.set_num_threads(threads)
    template = PromptTemplate(template_section)
    check_template(adapters, template, allow_mismatch=template_section["allow_mismatch"])
    check_backend(settings)
    tasks = read_tasks(tasks_path)
    tokenizer = load_tokenizer(base_path, base_section, padding_side="left")
    prompts = [template.render_prompt(task.prompt_text, tokenizer) for task in tasks]
    if settings["backend"] == "vllm":
        work_dir = os.path.dirname(os.path.abspath(out_path))
        os.makedirs(work_dir, exist_ok=True)
        generate = vllm_generator(base_path, base_section, adapters, settings, seed, work_dir)
    else:
        model = load_model(base_path, base_section, adapters=adapters)

        def generate(some_prompts, some_settings, some_seed):
            return generate_batched(model, tokenizer, some_prompts, some_settings, some_seed)

    answers = answer_with_guards(generate, prompts, settings, seed, template.clean_output)
    log.info("generated %d answers on %s with %s", len(answers), device(), settings["backend"])
    log_guard_summary(answers)
    rows = (
        {"task_id": task.task_id, "input": task.input, "output": answer.output, "raw_output": answer.raw,
         "regenerated": answer.regenerated, "problems": answer.problems}
        for task, answer in zip(tasks, answers)
    )
    return write_jsonl(out_path, rows)
