"""Loading a base model, its tokenizer and a chain of LoRA adapters: the one code path every stage uses.

The tiny model the default recipe builds and a hub checkpoint such as llm-jp/llm-jp-3-13b go through
the same `from_pretrained` calls; only the recipe's `base_model` section differs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

METADATA_FILE = "tunesmith.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


class ModelError(RuntimeError):
    """A model that cannot be loaded as the recipe asks; the message says which key to change."""


def device() -> torch.device:
    """This process's device: with several training processes, each has its own GPU (LOCAL_RANK)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def quantization_config(section: dict):
    """bitsandbytes settings for QLoRA, or None. Refuses to quantise without CUDA, before loading:
    bitsandbytes 0.50's CPU path silently yields no LoRA gradients after any eval-mode forward."""
    kind = section["quantization"]
    if kind == "none":
        return None
    if not torch.cuda.is_available():
        raise ModelError(
            f"base_model.quantization is '{kind}', which needs a CUDA GPU, and none is present. "
            "Training a bitsandbytes-quantised model on CPU silently produces no LoRA gradients; "
            "set base_model.quantization: none (and dtype: float32) to run on CPU."
        )
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_DTYPES[section["compute_dtype"]],
    )


def load_tokenizer(base_path: str, section: dict, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=section["trust_remote_code"])
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(base_path: str, section: dict, adapters: list[str] = (), on: torch.device | None = None):
    """The base model with each adapter of the chain merged in, in order (continued pretraining, SFT,
    DPO), on this process's device or `on`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    quantization = quantization_config(section)
    model = AutoModelForCausalLM.from_pretrained(
        base_path,
        dtype=_DTYPES[section["dtype"]],
        quantization_config=quantization,
        trust_remote_code=section["trust_remote_code"],
        device_map={"": on or device()} if quantization is not None else None,
    )
    if quantization is None:
        model.to(on or device())
    for adapter in adapters:
        log.info("merging adapter %s", adapter)
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def export_merged(base_path: str, section: dict, adapters: list[str], out_dir: str,
                  on: torch.device | None = None) -> None:
    """A standalone model folder (safetensors + tokenizer) with the adapter chain merged in, for users
    who upload a full model (and for vLLM). The base is loaded unquantised (in `dtype`) so the merge
    is exact."""
    from tunesmith.atomic import atomic_path

    unquantised = {**section, "quantization": "none"}
    model = load_model(base_path, unquantised, adapters=adapters, on=on)
    tokenizer = load_tokenizer(base_path, section)
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_metadata(tmp, stage="export", base_model=base_path, adapters=list(adapters))


def write_metadata(folder: str | os.PathLike, **fields) -> None:
    (Path(folder) / METADATA_FILE).write_text(json.dumps(fields, ensure_ascii=False, indent=2) + "\n")


def read_metadata(folder: str | os.PathLike) -> dict:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise ModelError(f"{folder}: no {METADATA_FILE}; it was not written by tunesmith")
    return json.loads(path.read_text())
