"""Benchmark and GPU acceptance run (issue 9): nf4 QLoRA SFT, then DPO on the stacked SFT adapter, then
batched generation of every stage, on a ~1B-parameter Llama on one GPU.

    python bench/gpu_smoke.py             # CUDA machine: measures, asserts, writes bench/results/gpu_smoke.json
    python bench/gpu_smoke.py --dry-cpu   # anywhere (a test runs it): the same flow on CPU, tiny model

GPU machines here reach no hub, so the model is a randomly initialised Llama built from a config
(hidden 2048, 16 layers, intermediate 5632, 32k vocabulary: about 1B parameters) with a byte-level BPE
tokenizer trained here on data/raw/pretrain.txt; random weights train and generate as fast as real
ones. The package's own code paths run on it, with the settings of recipes/llm-jp-3-13b-qlora.yaml
(nf4, bf16 compute, LoRA r=32 on every projection, activation checkpointing):
`tunesmith.train.train_sft` for a few steps of `wrapped`-packed sequences, `tunesmith.train.train_dpo`
(a new adapter on top of the frozen SFT adapter, the SFT model as reference), then
`tunesmith.model.load_model` (each stage's one standalone adapter, unmerged on the 4-bit base) and
`tunesmith.generate.generate_batched` on 100 task prompts for base, SFT and DPO.

It asserts what a user relies on: the SFT and DPO adapters each change the greedy tokens relative
to the stage before (their effect survives the 4-bit base), and the SFT adapter's effect on the
logits of the 4-bit model is at least 90% of its effect on the unquantised model (CPU's
tests/test_model.py asks 95% of a synthetic adapter in fp32; bf16 compute is noisier). It records
peak GPU memory (torch.cuda.max_memory_allocated) per phase, training and generation tokens/s and the
device. `--dry-cpu` trains unquantised (4-bit training does not work on CPU) and generates from the
nf4 base on CPU, so the loading code is the GPU's. Without CUDA and without `--dry-cpu` it prints
`SKIP gpu_smoke: ...` and exits 0. Ends with
`RESULT gpu_smoke sft_tokens_per_s=... dpo_pairs_per_s=... gen_tokens_per_s=... peak_gib=... effect_kept=...`.
"""

from __future__ import annotations

import argparse
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
RESULT_PATH = ROOT / "bench/results/gpu_smoke.json"
GIB = 2**30
MIN_EFFECT_KEPT = 0.9

PROFILES = {
    # About 1B parameters: 16 × 51.4M in the layers + 2 × 65.5M for embeddings and LM head.
    "gpu": dict(
        model=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                   num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048),
        train_base=dict(quantization="nf4", dtype="bfloat16", compute_dtype="bfloat16"),
        generate_base=dict(quantization="nf4", dtype="bfloat16", compute_dtype="bfloat16"),
        sft=dict(max_steps=20, batch_size=4, max_length=512),
        # The recipe's 5e-6 moves a fresh adapter too little in 10 steps to show on greedy tokens.
        dpo=dict(max_steps=10, batch_size=2, max_length=512, learning_rate=1e-4),
        generate=dict(batch_size=16, max_new_tokens=64),
        threads=4,
    ),
    # The same flow at toy size: training unquantised (bitsandbytes must not train on CPU), generation
    # from the nf4 base like the GPU's (4-bit inference works on CPU).
    "dry-cpu": dict(
        model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, vocab_size=3200, max_position_embeddings=256),
        train_base=dict(quantization="none", dtype="float32", compute_dtype="float32"),
        generate_base=dict(quantization="nf4", dtype="float32", compute_dtype="float32"),
        sft=dict(max_steps=4, batch_size=4, max_length=128),
        dpo=dict(max_steps=4, batch_size=4, max_length=128, learning_rate=1e-3),
        generate=dict(batch_size=16, max_new_tokens=16),
        # One thread: on 2 shared cores, two OpenMP threads made tiny-model generation ~100x slower.
        threads=1,
    ),
}
TOKENIZER_VOCAB = 32000  # asked of the BPE trainer; the shipped text yields ~3.1k, the model keeps its own size
TASK_PROMPTS = 100


def build_random_llama(work: Path, shape: dict, dtype: torch.dtype, device: torch.device) -> tuple[Path, int]:
    """Save a randomly initialised Llama and its tokenizer as a from_pretrained folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.base_model import train_tokenizer

    train_tokenizer([str(ROOT / "data/raw/pretrain.txt")], TOKENIZER_VOCAB, work / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    config = LlamaConfig(
        **{**shape, "vocab_size": max(shape["vocab_size"], len(tokenizer))},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1B parameters is seconds on a GPU, minutes on CPU
        model = LlamaForCausalLM(config).to(dtype)
    parameters = model.num_parameters()
    base = work / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    del model
    release_memory()
    return base, parameters


def curated(work: Path, recipe: dict, role: str) -> Path:
    """The workflow's curated Parquet of `role` (a copy), or one curated here from the shipped data."""
    from tunesmith.curate import curate

    target = work / f"{role}.parquet"
    found = stored(recipe, f"curate_{role}", f"{role}.parquet")
    if found.is_file():
        shutil.copyfile(found, target)
    else:
        curate(sources=recipe["sources"], role=role, tasks_path=recipe["tasks"]["path"], settings=recipe["curate"],
               kept_path=str(target), quarantine_path=str(work / f"{role}.quarantine.parquet"),
               card_path=str(work / f"{role}.card.json"))
    return target


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


