"""Benchmark and GPU acceptance run (issues 9 and 17): nf4 QLoRA SFT, then DPO on the stacked SFT adapter, then
batched generation, then a small on-policy pairs run (issue 20: the SFT model samples, chrF grades, pairs are
built), with the settings of recipes/llm-jp-3-13b-qlora.yaml, on one GPU.

    python bench/gpu_smoke.py             # CUDA: a ~1B Llama; asserts, writes bench/results/gpu_smoke.json
    python bench/gpu_smoke.py --size 13b  # CUDA: llm-jp-3-13b's exact config, random weights, in nf4;
                                          # writes bench/results/gpu_smoke_13b.json (does it fit 24 GB?)
    python bench/gpu_smoke.py --dry-cpu   # anywhere (a test runs it): the 1B flow on CPU, tiny model

GPU machines here reach no hub, so the model is randomly initialised from a config; random weights train
and generate as fast as real ones. The tokenizer is llm-jp-3's own when `../shared/llm-jp-3-tokenizer`
is there (built by tests/standin.py; 99,574 pieces, the model's vocabulary 99,584 as llm-jp-3's), else a
byte-level BPE trained here on data/raw/pretrain.txt. The package's own code paths run on it with the
recipe's settings (nf4, bf16 compute, LoRA r=32 on every projection, activation checkpointing):
`tunesmith.training.train.train_sft` on unpacked prompt/completion rows with completion-only loss (as the recipe
trains), `tunesmith.training.train.train_dpo` at the recipe's learning rate (a new adapter on top of the frozen
SFT adapter, the SFT model as reference), then `tunesmith.model.model.load_model` (each stage's standalone
adapter, unmerged on the 4-bit base) and `tunesmith.generation.generate.answer_with_guards` over
`generate_batched` with the recipe's generation settings (repetition penalty 1.2, the guards and their
sampled retries) on 100 task prompts.

It asserts what a user relies on: the SFT adapter changes the greedy tokens of the base (its effect
survives the 4-bit base); DPO at the recipe's learning rate moves at least 99% of the entries of its
`lora_A` matrices (a bf16 adapter rounds most of a 5e-6 step away: issue 17); and the SFT adapter's effect
on the logits of the 4-bit model is at least 90% of its effect on the unquantised model. It records peak
GPU memory (torch.cuda.max_memory_allocated) per phase, training and generation tokens/s, the trainable
parameters' dtypes and the device.

`--size 13b` builds llm-jp-3-13b's config (tests/standin.py: LLM_JP_3_13B) in bf16, saves it, and loads it
in nf4 through the package; it trains a few SFT and DPO steps on rows filled to max_length 512 at batch 2
(the worst case of the recipe's length, the memory a 24 GB card must hold) and answers 100 prompts with the
DPO model; no unquantised comparison (a second 26 GB copy). `--dry-cpu` trains unquantised (4-bit
training does not work on CPU) and generates from the nf4 base on CPU, so the loading code is the GPU's.
Without CUDA and without `--dry-cpu` it prints `SKIP gpu_smoke: ...` and exits 0. Ends with
`RESULT gpu_smoke sft_tokens_per_s=... dpo_pairs_per_s=... gen_tokens_per_s=... peak_gib=... effect_kept=...
lora_a_moved=...`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import built as stored, print_table, quiet  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/standin.py: llm-jp-3's tokenizer and 13B config
from standin import LLM_JP_3_13B, SPM_FILE, TOKENIZER_DIR  # noqa: E402

RESULTS = ROOT / "bench/results"
GIB = 2**30
MIN_EFFECT_KEPT = 0.9
MIN_LORA_A_MOVED = 0.99  # share of lora_A entries DPO's steps change; fp32 adapters change all of them

PROFILES = {
    # About 1.2B parameters: 16 × 51.4M in the layers + 2 × 204M for embeddings and LM head (llm-jp-3's vocabulary).
    "1b": dict(
        model=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                   num_key_value_heads=16, max_position_embeddings=2048),
        train_base=dict(quantization="nf4", dtype="bfloat16", compute_dtype="bfloat16"),
        generate_base=dict(quantization="nf4", dtype="bfloat16", compute_dtype="bfloat16"),
        sft=dict(max_steps=20, per_device_train_batch_size=4, max_length=512),
        dpo=dict(max_steps=10, per_device_train_batch_size=2, max_length=512),
        generate=dict(batch_size=16, max_new_tokens=64),
        pairs=dict(sample=32, answers_per_prompt=4, max_new_tokens=64),
        stages=("base", "sft", "dpo"), fill_rows=False, effect_kept=True, threads=4,
    ),
    # llm-jp-3-13b's exact config; rows filled to max_length so that every batch is 2 × 512 tokens.
    "13b": dict(
        model={key: value for key, value in LLM_JP_3_13B.items() if key not in ("bos_token_id", "eos_token_id")},
        train_base=dict(quantization="nf4", dtype="bfloat16", compute_dtype="bfloat16"),
        generate_base=dict(quantization="nf4", dtype="bfloat16", compute_dtype="bfloat16"),
        sft=dict(max_steps=5, per_device_train_batch_size=2, max_length=512),
        dpo=dict(max_steps=4, per_device_train_batch_size=2, max_length=512),
        generate=dict(batch_size=8, max_new_tokens=128),
        pairs=dict(sample=8, answers_per_prompt=4, max_new_tokens=128),
        stages=("dpo",), fill_rows=True, effect_kept=False, threads=8,
    ),
    # The 1B flow at toy size: training unquantised (bitsandbytes must not train on CPU), generation from the
    # nf4 base like the GPU's (4-bit inference works on CPU).
    "dry-cpu": dict(
        model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=256),
        train_base=dict(quantization="none", dtype="float32", compute_dtype="float32"),
        generate_base=dict(quantization="nf4", dtype="float32", compute_dtype="float32"),
        sft=dict(max_steps=4, per_device_train_batch_size=4, max_length=128),
        dpo=dict(max_steps=4, per_device_train_batch_size=4, max_length=128),
        generate=dict(batch_size=16, max_new_tokens=16),
        pairs=dict(sample=6, answers_per_prompt=3, max_new_tokens=16),
        stages=("base", "sft", "dpo"), fill_rows=False, effect_kept=True,
        # One thread: on 2 shared cores, two OpenMP threads made tiny-model generation ~100x slower.
        threads=1,
    ),
}
BPE_VOCAB = 32000  # asked of the BPE trainer when llm-jp-3's tokenizer is absent; the shipped text yields ~3.1k
TASK_PROMPTS = 100


def tokenizer_for_bench(work: Path):
    """(llm-jp-3's tokenizer when ../shared has it, else a BPE trained on the shipped text; its name)."""
    from transformers import AutoTokenizer

    if (TOKENIZER_DIR / SPM_FILE).is_file():
        from standin import llm_jp_tokenizer

        return llm_jp_tokenizer(), "llm-jp-3"
    from tunesmith.model.base_model import train_tokenizer

    train_tokenizer([str(ROOT / "data/raw/pretrain.txt")], BPE_VOCAB, work / "tokenizer")
    return AutoTokenizer.from_pretrained(work / "tokenizer"), "bpe (no ../shared/llm-jp-3-tokenizer)"


def build_random_llama(work: Path, shape: dict, dtype: torch.dtype, device: torch.device) -> tuple[Path, int, str]:
    """Save a randomly initialised Llama and its tokenizer as a from_pretrained folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer, tokenizer_name = tokenizer_for_bench(work)
    config = LlamaConfig(
        **{**shape, "vocab_size": max(shape.get("vocab_size", 0), LLM_JP_3_13B["vocab_size"]
                                      if tokenizer_name == "llm-jp-3" else len(tokenizer))},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    # Initialising 13B parameters is seconds on a GPU, many minutes on CPU; in the saved dtype from the start
    # (an fp32 13B would not fit beside the bf16 copy).
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    parameters = model.num_parameters()
    base = work / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    del model
    release_memory()
    return base, parameters, tokenizer_name


def curated(work: Path, recipe: dict, role: str) -> Path:
    """The workflow's curated Parquet of `role` (a copy), or one curated here from the shipped data."""
    from tunesmith.data.curate import curate

    target = work / f"{role}.parquet"
    found = stored(recipe, f"curate_{role}", f"{role}.parquet")
    if found.is_file():
        shutil.copyfile(found, target)
    else:
        curate(sources=recipe["sources"], role=role, tasks_path=recipe["tasks"]["path"], settings=recipe["curate"],
               kept_path=str(target), quarantine_path=str(work / f"{role}.quarantine.parquet"),
               card_path=str(work / f"{role}.card.json"))
    return target


def fill_rows(path: Path, tokenizer, max_length: int) -> None:
    """Make every answer of the curated rows at `path` long enough that prompt + answer passes `max_length`
    tokens (the answer repeated), so that training sees full-length sequences: the memory worst case."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for field in [name for name in ("response", "chosen", "rejected") if name in table.column_names]:
        filled = []
        for text in table.column(field).to_pylist():
            text = text or "。"
            times = max_length // max(1, len(tokenizer(text, add_special_tokens=False)["input_ids"])) + 1
            filled.append("\n".join([text] * times))
        table = table.set_column(table.column_names.index(field), field, pa.array(filled, pa.string()))
    pq.write_table(table, path)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def start_peak(on_gpu: bool) -> None:
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(on_gpu: bool) -> float | None:
    if not on_gpu:
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GIB


def trainer_log(adapter: Path) -> dict:
    """The trainer's own figures: the last logged token count and the summary row's runtime (the last
    row of training_log.csv is that summary, which holds no token count)."""
    with open(adapter / "training_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    last_of = lambda key: float(next(row[key] for row in reversed(rows) if row.get(key)))  # noqa: E731
    return {"steps": int(last_of("step")), "tokens": int(last_of("num_tokens")), "seconds": last_of("train_runtime")}


@contextlib.contextmanager
def watched_training(record: dict):
    """Around `tunesmith.training.train`'s trainer.train(): the trainable parameters' dtypes, and how many entries of
    the trained adapter's lora_A matrices the steps changed."""
    import tunesmith.training.train as train

    original = train._train

    def watching(trainer, checkpoints):
        def lora_a():
            return {name: parameter.detach().float().cpu().clone()
                    for name, parameter in trainer.model.named_parameters()
                    if parameter.requires_grad and "lora_A" in name}

        record["trainable_dtypes"] = sorted({str(parameter.dtype).removeprefix("torch.")
                                             for parameter in trainer.model.parameters() if parameter.requires_grad})
        before = lora_a()
        result = original(trainer, checkpoints)
        after = lora_a()
        entries = sum(tensor.numel() for tensor in before.values())
        record["lora_a_changed_share"] = sum(int((after[name] != before[name]).sum()) for name in before) / entries
        record["lora_a_mean_abs_change"] = (sum(float((after[name] - before[name]).abs().sum()) for name in before)
                                            / entries)
        return result

    train._train = watching
    try:
        yield
    finally:
        train._train = original


def train_stages(work: Path, base: Path, base_section: dict, recipe: dict, profile: dict, on_gpu: bool) -> dict:
    """QLoRA SFT (unpacked prompt/completion rows, completion-only loss, as the recipe trains), then DPO at the
    recipe's learning rate with a new adapter on the frozen SFT adapter."""
    from tunesmith.model.model import read_metadata
    from tunesmith.training.train import train_dpo, train_sft

    common = {"gradient_accumulation_steps": 1, "save_steps": 0, "warmup_steps": 2, "logging_steps": 2,
              "evaluations": 1}
    sft = {**recipe["sft"], **common, **profile["sft"]}
    dpo = {**recipe["dpo"], **common, **profile["dpo"], "start": "new_adapter"}
    measured = {}
    for stage, section, data, extra in (("sft", sft, work / "sft.parquet", {}),
                                        ("dpo", dpo, work / "preference.parquet", {"sft_adapter": str(work / "sft")})):
        start_peak(on_gpu)
        train = train_sft if stage == "sft" else train_dpo
        watched = {}
        with quiet(work / f"{stage}.log"), watched_training(watched):
            started = time.perf_counter()
            result = train(base_path=str(base), base_section=base_section, template_section=recipe["template"],
                           **{stage: section}, dataset_path=str(data), seed=recipe["seed"], out_dir=str(work / stage),
                           threads=profile["threads"], **extra)
            wall = time.perf_counter() - started
        figures = trainer_log(work / stage)
        rows = read_metadata(work / stage)
        pairs = figures["steps"] * section["per_device_train_batch_size"]
        measured[stage] = {**figures, "wall_seconds": wall, "loss": result["train_loss"], "peak_gib": peak_gib(on_gpu),
                           "tokens_per_s": figures["tokens"] / figures["seconds"],
                           "rows_per_s": pairs / figures["seconds"], "rows_trained": rows["rows"],
                           "batch_size": section["per_device_train_batch_size"], "max_length": section["max_length"],
                           "learning_rate": section["learning_rate"], "packing": section["packing"]
                           if stage == "sft" else None, **watched}
        release_memory()
    return measured


def generate_stages(work: Path, base: Path, base_section: dict, recipe: dict, profile: dict, on_gpu: bool) -> dict:
    """The recipe's generation (repetition penalty, guards and their sampled retries) over generate_batched on
    the first 100 task prompts for each stage of the profile, each loaded by load_model (the stage's standalone
    adapter, unmerged on the 4-bit base). Generated tokens are counted at model.generate, retries included:
    every new token that is not padding."""
    from tunesmith.data.tasks import read_tasks
    from tunesmith.generation.generate import answer_with_guards, generate_batched
    from tunesmith.model.model import load_model, load_tokenizer
    from tunesmith.model.template import PromptTemplate

    tokenizer = load_tokenizer(str(base), base_section, padding_side="left")
    template = PromptTemplate(recipe["template"])
    tasks = read_tasks(ROOT / recipe["tasks"]["path"])[:TASK_PROMPTS]
    prompts = [template.render_prompt(task.prompt_text, tokenizer) for task in tasks]
    settings = {**recipe["generate"], **profile["generate"]}
    stages = {}
    for stage in profile["stages"]:
        adapter = None if stage == "base" else work / stage
        start_peak(on_gpu)
        with quiet(work / "generate.log"):
            model = load_model(str(base), base_section, adapter=str(adapter) if adapter else None)
        counts = []
        plain_generate = model.generate

        def counting_generate(*args, **kwargs):
            output = plain_generate(*args, **kwargs)
            counts.append(int((output[:, kwargs["input_ids"].shape[1]:] != tokenizer.pad_token_id).sum()))
            return output

        model.generate = counting_generate

        def generate(some_prompts, some_settings, some_seed):
            return generate_batched(model, tokenizer, some_prompts, some_settings, some_seed)

        with quiet(work / "generate.log"):
            started = time.perf_counter()
            answers = answer_with_guards(generate, prompts, settings, recipe["seed"], template.clean_output)
            seconds = time.perf_counter() - started
        stages[stage] = {"tokens": sum(counts), "seconds": seconds, "tokens_per_s": sum(counts) / seconds,
                         "peak_gib": peak_gib(on_gpu), "regenerated": sum(len(a.attempts) > 1 for a in answers),
                         "first_greedy": [answer.attempts[0].raw for answer in answers]}
        del model
        release_memory()
    return stages, prompts


def on_policy_pairs(work: Path, base: Path, base_section: dict, recipe: dict, profile: dict, on_gpu: bool) -> dict:
    """On-policy pairs (issue 20) at small size: the SFT model samples answers to SFT train prompts
    (tunesmith.training.on_policy, the transformers path), chrF against each prompt's SFT answer grades them (cached),
    and best-vs-worst pairs are built with every other answer accounted for."""
    from tunesmith.model.model import load_model, load_tokenizer
    from tunesmith.model.template import PromptTemplate
    from tunesmith.training import on_policy

    size = profile["pairs"]
    settings = {**recipe["pairs"], "prompts": None, "sample": size["sample"],
                "answers_per_prompt": size["answers_per_prompt"], "min_margin": 0.5,
                "sampling": {**recipe["pairs"]["sampling"], "max_new_tokens": size["max_new_tokens"]}}
    tokenizer = load_tokenizer(str(base), base_section, padding_side="left")
    template = PromptTemplate(recipe["template"])
    prompts = on_policy.read_prompts(settings, recipe["seed"], str(work / "sft.parquet"))
    for prompt in prompts:
        prompt["prompt"] = template.render_prompt(prompt["prompt"], tokenizer)
    start_peak(on_gpu)
    with quiet(work / "pairs.log"):
        model = load_model(str(base), base_section, adapter=str(work / "sft"))
        sampling = on_policy.sampling_settings(settings, recipe["generate"])
        started = time.perf_counter()
        rows = on_policy.sample_prompts(on_policy.transformers_sampler(model, tokenizer), prompts, settings, sampling,
                                        recipe["generate"]["guards"], template.clean_output, recipe["seed"],
                                        work / "pairs_cache")
        seconds = time.perf_counter() - started
        grader = {"kind": "references", "metric": "chrf"}
        for row in rows:
            row.update(sft_adapter="smoke", grader="references (chrf)")
        on_policy.grade_rows(rows, grader, None, work / "grade_cache")
        pairs, quarantine = on_policy.pairs_of(rows, settings["min_margin"])
    answers = sum(len(row["answers"]) for row in rows)
    del model
    release_memory()
    return {"prompts": len(rows), "answers": answers, "pairs": len(pairs), "quarantined": len(quarantine),
            "accounted": 2 * len(pairs) + len(quarantine) == answers, "answers_per_s": answers / seconds,
            "peak_gib": peak_gib(on_gpu)}


def effect_kept(base: Path, quantised: dict, unquantised: dict, adapter: Path, prompts: list[str]) -> float:
    """The share of the adapter's effect on the unquantised model's logits that the quantised model
    keeps through load_model (the projection of one effect onto the other)."""
    from tunesmith.model.model import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(base), quantised, padding_side="left")
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    effects = []
    for section in (quantised, unquantised):
        logits = []
        for applied in (str(adapter), None):
            model = load_model(str(base), section, adapter=applied)
            with torch.no_grad():
                output = model(**batch.to(model.device)).logits.float()
            logits.append(output[batch["attention_mask"].bool()].cpu())
            del model
            release_memory()
        effects.append(logits[0] - logits[1])
    ours, reference = effects
    return float((ours * reference).sum() / (reference * reference).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-cpu", action="store_true",
                        help="run the 1B flow on CPU with a tiny model (training unquantised; checks the script)")
    parser.add_argument("--size", choices=("1b", "13b"), default="1b",
                        help="1b: a ~1B Llama; 13b: llm-jp-3-13b's exact config in nf4 (GPU only)")
    options = parser.parse_args()
    if options.dry_cpu:
        if options.size != "1b":
            parser.error("--dry-cpu runs the 1B flow at toy size; --size 13b needs a CUDA GPU")
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before CUDA initialises: the package then picks the CPU too
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not options.dry_cpu:
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        print(f"SKIP gpu_smoke: no CUDA device (torch {torch.__version__}, {build}: torch.cuda.is_available() "
              "is False); QLoRA nf4 needs a GPU. `--dry-cpu` checks the flow on CPU.")
        return 0
    mode = options.size if on_gpu else "dry-cpu"
    profile = PROFILES[mode]
    os.chdir(ROOT)  # recipe paths are relative to the repository root
    torch.set_num_threads(profile["threads"])
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    from tunesmith.config.recipe import load_recipe
    from tunesmith.jobs.atomic import write_json
    from tunesmith.model.model import device, load_tokenizer

    recipe = load_recipe(ROOT / "recipes/llm-jp-3-13b-qlora.yaml")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-smoke-") as scratch:
        work = Path(scratch)
        try:
            train_base = {**recipe["base_model"], **profile["train_base"]}
            generate_base = {**recipe["base_model"], **profile["generate_base"]}
            with quiet(work / "prepare.log"):
                base, parameters, tokenizer_name = build_random_llama(work, profile["model"],
                                                                      getattr(torch, train_base["dtype"]), device())
                for role, stage in (("sft", "sft"), ("preference", "dpo")):
                    data = curated(work, recipe, role)
                    if profile["fill_rows"]:
                        fill_rows(data, load_tokenizer(str(base), train_base), profile[stage]["max_length"])
            trained = train_stages(work, base, train_base, recipe, profile, on_gpu)
            generated, prompts = generate_stages(work, base, generate_base, recipe, profile, on_gpu)
            paired = on_policy_pairs(work, base, generate_base, recipe, profile, on_gpu)
            kept = (effect_kept(base, generate_base, {**generate_base, "quantization": "none"}, work / "sft",
                                prompts[:8]) if profile["effect_kept"] else None)
        except BaseException:
            for log_name in ("prepare.log", "sft.log", "dpo.log", "generate.log", "pairs.log"):
                if (work / log_name).is_file():
                    sys.stderr.write(f"--- {log_name} (tail)\n")
                    sys.stderr.write((work / log_name).read_text(encoding="utf-8")[-4000:])
            raise
        changed = {stage: sum(a != b for a, b in zip(generated[before]["first_greedy"], generated[stage]["first_greedy"]))
                   for before, stage in (("base", "sft"), ("sft", "dpo")) if {before, stage} <= set(generated)}
        peaks = [entry["peak_gib"] for entry in (*trained.values(), *generated.values(), paired)
                 if entry["peak_gib"] is not None]
        moved = trained["dpo"]["lora_a_changed_share"]
        record = {
            "mode": mode,
            "device": torch.cuda.get_device_name() if on_gpu else "cpu",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "cuda": torch.version.cuda},
            "model": {**profile["model"], "parameters": parameters, "tokenizer": tokenizer_name, "train": train_base,
                      "generate": generate_base},
            "train": trained,
            "generate": {stage: {key: value for key, value in entry.items() if key != "first_greedy"}
                         for stage, entry in generated.items()},
            "generation_settings": {**recipe["generate"], **profile["generate"]},
            "prompts_whose_first_greedy_answer_changed": changed,
            "sft_effect_kept_on_4bit": kept,
            "on_policy_pairs": paired,
            "dpo_lora_a_changed_share": moved,
            "peak_gib": max(peaks) if peaks else None,
            "wall_seconds": time.perf_counter() - started,
        }
        # A dry run checks the flow only: its numbers stay in the temporary folder.
        out = RESULTS / ("gpu_smoke.json" if mode == "1b" else "gpu_smoke_13b.json") if on_gpu else (
            work / "gpu_smoke.dry-cpu.json")
        write_json(out, record)

    def gib(value):
        return f"{value:.2f}" if value is not None else "n/a"

    print(f"device: {record['device']} ({mode}); model: {parameters:,} parameters, tokenizer {tokenizer_name}; "
          f"training {train_base['quantization']}/{train_base['dtype']}, generation {generate_base['quantization']}")
    print()
    rows = [[stage, f"{entry['steps']} steps x {entry['batch_size']} x {entry['max_length']}", str(entry["tokens"]),
             f"{entry['seconds']:.2f}", f"{entry['tokens_per_s']:.0f}", gib(entry["peak_gib"])]
            for stage, entry in trained.items()]
    rows += [[f"generate {stage}", f"{TASK_PROMPTS} prompts, batch {profile['generate']['batch_size']}",
              str(entry["tokens"]), f"{entry['seconds']:.2f}", f"{entry['tokens_per_s']:.0f}", gib(entry["peak_gib"])]
             for stage, entry in generated.items()]
    print_table(["phase", "work", "tokens", "seconds", "tokens/s", "peak GiB"], rows, left=2)
    print()
    if changed:
        print(f"prompts whose first greedy answer changed: base→sft {changed['sft']}, sft→dpo {changed['dpo']} "
              f"(of {TASK_PROMPTS}); SFT effect kept on the 4-bit base: {kept:.3f}")
    print(f"on-policy pairs: {paired['prompts']} SFT prompts x {paired['answers'] // max(paired['prompts'], 1)} sampled "
          f"answers ({paired['answers_per_s']:.1f} answers/s), graded by chrF: {paired['pairs']} pairs, "
          f"{paired['quarantined']} answers quarantined")
    print(f"DPO at lr {trained['dpo']['learning_rate']:g}: {moved:.1%} of lora_A entries changed "
          f"(trainable parameters: {', '.join(trained['dpo']['trainable_dtypes'])})")
    written = out.relative_to(ROOT) if on_gpu else "nothing (dry run; the record stays in a temporary folder)"
    print(f"written: {written}")
    suffix = "" if on_gpu else " mode=dry-cpu"
    print(f"RESULT gpu_smoke sft_tokens_per_s={trained['sft']['tokens_per_s']:.0f} "
          f"dpo_pairs_per_s={trained['dpo']['rows_per_s']:.1f} gen_tokens_per_s={generated['dpo']['tokens_per_s']:.0f} "
          f"peak_gib={gib(record['peak_gib'])} effect_kept={'n/a' if kept is None else f'{kept:.3f}'} "
          f"lora_a_moved={moved:.4f} onpolicy_answers_per_s={paired['answers_per_s']:.1f} "
          f"onpolicy_pairs={paired['pairs']}{suffix}")
    failures = []
    if not paired["accounted"]:
        failures.append("on-policy pairs and quarantine do not account for every sampled answer")
    if changed.get("sft") == 0:
        failures.append("the SFT adapter changed no greedy answer")
    if moved < MIN_LORA_A_MOVED:
        failures.append(f"DPO at the recipe's learning rate changed {moved:.1%} of lora_A entries "
                        f"(< {MIN_LORA_A_MOVED:.0%}): trainable parameters are {trained['dpo']['trainable_dtypes']}")
    if kept is not None and kept < MIN_EFFECT_KEPT:
        failures.append(f"the SFT adapter keeps {kept:.3f} of its effect on the 4-bit base (< {MIN_EFFECT_KEPT})")
    for failure in failures:
        print(f"FAIL gpu_smoke: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
