"""Benchmark (issue 4): QLoRA nf4 SFT and batched generation on a ~1B-parameter Llama, on one GPU.

    python bench/gpu_smoke.py             # CUDA machine: measures, writes bench/results/gpu_smoke.json
    python bench/gpu_smoke.py --dry-cpu   # anywhere: the same flow on CPU, tiny model, no quantisation

GPU machines here reach no hub, so the model is a randomly initialised Llama built from a config
(hidden 2048, 16 layers, intermediate 5632, 32k vocabulary: about 1B parameters) with a byte-level BPE
tokenizer trained here on data/raw/pretrain.txt; random weights train and generate as fast as real
ones. The package's own code paths run on it: `tunesmith.train.train_sft` with the QLoRA recipe's
SFT settings (recipes/llm-jp-3-13b-qlora.yaml: nf4, bf16 compute, LoRA r=32 on every projection,
activation checkpointing) for a few steps of `wrapped`-packed sequences, then
`tunesmith.model.load_model` with the adapter merged and `tunesmith.generate.generate_batched` on
100 task prompts. It records peak GPU memory (torch.cuda.max_memory_allocated, training and
generation separately), training and generation tokens/s and the device. Without CUDA (CI) it prints
`SKIP gpu_smoke: ...` and exits 0. Ends with
`RESULT gpu_smoke train_tokens_per_s=... gen_tokens_per_s=... peak_gib=...`.
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

PROFILES = {
    # About 1B parameters: 16 × 51.4M in the layers + 2 × 65.5M for embeddings and LM head.
    "gpu": dict(
        model=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                   num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048),
        base_model=dict(quantization="nf4", dtype="bfloat16", compute_dtype="bfloat16"),
        train=dict(max_steps=20, batch_size=4, max_length=512),
        generate=dict(batch_size=16, max_new_tokens=64),
        threads=4,
    ),
    # The same flow at toy size, quantisation off: bitsandbytes must not train on CPU.
    "dry-cpu": dict(
        model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, vocab_size=3200, max_position_embeddings=256),
        base_model=dict(quantization="none", dtype="float32", compute_dtype="float32"),
        train=dict(max_steps=4, batch_size=4, max_length=128),
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
    with torch.device(device):  # initialising 1B parameters is seconds on a GPU, minutes on CPU
        model = LlamaForCausalLM(config).to(dtype)
    parameters = model.num_parameters()
    base = work / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    del model
    release_memory()
    return base, parameters


def curated_sft(work: Path, recipe: dict) -> Path:
    """The workflow's curated SFT Parquet (a copy), or one curated here from the shipped data."""
    from tunesmith.curate import curate

    curated, target = stored(recipe, "curate_sft", "sft.parquet"), work / "sft.parquet"
    if curated.is_file():
        shutil.copyfile(curated, target)
    else:
        curate(sources=recipe["sources"], role="sft", tasks_path=recipe["tasks"]["path"], settings=recipe["curate"],
               kept_path=str(target), quarantine_path=str(work / "sft.quarantine.parquet"),
               card_path=str(work / "sft.card.json"))
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