def train_stages(work: Path, base: Path, base_section: dict, recipe: dict, profile: dict, on_gpu: bool) -> dict:
    """QLoRA SFT (wrapped-packed sequences), then DPO with a new adapter on the frozen SFT adapter."""
    from tunesmith.model import read_metadata
    from tunesmith.train import train_dpo, train_sft

    common = {"gradient_accumulation_steps": 1, "save_steps": 0, "warmup_steps": 2, "logging_steps": 2,
              "evaluations": 1}
    sft = {**recipe["sft"], **common, **profile["sft"], "packing": True, "packing_strategy": "wrapped"}
    dpo = {**recipe["dpo"], **common, **profile["dpo"], "start": "new_adapter"}
    measured = {}
    for stage, section, data, extra in (("sft", sft, work / "sft.parquet", {}),
                                        ("dpo", dpo, work / "preference.parquet", {"sft_adapter": str(work / "sft")})):
        start_peak(on_gpu)
        train = train_sft if stage == "sft" else train_dpo
        with quiet(work / f"{stage}.log"):
            started = time.perf_counter()
            result = train(base_path=str(base), base_section=base_section, template_section=recipe["template"],
                           **{stage: section}, dataset_path=str(data), seed=recipe["seed"], out_dir=str(work / stage),
                           threads=profile["threads"], **extra)
            wall = time.perf_counter() - started
        figures = trainer_log(work / stage)
        rows = read_metadata(work / stage)
        pairs = figures["steps"] * section["batch_size"]
        measured[stage] = {**figures, "wall_seconds": wall, "loss": result["train_loss"], "peak_gib": peak_gib(on_gpu),
                           "tokens_per_s": figures["tokens"] / figures["seconds"],
                           "rows_per_s": pairs / figures["seconds"], "rows_trained": rows["rows"],
                           "batch_size": section["batch_size"], "max_length": section["max_length"]}
        release_memory()
    return measured


def generate_stages(work: Path, base: Path, base_section: dict, recipe: dict, settings: dict, on_gpu: bool) -> dict:
    """generate_batched on the first 100 task prompts for base, SFT and DPO, each loaded by load_model
    (the stage's standalone adapter, unmerged on the 4-bit base). Generated tokens are counted at
    model.generate: every new token that is not padding."""
    from tunesmith.generate import generate_batched
    from tunesmith.model import load_model, load_tokenizer
    from tunesmith.tasks import read_tasks
    from tunesmith.template import PromptTemplate

    tokenizer = load_tokenizer(str(base), base_section, padding_side="left")
    template = PromptTemplate(recipe["template"])
    tasks = read_tasks(ROOT / recipe["tasks"]["path"])[:TASK_PROMPTS]
    prompts = [template.render_prompt(task.prompt_text, tokenizer) for task in tasks]
    generation = {**recipe["generate"], **settings, "do_sample": False, "stop_strings": [], "repetition_penalty": 1.0}
    stages = {}
    for stage, adapter in (("base", None), ("sft", work / "sft"), ("dpo", work / "dpo")):
        start_peak(on_gpu)
        with quiet(work / "generate.log"):
            model = load_model(str(base), base_section, adapter=str(adapter) if adapter else None)
        counts, tokens = [], []
        plain_generate = model.generate

        def counting_generate(*args, **kwargs):
            output = plain_generate(*args, **kwargs)
            new_tokens = output[:, kwargs["input_ids"].shape[1]:]
            counts.append(int((new_tokens != tokenizer.pad_token_id).sum()))
            # Without the padding after EOS, which depends on what else was in the batch.
            tokens.extend([token for token in row if token != tokenizer.pad_token_id] for row in new_tokens.tolist())
            return output

        model.generate = counting_generate
        with quiet(work / "generate.log"):
            started = time.perf_counter()
            answers = generate_batched(model, tokenizer, prompts, generation, recipe["seed"])
            seconds = time.perf_counter() - started
        stages[stage] = {"answers": answers, "tokens": sum(counts), "seconds": seconds,
                         "tokens_per_s": sum(counts) / seconds, "peak_gib": peak_gib(on_gpu), "token_ids": tokens}
        del model
        release_memory()
    return stages, prompts


