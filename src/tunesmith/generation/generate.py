"""Batched generation over the task file, with the same template code as training.

Two backends: transformers (below) and vLLM (`generate.backend: vllm`, CUDA only), which share the
prompts, the stop handling, the guards and the task-order output.

Prompts are sorted by length and left-padded into batches (one prompt at a time is what makes a
notebook take 40 minutes); answers are cleaned of template markers, checked by the recipe's guards,
the failing ones regenerated a bounded number of times, and all are written in task-id order.
A stage's model is the base with the stage's one standalone adapter folder (`tunesmith.model.adapters`),
applied unmerged by both backends.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import torch

from tunesmith.data.normalize import normalize_text
from tunesmith.data.tasks import read_tasks
from tunesmith.generation.guards import output_problems
from tunesmith.jobs.atomic import write_jsonl
from tunesmith.jobs.progress import progress
from tunesmith.model.model import ModelError, device, load_model, load_tokenizer, read_metadata
from tunesmith.model.template import PromptTemplate

log = logging.getLogger(__name__)


def check_template(adapter: str | None, template: PromptTemplate, allow_mismatch: bool = False) -> None:
    """Refuse an adapter trained under another template: its answers would be silently worse. A
    continued-pretraining adapter saw raw text only, so it has no template to match."""
    if adapter is None:
        return
    metadata = read_metadata(adapter)
    if metadata.get("stage") == "cpt":
        return
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
    if settings.get("min_new_tokens"):  # the fallback for empty answers (answer_with_guards)
        eos = set(generation_eos_ids(model, tokenizer))
        generation.update(min_new_tokens=settings["min_new_tokens"],
                          suppress_tokens=[token for token in tokenizer.all_special_ids if token not in eos] or None)
    model.eval()
    batch_size = settings["batch_size"]
    for start in progress(range(0, len(order), batch_size), "generating", "batches"):
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


def generation_eos_ids(model, tokenizer) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS and the model's generation config's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return [token for token in {tokenizer.eos_token_id, *configured} if token is not None]


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
    if settings.get("min_new_tokens"):  # the fallback for empty answers: no EOS before this many tokens
        sampling.update(min_tokens=settings["min_new_tokens"])
    return sampling


def vllm_generator(base_path: str, base_section: dict, adapter: str | None, settings: dict, seed: int):
    """A `generate(prompts, settings, seed)` on a vLLM engine, serving the stage's standalone adapter
    (its whole chain in one) as a LoRA request on the unmerged base."""
    from vllm import SamplingParams

    llm, lora_request = vllm_engine(base_path, base_section, adapter, settings, seed)

    def generate(prompts: list[str], some_settings: dict, some_seed: int) -> list[str]:
        stop_strings = list(some_settings["stop_strings"])
        outputs = llm.generate(prompts, SamplingParams(**vllm_sampling(some_settings, some_seed)),
                               lora_request=lora_request, use_tqdm=False)
        if [output.prompt for output in outputs] != list(prompts):
            raise ModelError("vLLM returned its answers in another order than the prompts")
        return [cut_at_stop_strings(output.outputs[0].text, stop_strings) for output in outputs]

    return generate


def vllm_engine(base_path: str, base_section: dict, adapter: str | None, settings: dict, seed: int):
    """(vLLM engine on the unmerged base, the LoRA request of the stage's standalone adapter or None)."""
    from vllm import LLM

    quantization = {"none": None, "nf4": "bitsandbytes"}.get(base_section["quantization"], "unsupported")
    if quantization == "unsupported":
        raise ModelError(f"generate.backend vllm cannot load base_model.quantization "
                         f"'{base_section['quantization']}'; use nf4 or none, or generate.backend: transformers")
    lora_request, engine = None, {}
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        with open(os.path.join(adapter, "adapter_config.json"), encoding="utf-8") as handle:
            rank = json.load(handle)["r"]
        fitting = [size for size in VLLM_LORA_RANKS if size >= rank]
        if not fitting:
            raise ModelError(f"{adapter} has LoRA rank {rank} (the sum of its chain's ranks), above vLLM's largest "
                             f"{VLLM_LORA_RANKS[-1]}; lower sft.lora.r / dpo.lora.r or use generate.backend: transformers")
        lora_request = LoRARequest("adapter", 1, adapter)
        # vLLM accepts only these ranks for its LoRA buffers; the adapter's must fit.
        engine = dict(enable_lora=True, max_lora_rank=fitting[0], max_loras=1)
    llm = LLM(
        model=base_path,
        tokenizer=base_path,
        dtype=base_section["dtype"],
        quantization=quantization,
        trust_remote_code=base_section["trust_remote_code"],
        seed=seed,
        gpu_memory_utilization=settings["vllm"]["gpu_memory_utilization"],
        max_model_len=settings["vllm"]["max_model_len"],
        **engine,
    )
    return llm, lora_request


# An answer still empty after the guards' retries is generated again with end-of-sequence (and the
# other special tokens, which decode to nothing) blocked for its first tokens: a DPO model that learnt
# to stop at once still writes something. Each step blocks more tokens; the first non-empty answer wins.
FALLBACK_MIN_NEW_TOKENS = (4, 16)


@dataclass(frozen=True)
class Attempt:
    raw: str
    output: str  # cleaned of template markers, as it would be submitted
    problems: list[str]  # the guards' reasons against `output`; empty when it passes
    seed: int
    retry: bool  # generated with the guards' retry settings
    min_new_tokens: int = 0  # > 0: the empty-answer fallback, EOS blocked for this many tokens

    def record(self) -> dict:
        return {"output": self.output, "raw_output": self.raw, "problems": self.problems, "seed": self.seed,
                "retry": self.retry, "min_new_tokens": self.min_new_tokens}

    @property
    def rank(self) -> tuple[bool, int]:
        """Lower is better: any answer with text beats an empty one, then fewer problems."""
        return not self.output.strip(), len(self.problems)


@dataclass
class Answer:
    """Every attempt at one prompt, and the one submitted."""
    attempts: list[Attempt] = field(default_factory=list)
    kept: int = 0

    @property
    def chosen(self) -> Attempt:
        return self.attempts[self.kept]

    @property
    def raw(self) -> str:
        return self.chosen.raw

    @property
    def output(self) -> str:
        return self.chosen.output

    @property
    def problems(self) -> list[str]:
        return self.chosen.problems

    @property
    def fallback(self) -> str | None:
        """How the submitted answer was made when the model's own attempts were empty."""
        return "eos_blocked" if self.chosen.min_new_tokens else None

    @property
    def regenerated(self) -> list[list[str]]:
        """The problems of each attempt that was not submitted, in order."""
        return [attempt.problems for index, attempt in enumerate(self.attempts) if index != self.kept]

    def add(self, attempt: Attempt) -> None:
        """Record `attempt`; it replaces the kept one only when it ranks strictly better (text over
        none, then fewer problems), so a right greedy answer that a guard misjudges is never swapped
        for a sampled one that is no better."""
        self.attempts.append(attempt)
        if attempt.rank < self.chosen.rank:
            self.kept = len(self.attempts) - 1


def answer_with_guards(generate, prompts: list[str], settings: dict, seed: int, clean) -> list[Answer]:
    """Answer every prompt, then regenerate only the answers that still fail, all together, with the
    guards' retry settings, up to `retries` times, stopping early once nothing fails."""
    guards = settings["guards"]

    def attempt(raw: str, some_seed: int, retry: bool, min_new_tokens: int = 0) -> Attempt:
        output = clean(raw)
        return Attempt(raw, output, output_problems(output, guards), some_seed, retry, min_new_tokens)

    answers = [Answer([attempt(raw, seed, False)]) for raw in generate(prompts, settings, seed)]
    retry_settings = {**settings, **guards["retry"]}
    for number in range(1, guards["retries"] + 1):
        failing = [index for index, answer in enumerate(answers) if answer.problems]
        if not failing:
            break
        # Another seed per attempt, so a sampled retry does not repeat the attempt before it.
        fresh = generate([prompts[index] for index in failing], retry_settings, seed + number)
        for index, raw in zip(failing, fresh):
            answers[index].add(attempt(raw, seed + number, True))
    for min_new_tokens in FALLBACK_MIN_NEW_TOKENS:
        empty = [index for index, answer in enumerate(answers) if not answer.output.strip()]
        if not empty:
            break
        forced = generate([prompts[index] for index in empty], {**settings, "min_new_tokens": min_new_tokens}, seed)
        for index, raw in zip(empty, forced):
            answers[index].add(attempt(raw, seed, False, min_new_tokens))
    return answers


def log_guard_summary(answers: list[Answer]) -> None:
    retried = [answer for answer in answers if len(answer.attempts) > 1]
    reasons = Counter(reason for answer in retried for reason in answer.attempts[0].problems)
    replaced = sum(1 for answer in retried if answer.kept)
    still = Counter(reason for answer in answers for reason in answer.problems)
    log.info("regenerated %d of %d answers (first attempts failed for %s); %d replaced by a retry with fewer "
             "problems; %d still fail the guards (%s)", len(retried), len(answers), dict(reasons) or "nothing",
             replaced, sum(1 for answer in answers if answer.problems), dict(still) or "none")
    fallbacks = sum(1 for answer in answers if answer.fallback)
    empty = sum(1 for answer in answers if not answer.output.strip())
    if fallbacks or empty:
        log.warning("%d answers were empty after every attempt and were generated with end-of-sequence blocked "
                    "for their first tokens; %d are still empty", fallbacks, empty)


def generate_answers(
    base_path: str, base_section: dict, adapter: str | None, template_section: dict, settings: dict,
    tasks_path: str, seed: int, out_path: str, threads: int = 1, normalize_prompts: bool = False,
) -> int:
    """Answer every task with the base model and the stage's adapter folder (None for the base
    itself), unmerged, on transformers or vLLM; write JSONL in task-id order, each row with every
    attempt the guards asked for and which one was kept. Task inputs are prompted as written (cleaned
    of noise), or normalised with `normalize_prompts` (curate.normalize_training_text)."""
    torch.set_num_threads(threads)
    template = PromptTemplate(template_section)
    check_template(adapter, template, allow_mismatch=template_section["allow_mismatch"])
    check_backend(settings)
    tasks = read_tasks(tasks_path)
    tokenizer = load_tokenizer(base_path, base_section, padding_side="left")
    prompts = [template.render_prompt(normalize_text(task.input) if normalize_prompts else task.prompt_text, tokenizer)
               for task in tasks]
    if settings["backend"] == "vllm":
        generate = vllm_generator(base_path, base_section, adapter, settings, seed)
    else:
        model = load_model(base_path, base_section, adapter=adapter)

        def generate(some_prompts, some_settings, some_seed):
            return generate_batched(model, tokenizer, some_prompts, some_settings, some_seed)

    answers = answer_with_guards(generate, prompts, settings, seed, template.clean_output)
    log.info("generated %d answers on %s with %s", len(answers), device(), settings["backend"])
    log_guard_summary(answers)
    rows = (
        {"task_id": task.task_id, "input": task.input, "output": answer.output, "raw_output": answer.raw,
         "problems": answer.problems, "regenerated": answer.regenerated, "kept_attempt": answer.kept,
         "fallback": answer.fallback,
         "attempts": [attempt.record() for attempt in answer.attempts]}
        for task, answer in zip(tasks, answers)
    )
    return write_jsonl(out_path, rows)