def train(work: Path, base: Path, base_section: dict, recipe: dict, dataset: Path, shape: dict, threads: int,
          on_gpu: bool) -> dict:
    """A few QLoRA SFT steps of wrapped-packed sequences through train_sft. The tokens are trl's own
    count of the non-padding tokens it trained on (`num_tokens` in the last log row)."""
    from tunesmith.train import train_sft

    sft = {**recipe["sft"], **shape, "gradient_accumulation_steps": 1, "packing": True,
           "packing_strategy": "wrapped", "save_steps": 0, "warmup_steps": 2,
           "logging_steps": 5}
    adapter = work / "adapter"
    start_peak(on_gpu)
    with quiet(work / "train.log"):
        result = train_sft(base_path=str(base), base_section=base_section, template_section=recipe["template"],
                           sft=sft, dataset_path=str(dataset), seed=recipe["seed"], out_dir=str(adapter),
                           threads=threads)
    peak = peak_gib(on_gpu)
    with open(adapter / "training_log.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    steps, runtime = int(float(last["step"])), float(last["train_runtime"])
    tokens = int(float(last["num_tokens"]))
    release_memory()
    return {"adapter": adapter, "steps": steps, "batch_size": sft["batch_size"], "max_length": sft["max_length"],
            "tokens": tokens, "seconds": runtime, "tokens_per_s": tokens / runtime, "loss": result["train_loss"],
            "peak_gib": peak}


def generate(work: Path, base: Path, base_section: dict, recipe: dict, adapter: Path, settings: dict, seed: int,
             on_gpu: bool) -> dict:
    """generate_batched on the first 100 task prompts with the adapter merged into the (4-bit) base.
    Generated tokens are counted at model.generate: every new token that is not padding after EOS."""
    from tunesmith.generate import generate_batched
    from tunesmith.model import load_model, load_tokenizer
    from tunesmith.tasks import read_tasks
    from tunesmith.template import PromptTemplate

    tokenizer = load_tokenizer(str(base), base_section, padding_side="left")
    start_peak(on_gpu)
    with quiet(work / "generate.log"):
        model = load_model(str(base), base_section, adapters=[str(adapter)])
    template = PromptTemplate(recipe["template"])
    tasks = read_tasks(ROOT / recipe["tasks"]["path"])[:TASK_PROMPTS]
    prompts = [template.render_prompt(task.prompt_text, tokenizer) for task in tasks]
    counts = []
    plain_generate = model.generate

    def counting_generate(*args, **kwargs):
        output = plain_generate(*args, **kwargs)
        new_tokens = output[:, kwargs["input_ids"].shape[1]:]
        counts.append(int((new_tokens != tokenizer.pad_token_id).sum()))
        return output

    model.generate = counting_generate
    generation = {**recipe["generate"], **settings, "do_sample": False, "stop_strings": []}
    with quiet(work / "generate.log"):
        started = time.perf_counter()
        answers = generate_batched(model, tokenizer, prompts, generation, seed)
        seconds = time.perf_counter() - started
    peak = peak_gib(on_gpu)
    del model
    release_memory()
    tokens = sum(counts)
    return {"prompts": len(answers), "batch_size": generation["batch_size"],
            "max_new_tokens": generation["max_new_tokens"], "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_gib": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-cpu", action="store_true",
                        help="run the same flow on CPU with a tiny model and no quantisation (checks the script)")
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
    transformers.logging.set_verbosity_error()  # also turns off the trainer's progress bar
    from tunesmith.atomic import write_json
    from tunesmith.model import device
    from tunesmith.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes/llm-jp-3-13b-qlora.yaml")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-smoke-") as scratch:
        work = Path(scratch)
        try:
            base_section = {**recipe["base_model"], **profile["base_model"], "path": None}
            with quiet(work / "prepare.log"):
                dtype = getattr(torch, base_section["dtype"])
                base, parameters = build_random_llama(work, profile["model"], dtype, device())
                dataset = curated_sft(work, recipe)
            base_section["path"] = str(base)
            trained = train(work, base, base_section, recipe, dataset, profile["train"], profile["threads"], on_gpu)
            generated = generate(work, base, base_section, recipe, trained["adapter"], profile["generate"],
                                 recipe["seed"], on_gpu)
        except BaseException:
            for log_name in ("prepare.log", "train.log", "generate.log"):
                if (work / log_name).is_file():
                    sys.stderr.write(f"--- {log_name} (tail)\n")
                    sys.stderr.write((work / log_name).read_text(encoding="utf-8")[-4000:])
            raise
        peaks = [peak for peak in (trained["peak_gib"], generated["peak_gib"]) if peak is not None]
        record = {
            "mode": "gpu" if on_gpu else "dry-cpu",
            "device": torch.cuda.get_device_name() if on_gpu else "cpu",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "cuda": torch.version.cuda},
            "model": {**profile["model"], "parameters": parameters, **profile["base_model"]},
            "train": {key: value for key, value in trained.items() if key != "adapter"},
            "generate": generated,
            "peak_gib": max(peaks) if peaks else None,
            "wall_seconds": time.perf_counter() - started,
        }
        # A dry run checks the flow only: its numbers stay in the temporary folder.
        out = RESULT_PATH if on_gpu else work / "gpu_smoke.dry-cpu.json"
        write_json(out, record)

    def gib(value):
        return f"{value:.2f}" if value is not None else "n/a"

    print(f"device: {record['device']} ({record['mode']}); model: {parameters:,} parameters, "
          f"quantization {base_section['quantization']}, dtype {base_section['dtype']}")
    print()
    work_train = f"{trained['steps']} steps x {trained['batch_size']} x {trained['max_length']} packed"
    work_generate = (f"{generated['prompts']} prompts, batch {generated['batch_size']}, "
                     f"<= {generated['max_new_tokens']} new tokens")
    print_table(["phase", "work", "tokens", "seconds", "tokens/s", "peak GiB"],
                [[phase, done, str(entry["tokens"]), f"{entry['seconds']:.2f}", f"{entry['tokens_per_s']:.0f}",
                  gib(entry["peak_gib"])]
                 for phase, done, entry in (("train", work_train, trained), ("generate", work_generate, generated))],
                left=2)
    print()
    written = out.relative_to(ROOT) if on_gpu else "nothing (dry run; the record stays in a temporary folder)"
    print(f"written: {written}")
    suffix = "" if on_gpu else " mode=dry-cpu"
    print(f"RESULT gpu_smoke train_tokens_per_s={trained['tokens_per_s']:.0f} "
          f"gen_tokens_per_s={generated['tokens_per_s']:.0f} peak_gib={gib(record['peak_gib'])}{suffix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