def effect_kept(base: Path, quantised: dict, unquantised: dict, adapter: Path, prompts: list[str]) -> float:
    """The share of the adapter's effect on the unquantised model's logits that the quantised model
    keeps through load_model (the projection of one effect onto the other)."""
    from tunesmith.model import load_model, load_tokenizer

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
                        help="run the same flow on CPU with a tiny model (training unquantised; checks the script)")
    options = parser.parse_args()
    if options.dry_cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before CUDA initialises: the package then picks the CPU too
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not options.dry_cpu:
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        print(f"SKIP gpu_smoke: no CUDA device (torch {torch.__version__}, {build}: torch.cuda.is_available() "
              "is False); QLoRA nf4 needs a GPU. `--dry-cpu` checks the flow on CPU.")
        return 0
    profile = PROFILES["gpu" if on_gpu else "dry-cpu"]
    os.chdir(ROOT)  # recipe paths are relative to the repository root
    torch.set_num_threads(profile["threads"])
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    from tunesmith.atomic import write_json
    from tunesmith.model import device
    from tunesmith.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes/llm-jp-3-13b-qlora.yaml")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-smoke-") as scratch:
        work = Path(scratch)
        try:
            train_base = {**recipe["base_model"], **profile["train_base"]}
            generate_base = {**recipe["base_model"], **profile["generate_base"]}
            with quiet(work / "prepare.log"):
                base, parameters = build_random_llama(work, profile["model"], getattr(torch, train_base["dtype"]),
                                                      device())
                for role in ("sft", "preference"):
                    curated(work, recipe, role)
            trained = train_stages(work, base, train_base, recipe, profile, on_gpu)
            generated, prompts = generate_stages(work, base, generate_base, recipe, profile["generate"], on_gpu)
            kept = effect_kept(base, generate_base, {**generate_base, "quantization": "none"}, work / "sft",
                               prompts[:8])
        except BaseException:
            for log_name in ("prepare.log", "sft.log", "dpo.log", "generate.log"):
                if (work / log_name).is_file():
                    sys.stderr.write(f"--- {log_name} (tail)\n")
                    sys.stderr.write((work / log_name).read_text(encoding="utf-8")[-4000:])
            raise
        changed = {stage: sum(a != b for a, b in zip(generated[before]["token_ids"], generated[stage]["token_ids"]))
                   for before, stage in (("base", "sft"), ("sft", "dpo"))}
        peaks = [entry["peak_gib"] for entry in (*trained.values(), *generated.values()) if entry["peak_gib"] is not None]
        record = {
            "mode": "gpu" if on_gpu else "dry-cpu",
            "device": torch.cuda.get_device_name() if on_gpu else "cpu",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "cuda": torch.version.cuda},
            "model": {**profile["model"], "parameters": parameters, "train": train_base, "generate": generate_base},
            "train": trained,
            "generate": {stage: {key: value for key, value in entry.items() if key not in ("answers", "token_ids")}
                         for stage, entry in generated.items()},
            "prompts_whose_greedy_tokens_changed": changed,
            "sft_effect_kept_on_4bit": kept,
            "peak_gib": max(peaks) if peaks else None,
            "wall_seconds": time.perf_counter() - started,
        }
        # A dry run checks the flow only: its numbers stay in the temporary folder.
        out = RESULT_PATH if on_gpu else work / "gpu_smoke.dry-cpu.json"
        write_json(out, record)

    def gib(value):
        return f"{value:.2f}" if value is not None else "n/a"

    print(f"device: {record['device']} ({record['mode']}); model: {parameters:,} parameters; training "
          f"{train_base['quantization']}/{train_base['dtype']}, generation {generate_base['quantization']}")
    print()
    rows = [[stage, f"{entry['steps']} steps x {entry['batch_size']} x {entry['max_length']}", str(entry["tokens"]),
             f"{entry['seconds']:.2f}", f"{entry['tokens_per_s']:.0f}", gib(entry["peak_gib"])]
            for stage, entry in trained.items()]
    rows += [[f"generate {stage}", f"{TASK_PROMPTS} prompts, batch {profile['generate']['batch_size']}",
              str(entry["tokens"]), f"{entry['seconds']:.2f}", f"{entry['tokens_per_s']:.0f}", gib(entry["peak_gib"])]
             for stage, entry in generated.items()]
    print_table(["phase", "work", "tokens", "seconds", "tokens/s", "peak GiB"], rows, left=2)
    print()
    print(f"prompts whose greedy tokens changed: base→sft {changed['sft']}, sft→dpo {changed['dpo']} "
          f"(of {TASK_PROMPTS}); SFT effect kept on the 4-bit base: {kept:.3f}")
    written = out.relative_to(ROOT) if on_gpu else "nothing (dry run; the record stays in a temporary folder)"
    print(f"written: {written}")
    suffix = "" if on_gpu else " mode=dry-cpu"
    print(f"RESULT gpu_smoke sft_tokens_per_s={trained['sft']['tokens_per_s']:.0f} "
          f"dpo_pairs_per_s={trained['dpo']['rows_per_s']:.1f} gen_tokens_per_s={generated['dpo']['tokens_per_s']:.0f} "
          f"peak_gib={gib(record['peak_gib'])} effect_kept={kept:.3f}{suffix}")
    failures = [f"the {stage.upper()} adapter changed no greedy token" for stage, count in changed.items() if not count]
    if kept < MIN_EFFECT_KEPT:
        failures.append(f"the SFT adapter keeps {kept:.3f} of its effect on the 4-bit base (< {MIN_EFFECT_KEPT})")
    for failure in failures:
        print(f"FAIL gpu_smoke: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
