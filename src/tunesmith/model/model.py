"""Loading a base model, its tokenizer and LoRA adapters: the one code path every stage uses.

The tiny model the default recipe builds and a hub checkpoint such as llm-jp/llm-jp-3-13b in 4-bit
go through the same `from_pretrained` calls; only the recipe's `base_model` section differs.
Adapters are never merged into the weights a stage runs on (on a 4-bit base a merge re-quantises the
sum and rounds a realistic update almost entirely away): generation loads one standalone adapter
folder (`tunesmith.model.adapters`) unmerged, and training stacks its new adapter on the frozen adapter
of the stage beneath. Only `tunesmith.hub.export` merges, on CPU and unquantised, where it is exact.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from tunesmith.model.adapters import METADATA_FILE

log = logging.getLogger(__name__)

TRAINED_ADAPTER = "default"  # peft's name for the adapter a stage trains: the trainer saves it at the folder's root
BENEATH = "beneath"  # the frozen adapter of the stage below
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


class ModelError(RuntimeError):
    """A model that cannot be loaded as the recipe asks; the message says which key to change."""


def device() -> torch.device:
    """This process's device: with several training processes, each has its own GPU (LOCAL_RANK)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def can_train_quantised() -> bool:
    """Whether this machine can train a bitsandbytes-quantised base: CUDA. (Tests that build, but never train,
    a trainer on an nf4 base on the CPU replace this.)"""
    return torch.cuda.is_available()


def refuse_quantised_training_here(jobs: dict[str, dict]) -> None:
    """Refuse a workflow that would train a quantised base on this machine without CUDA, before any job runs (the
    workflow's `onstart`; not for dry runs or jobs sent to a cluster). `jobs` maps each training job to its
    `base_model` section."""
    quantised = sorted(job for job, section in jobs.items() if section["quantization"] != "none")
    if quantised and not can_train_quantised():
        kind = jobs[quantised[0]]["quantization"]
        raise ModelError(
            f"base_model.quantization is '{kind}', which needs a CUDA GPU to train, and this machine has none "
            f"(jobs {', '.join(quantised)}); nothing was run. Run on a GPU machine, send the jobs to a cluster "
            "(--executor slurm, or a profile), plan with snakemake -n, or set base_model.quantization: none "
            "(and dtype: float32) to train on CPU"
        )


def trainable_in_float32(model, section: dict) -> int:
    """Put the trainable (adapter) parameters back in float32; returns how many were not. trl 1.16's SFT, DPO and
    KTO trainers cast them to bf16 on a quantised base ("QLoRA ... converted to bf16"), with no float32 master
    copy: an AdamW step at a preference learning rate (5e-6) is then below bf16's resolution for most entries of
    lora_A, which never move. In float32 they do, and autocast still computes in bf16 (`bf16` on a GPU). Under
    DeepSpeed ZeRO-3 on an unquantised base the adapters stay in the base's dtype (see `trainable_model`):
    DeepSpeed's optimiser keeps float32 master weights itself."""
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" and section["quantization"] == "none":
        return 0
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            cast += 1
    return cast


