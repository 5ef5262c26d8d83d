"""Benchmark (issues 4, 9): SFT tokens/s with packing against plain padded batches, on a long-tailed corpus.

    python bench/train_packing.py [--rows 250]

Real instruction corpora are long-tailed (the public Japanese instruction corpus: output median ~90
characters, maximum 11k), which is where packing pays: a padded batch is as long as its longest row.
The bench's corpus has that shape: each row is a curated SFT prompt with a response whose length in
tokens is drawn from a log-normal distribution (median 100 tokens, sigma 1.0, seeded), cut from the
shipped Japanese pretraining text, every row capped so that its whole training sequence (BOS, prompt,
response, EOS) fits `max_length` 512. The tiny base model (the workflow's results/base_model/<key>,
else built here with a short pretraining) is trained with LoRA SFT through `tunesmith.training.train.train_sft`,
the code path the workflow runs, for one epoch over the same rows three ways: without packing, with
`wrapped` packing and with `bfd` packing. Every mode trains on every token of every row once, so the
token count is the same for all three. Tokens/s is that count divided by the trainer's own
`train_runtime` (model loading and dataset preparation excluded). The cores are shared, so the modes
run interleaved `--repeats` times and each counts its fastest run (the least disturbed one); the
median and the slowest are printed beside it. On CPU `bfd` turns on padding-free attention, which is
slow there; it is reported as measured. The target is packed ≥ 2× unpacked.
Ends with `RESULT train_packing ratio=<wrapped tokens/s / unpacked tokens/s> bfd_ratio=<...> ...`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import built as stored, print_table, quiet  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = [  # (name, packing, packing_strategy)
    ("unpacked", False, "bfd"),
    ("wrapped", True, "wrapped"),
    ("bfd", True, "bfd"),
]


def base_model(work: Path, recipe: dict, threads: int) -> tuple[Path, str]:
    """A copy of the workflow's tiny base model, or a freshly built one with a short pretraining."""
    from tunesmith.model.base_model import pretrain_base, train_tokenizer

    built = stored(recipe, "base_model")
    target = work / "base"
    if (built / "config.json").is_file() and (built / "model.safetensors").is_file():
        # A copy, so a workflow run rebuilding the results meanwhile cannot change the model under us.
        shutil.copytree(built, target, ignore=shutil.ignore_patterns(".*"))
        return target, str(built.relative_to(ROOT))
    texts = [source["path"] for source in recipe["sources"] if source["role"] == "pretrain"]
    build = {**recipe["base_model"]["build"], "pretrain_steps": 40}
    train_tokenizer(texts, build["vocab_size"], work / "tokenizer")
    pretrain_base(str(work / "tokenizer"), texts, build, recipe["seed"], str(target), threads=threads)
    return target, "built here (40 pretraining steps)"


def curated_sft(work: Path, recipe: dict) -> tuple[Path, str]:
    """A copy of the workflow's curated SFT Parquet, or one curated here from the shipped data."""
    from tunesmith.data.curate import curate

    curated = stored(recipe, "curate_sft", "sft.parquet")
    target = work / "sft.parquet"
    if curated.is_file():
        shutil.copyfile(curated, target)
        return target, str(curated.relative_to(ROOT))
    curate(sources=recipe["sources"], role="sft", tasks_path=recipe["tasks"]["path"], settings=recipe["curate"],
           kept_path=str(target), quarantine_path=str(work / "sft.quarantine.parquet"),
           card_path=str(work / "sft.card.json"))
    return target, "curated here from data/raw"


def long_tailed_rows(dataset: Path, base: Path, recipe: dict, rows: int, max_length: int, seed: int,
                    out: Path) -> list[int]:
    """Write `rows` rows with log-normal response lengths (median 100 tokens) that fit `max_length`;
    return each row's token count as trl builds the sequence (BOS, prompt, completion, EOS)."""
    import numpy as np

    from tunesmith.model.model import load_tokenizer
    from tunesmith.model.template import PromptTemplate

    tokenizer = load_tokenizer(str(base), recipe["base_model"])
    template = PromptTemplate(recipe["template"])
    text = "".join(line.strip() + "。" for line in (ROOT / "data/raw/pretrain.txt").read_text(encoding="utf-8")
                   .splitlines() if line.strip())
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [end for _, end in encoded["offset_mapping"]]
    prompts = pq.read_table(dataset).column("prompt").to_pylist()
    generator = np.random.default_rng(seed)
    table, lengths = [], []
    while len(table) < rows:
        prompt = prompts[len(table) % len(prompts)]
        rendered = template.render_prompt(prompt, tokenizer)
        room = max_length - len(tokenizer(rendered).input_ids) - 1  # BOS is counted above, EOS here
        wanted = int(min(room, max(1, round(generator.lognormal(np.log(100), 1.0)))))
        start = int(generator.integers(0, len(ends) - wanted - 1))
        response = text[ends[start] : ends[start + wanted]]
        sequence = rendered + template.render_completion(prompt, response, tokenizer) + tokenizer.eos_token
        length = len(tokenizer(sequence).input_ids)
        if length > max_length:  # a merge across the cut made it longer than counted: draw again
            continue
        table.append({"prompt": prompt, "response": response, "split": "train"})
        lengths.append(length)
    pq.write_table(pa.Table.from_pylist(table), out)
    return lengths


