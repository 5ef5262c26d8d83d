"""The adapter folders every training stage writes, each a standalone LoRA adapter of its whole chain.

A stage trains a new LoRA adapter on top of the frozen, unmerged adapter of the stage beneath it
(continued pretraining under SFT, SFT under DPO). LoRA updates add, W + s1·B1·A1 + s2·B2·A2, so the
chain is exactly one LoRA adapter of rank r1 + r2 whose A stacks s1·A1 over s2·A2 and whose B sits
B1 beside B2, with scale 1 (peft's `add_weighted_adapter(..., combination_type="cat")`). A module
that only some adapters target gets their rows and zeros for the rest, so the sum stays exact when
the stages adapt different modules. Nothing is ever merged into the base weights, which on a 4-bit
base would round most of a realistic update away.

Layout of `results/<stage>/<key>/adapter/`:

    adapter_config.json          the standalone adapter: the chain (cpt + sft [+ dpo]) on the raw base,
    adapter_model.safetensors    rank Σr, lora_alpha Σr; `base_model_name_or_path` is the base's absolute
                                 path (a hub id stays a hub id), so from any working directory
                                 `AutoPeftModelForCausalLM.from_pretrained(folder)` is the model
                                 tunesmith generates with
    trained/                     only when adapters lie beneath: the adapter this stage trained, alone
                                 (what `dpo.start: continue_sft` keeps training)
    tunesmith.json               stage, template hash, base, the chain, rows trained, dropped and truncated
    training_log.csv, training_curves.png

The concatenation works on the saved files, not on a model in memory, so it is the same on one
process, under DDP, FSDP or ZeRO-3 (whose in-memory adapters are sharded), and needs no GPU.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
TRAINED_FOLDER = "trained"
METADATA_FILE = "tunesmith.json"  # what tunesmith records of a stage's adapter (or export) beside it (model.write_metadata)
_PAIR = (".lora_A.weight", ".lora_B.weight")


class AdapterError(ValueError):
    """An adapter folder that cannot be read or combined exactly."""


def base_reference(base_path: str) -> str:
    """What an adapter records as its base: a local folder by absolute path (a relative one only works
    from the folder it was written in), anything else (a hub id) as given."""
    return os.path.abspath(base_path) if os.path.isdir(base_path) else base_path


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise AdapterError(f"{folder}: no {CONFIG}; not a peft adapter folder")
    return json.loads(path.read_text(encoding="utf-8"))


def trained_part(folder: str | os.PathLike) -> str:
    """The adapter a stage trained by itself: `trained/` when adapters lie beneath it, else the folder."""
    inner = Path(folder) / TRAINED_FOLDER
    return str(inner if (inner / CONFIG).is_file() else folder)


def _check_plain_lora(folder, config: dict) -> None:
    """Only what one scale per adapter can express: no rsLoRA, DoRA, per-module ranks or extra modules."""
    unsupported = [key for key in ("use_rslora", "use_dora") if config.get(key)]
    unsupported += [key for key in ("rank_pattern", "alpha_pattern") if config.get(key)]
    unsupported += [key for key in ("modules_to_save", "trainable_token_indices") if config.get(key)]
    if config.get("peft_type") != "LORA" or config.get("bias", "none") != "none" or unsupported:
        raise AdapterError(f"{folder}: only plain LoRA adapters (no bias, {', '.join(unsupported) or 'patterns'}) "
                           "can be concatenated exactly")


def _lora_pairs(folder) -> tuple[float, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The adapter's scale (alpha / r) and its (A, B) weights by module name."""
    from safetensors.torch import load_file

    config = read_config(folder)
    _check_plain_lora(folder, config)
    weights = load_file(Path(folder) / WEIGHTS)
    modules = {name.removesuffix(_PAIR[0]) for name in weights if name.endswith(_PAIR[0])}
    pairs = {module: (weights[module + _PAIR[0]].float(), weights[module + _PAIR[1]].float()) for module in modules}
    if not pairs or len(pairs) * 2 != len(weights):
        raise AdapterError(f"{folder}: {WEIGHTS} holds weights other than LoRA A/B pairs")
    return config["lora_alpha"] / config["r"], pairs


def concatenate(folders: list[str], out_dir: str | os.PathLike, base_path: str) -> dict:
    """Write into `out_dir` one adapter equal to all of `folders` applied together (their updates
    summed), laid out as peft's `add_weighted_adapter(combination_type="cat")` lays it out. Weights are
    float32, so folding each adapter's scale into A rounds nothing. Returns the config written."""
    from safetensors.torch import save_file

    loaded = [_lora_pairs(folder) for folder in folders]
    configs = [read_config(folder) for folder in folders]
    rank = sum(config["r"] for config in configs)
    tensors = {}
    for module in sorted(set().union(*(pairs for _, pairs in loaded))):
        present = [(scale, pairs[module]) for scale, pairs in loaded if module in pairs]
        down = torch.cat([scale * low_rank_a for scale, (low_rank_a, _) in present])
        up = torch.cat([low_rank_b for _, (_, low_rank_b) in present], dim=1)
        # The rows of adapters that do not adapt this module are zero: they add nothing.
        tensors[module + _PAIR[0]] = torch.cat([down, down.new_zeros(rank - down.shape[0], down.shape[1])])
        tensors[module + _PAIR[1]] = torch.cat([up, up.new_zeros(up.shape[0], rank - up.shape[1])], dim=1)
    targets = sorted(set().union(*(_target_names(config) for config in configs)))
    config = {**configs[0], "r": rank, "lora_alpha": rank, "target_modules": targets,
              "base_model_name_or_path": base_reference(base_path), "inference_mode": True}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, out_dir / WEIGHTS,
              metadata={"format": "pt"})
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return config


def _target_names(config: dict) -> set[str]:
    targets = config["target_modules"]
    if isinstance(targets, str):
        raise AdapterError("a target_modules regex cannot be concatenated; list the module names")
    return set(targets)


def set_base(folder: str | os.PathLike, base_path: str) -> None:
    """Point an adapter saved by trl/peft at the base by a path that works from any working directory, and list
    its target modules in one order, so that a rerun writes the same bytes."""
    path = Path(folder) / CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_reference(base_path)
    config["inference_mode"] = True
    if isinstance(config.get("target_modules"), list):  # peft writes a set: its order changes from run to run
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def finish_stage_folder(folder: str | os.PathLike, beneath: str | None, base_path: str) -> None:
    """Turn the trainer's output in `folder`/trained (the adapter this stage trained, with peft's copies
    of any other adapter in subfolders) into the layout above."""
    folder, trained = Path(folder), Path(folder) / TRAINED_FOLDER
    for entry in trained.iterdir():  # peft saves every adapter of the model; only the trained one is ours
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.name not in (CONFIG, WEIGHTS):
            entry.unlink()
    set_base(trained, base_path)
    if beneath is None:
        for name in (CONFIG, WEIGHTS):
            os.replace(trained / name, folder / name)
        trained.rmdir()
        return
    concatenate([beneath, str(trained)], folder, base_path)