def quantization_config(section: dict, training: bool = False):
    """bitsandbytes settings for QLoRA, or None. Training a quantised base is refused without CUDA,
    before loading: bitsandbytes 0.50's CPU path silently yields no LoRA gradients after any eval-mode
    forward. Inference on CPU works (and is how the tests see what 4-bit weights do to an adapter)."""
    kind = section["quantization"]
    if kind == "none":
        return None
    if training and not can_train_quantised():
        raise ModelError(
            f"base_model.quantization is '{kind}', which needs a CUDA GPU to train, and none is present. "
            "Training a bitsandbytes-quantised model on CPU silently produces no LoRA gradients; "
            "set base_model.quantization: none (and dtype: float32) to train on CPU."
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


def check_eos(tokenizer, base_path: str) -> None:
    """Refuse to train when EOS written as text (as trl appends it to every completion) does not encode
    to `eos_token_id`: a model trained on its pieces never learns to stop."""
    eos = tokenizer.eos_token
    ids = tokenizer("回答" + eos, add_special_tokens=False)["input_ids"] if eos else []
    if not eos or tokenizer.eos_token_id is None or ids[-1:] != [tokenizer.eos_token_id]:
        pieces = tokenizer.convert_ids_to_tokens(ids[-4:]) if ids else []
        raise ModelError(
            f"{base_path}: the tokenizer's EOS {eos!r} (id {tokenizer.eos_token_id}) does not encode to its id when "
            f"appended to text (it becomes {pieces}); training would teach a model that never stops. Use a tokenizer "
            "whose eos_token is a registered special token (base_model.path)"
        )


def load_base(base_path: str, section: dict, training: bool = False, on: torch.device | None = None):
    """The base model, quantised as the recipe says, on this process's device or `on`."""
    from transformers import AutoModelForCausalLM

    quantization = quantization_config(section, training=training)
    model = AutoModelForCausalLM.from_pretrained(
        base_path,
        dtype=_DTYPES[section["dtype"]],
        quantization_config=quantization,
        trust_remote_code=section["trust_remote_code"],
        device_map={"": on or device()} if quantization is not None else None,
    )
    if quantization is None:
        model.to(on or device())
    return model


def load_model(base_path: str, section: dict, adapter: str | None = None, on: torch.device | None = None):
    """A stage's model for inference: the base with the stage's standalone adapter applied unmerged."""
    from peft import PeftModel

    model = load_base(base_path, section, on=on)
    if adapter is None:
        return model.eval()
    log.info("applying adapter %s (unmerged)", adapter)
    return PeftModel.from_pretrained(model, adapter, is_trainable=False).eval()


def trainable_model(base_path: str, section: dict, beneath: str | None, new_adapter=None,
                    continue_adapter: str | None = None):
    """The model a stage trains: the base, the frozen adapter `beneath` (the stage below: its standalone
    folder) if any, and on top the adapter that trains, either new (`new_adapter`, a LoraConfig) or one
    trained before (`continue_adapter`, a folder). Both adapters are active; only the top one has
    gradients. It is peft's "default" adapter, so the trainer saves and resumes it alone."""
    from peft import PeftModel, get_peft_model

    # ZeRO-3 gathers parameters by the dtype of the first one: keep a bf16 base's adapters in bf16.
    zero3 = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" and section["quantization"] == "none"
    model = load_base(base_path, section, training=True)
    if beneath is None:
        if continue_adapter is not None:
            return PeftModel.from_pretrained(model, continue_adapter, is_trainable=True,
                                             autocast_adapter_dtype=not zero3)
        return get_peft_model(model, new_adapter, autocast_adapter_dtype=not zero3)
    model = PeftModel.from_pretrained(model, beneath, adapter_name=BENEATH, is_trainable=False,
                                      autocast_adapter_dtype=not zero3)
    if continue_adapter is not None:
        model.load_adapter(continue_adapter, adapter_name=TRAINED_ADAPTER, is_trainable=True,
                           autocast_adapter_dtype=not zero3)
    else:
        model.add_adapter(TRAINED_ADAPTER, new_adapter, autocast_adapter_dtype=not zero3)
    activate_stack(model)
    return model


def activate_stack(model) -> None:
    """Make the frozen adapter beneath and the trained one active together. transformers' resume
    (`_load_from_checkpoint`) re-activates the trained adapter alone, so training calls this again."""
    if BENEATH not in model.peft_config:
        return
    # The trained adapter first: the trainer treats the first active adapter as the one it trains.
    model.base_model.set_adapter([TRAINED_ADAPTER, BENEATH])
    model.active_adapter = TRAINED_ADAPTER
    model.set_requires_grad(BENEATH, requires_grad=False)
    model.set_requires_grad(TRAINED_ADAPTER, requires_grad=True)


def write_metadata(folder: str | os.PathLike, **fields) -> None:
    (Path(folder) / METADATA_FILE).write_text(json.dumps(fields, ensure_ascii=False, indent=2) + "\n")


def read_metadata(folder: str | os.PathLike) -> dict:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise ModelError(f"{folder}: no {METADATA_FILE}; it was not written by tunesmith")
    return json.loads(path.read_text())
