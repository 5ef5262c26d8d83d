"""Batched generation against the course's one-prompt-at-a-time loop, on the same tiny model.

    python bench/generate.py

Answers the 100 tasks of data/tasks.jsonl greedily both ways in one run and checks that every answer
is the same string. Uses the workflow's base model (results/base_model/<key>) when the workflow has built it. Otherwise it builds
the recipe's tiny model untrained in a temporary folder (seconds) and adds seeded noise to its weights,
as tests/test_generate.py does: pretraining costs minutes on two shared cores, and a few dozen steps
only teach the model to answer "。" and stop, which would make equal answers prove nothing.

The two paths take turns, one batch of tasks at a time: the tasks are sorted by prompt length as
generate_batched sorts them, and each group of BATCH_SIZE is answered by the course loop and by
generate_batched (which makes exactly the batch a single call over all tasks would make). On a
shared machine a burst of someone else's load then slows both paths alike instead of one of them.
Ends with one line:
RESULT generate ratio=<sequential time / batched time> identical=<true|false>
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from _common import built, print_table  # noqa: E402
from tunesmith.config.recipe import load_recipe  # noqa: E402
from tunesmith.data.tasks import read_tasks  # noqa: E402
from tunesmith.generation.generate import generate_batched  # noqa: E402
from tunesmith.model.model import load_model, load_tokenizer  # noqa: E402
from tunesmith.model.template import PromptTemplate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
BATCH_SIZE = 16
MAX_NEW_TOKENS = 64
# The tiny model often emits EOS after a few tokens; batching would then have nothing to win and
# equal outputs would prove little. Both paths read this from the model's generation config.
MIN_NEW_TOKENS = 32
NOISE_SCALE = 0.1


def load_bench_model(recipe: dict, scratch: str):
    """The workflow's base model if built, else an untrained one with seeded noise; and a description."""
    section = recipe["base_model"]
    built_model = built(recipe, "base_model")
    if (built_model / "config.json").is_file() and list(built_model.glob("*.safetensors")):
        folder = str(built_model)
        return load_model(folder, section).eval(), load_tokenizer(folder, section), os.path.relpath(built_model, REPO)
    from tunesmith.model.base_model import pretrain_base, train_tokenizer

    texts = [str(REPO / source["path"]) for source in recipe["sources"] if source["role"] == "pretrain"]
    build = {**section["build"], "pretrain_steps": 0}
    folder = os.path.join(scratch, "model")
    with contextlib.redirect_stdout(io.StringIO()):
        train_tokenizer(texts, build["vocab_size"], os.path.join(scratch, "tokenizer"))
        pretrain_base(os.path.join(scratch, "tokenizer"), texts, build, recipe["seed"], folder, THREADS)
    model = load_model(folder, section).eval()
    generator = torch.Generator().manual_seed(recipe["seed"])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * NOISE_SCALE)
    description = f"untrained tiny model + noise {NOISE_SCALE} ({os.path.relpath(built_model, REPO)} is not built)"
    return model, load_tokenizer(folder, section), description


def course_loop(model, tokenizer, prompts: list[str], token_counts: list[int]) -> list[str]:
    """The course notebook's loop: one prompt, one generate call, one decode, per task. (The notebook
    encodes without BOS; here both paths follow tunesmith's convention, so the answers can be compared.)
    Appends the number of tokens generated for each prompt to `token_counts`."""
    answers = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, repetition_penalty=1.0,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = output[0, encoded["input_ids"].shape[1] :]
        token_counts.append(len(new_tokens))
        answers.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
    return answers


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def take_turns(model, tokenizer, prompts: list[str], settings: dict, seed: int, token_counts: list[int]):
    """Both paths over all prompts, one length-sorted batch at a time; answers in prompt order, and
    each path's total seconds."""
    lengths = [len(tokenizer(prompt).input_ids) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda index: (lengths[index], index))
    sequential, batched = [None] * len(prompts), [None] * len(prompts)
    sequential_seconds = batched_seconds = 0.0
    for start in range(0, len(order), BATCH_SIZE):
        indices = order[start : start + BATCH_SIZE]
        group = [prompts[index] for index in indices]
        one_by_one, seconds = timed(course_loop, model, tokenizer, group, token_counts)
        sequential_seconds += seconds
        together, seconds = timed(generate_batched, model, tokenizer, group, settings, seed)
        batched_seconds += seconds
        for index, one, other in zip(indices, one_by_one, together):
            sequential[index], batched[index] = one, other
    return sequential, sequential_seconds, batched, batched_seconds


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(THREADS)
    recipe = load_recipe(REPO / "recipes" / "default.yaml")
    settings = {**recipe["generate"], "batch_size": BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS,
                "do_sample": False, "repetition_penalty": 1.0, "stop_strings": []}
    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer, description = load_bench_model(recipe, scratch)
    model.generation_config.min_new_tokens = MIN_NEW_TOKENS
    template = PromptTemplate(recipe["template"])
    tasks = read_tasks(REPO / recipe["tasks"]["path"])
    prompts = [template.render_prompt(task.prompt_text, tokenizer) for task in tasks]

    course_loop(model, tokenizer, prompts[:2], [])  # warm-up, so neither path pays first-call costs
    token_counts: list[int] = []
    sequential, sequential_seconds, batched, batched_seconds = take_turns(
        model, tokenizer, prompts, settings, recipe["seed"], token_counts)

    identical = sequential == batched
    print(f"model: {description}, {model.num_parameters() / 1e6:.2f}M parameters, {THREADS} threads")
    print(f"tasks: {len(prompts)}, greedy, max_new_tokens={MAX_NEW_TOKENS}, min_new_tokens={MIN_NEW_TOKENS}")
    print(f"answers: {sum(token_counts) / len(token_counts):.1f} generated tokens and "
          f"{sum(map(len, sequential)) / len(sequential):.1f} characters on average, {len(set(sequential))} distinct")
    print_table(["path", "wall s", "tasks/s"], [
        [name, f"{seconds:.2f}", f"{len(prompts) / seconds:.2f}"]
        for name, seconds in (("course loop (one prompt at a time)", sequential_seconds),
                              (f"tunesmith batched (batch {BATCH_SIZE})", batched_seconds))
    ])
    if not identical:
        differing = [index for index, (one, other) in enumerate(zip(sequential, batched)) if one != other]
        print(f"{len(differing)} answers differ, first at task index {differing[0]}:")
        print(f"  course loop: {sequential[differing[0]]!r}\n  batched:     {batched[differing[0]]!r}")
    print(f"RESULT generate ratio={sequential_seconds / batched_seconds:.2f} identical={str(identical).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