def train_once(name: str, packing: bool, strategy: str, work: Path, base: Path, dataset: Path,
               recipe: dict, settings: dict, threads: int) -> dict:
    """One SFT epoch through the package's train_sft; the trainer's last log row holds the timings."""
    from tunesmith.training.train import train_sft

    sft = copy.deepcopy(recipe["sft"])
    sft.update(settings, packing=packing, packing_strategy=strategy)
    out = work / f"adapter-{name}"
    with quiet(work / "train.log"):
        result = train_sft(base_path=str(base), base_section=recipe["base_model"], template_section=recipe["template"],
                           sft=sft, dataset_path=str(dataset), seed=recipe["seed"], out_dir=str(out), threads=threads)
    with open(out / "training_log.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    shutil.rmtree(out)
    # The last row is the trainer's summary (runtime, no token count); tokens come from the last step logged.
    last_of = lambda key: float(next(row[key] for row in reversed(history) if row.get(key)))  # noqa: E731
    return {"runtime": last_of("train_runtime"), "steps": int(last_of("step")),
            "trainer_tokens": int(last_of("num_tokens")), "loss": result["train_loss"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=250, help="rows of the corpus (default 250)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode; the fastest counts")
    options = parser.parse_args()

    os.chdir(ROOT)  # recipe paths are relative to the repository root
    torch.set_num_threads(options.threads)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()  # also turns off the trainer's progress bar
    from tunesmith.config.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes/default.yaml")
    settings = dict(num_train_epochs=1, max_steps=-1, per_device_train_batch_size=options.batch_size,
                    max_length=options.max_length, gradient_accumulation_steps=1, save_steps=0,
                    activation_checkpointing=False, evaluations=0)

    with tempfile.TemporaryDirectory(prefix="bench-train-packing-") as scratch:
        work = Path(scratch)
        try:
            with quiet(work / "prepare.log"):
                base, base_origin = base_model(work, recipe, options.threads)
                dataset, data_origin = curated_sft(work, recipe)
                corpus = work / "corpus.parquet"
                lengths = long_tailed_rows(dataset, base, recipe, options.rows, options.max_length, recipe["seed"],
                                           corpus)
                rows, tokens = len(lengths), sum(lengths)
                # Unmeasured warm-up, so the first measured mode does not pay for one-off initialisation.
                train_once("warmup", False, "bfd", work, base, corpus, recipe, {**settings, "max_steps": 3},
                           options.threads)
            runs = {name: [] for name, _, _ in MODES}
            for _ in range(options.repeats):
                for name, packing, strategy in MODES:
                    runs[name].append(train_once(name, packing, strategy, work, base, corpus, recipe, settings,
                                                 options.threads))
        except BaseException:
            for log_name in ("prepare.log", "train.log"):
                if (work / log_name).is_file():
                    sys.stderr.write((work / log_name).read_text(encoding="utf-8")[-4000:])
            raise

    ordered = sorted(lengths)
    quantile = lambda share: ordered[min(len(ordered) - 1, int(share * len(ordered)))]  # noqa: E731
    print(f"base model: {base_origin}; prompts from: {data_origin}")
    print(f"{rows} rows, {tokens} tokens: median {quantile(0.5)}, p90 {quantile(0.9)}, max {ordered[-1]} tokens per "
          f"row (log-normal responses, median 100); max_length {options.max_length}; batch size {options.batch_size}; "
          f"1 epoch; {options.threads} threads; LoRA r={recipe['sft']['lora']['r']}; fastest of {options.repeats} "
          "runs each")
    print()
    speed, rows_out = {}, []
    for name, _, _ in MODES:
        times = [run["runtime"] for run in runs[name]]
        speed[name] = tokens / min(times)
        first = runs[name][0]
        rows_out.append([name, str(rows), str(tokens), str(first["trainer_tokens"]), str(first["steps"]),
                         f"{min(times):.2f}", f"{statistics.median(times):.2f}", f"{max(times):.2f}",
                         f"{speed[name]:.0f}", f"{first['loss']:.3f}"])
    print_table(["mode", "rows", "tokens", "trl count", "steps", "train s", "median s", "slowest s", "tokens/s",
                 "loss"], rows_out)
    print()
    ratio, bfd_ratio = speed["wrapped"] / speed["unpacked"], speed["bfd"] / speed["unpacked"]
    verdict = "met" if max(ratio, bfd_ratio) >= 2 else "not met"
    print(f"target packed >= 2x unpacked: {verdict}")
    print(f"RESULT train_packing ratio={ratio:.2f} bfd_ratio={bfd_ratio:.2f} "
          f"unpacked_tokens_per_s={speed['unpacked']:.0f} wrapped_tokens_per_s={speed['wrapped']:.0f} "
          f"bfd_tokens_per_s={speed['bfd']:.0f} target_met={'true' if verdict == 'met' else 'false'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
