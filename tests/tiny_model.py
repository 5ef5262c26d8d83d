"""The tiny model, its curated data and its CPT/SFT/DPO adapters, built once per test session.

Import the fixtures into a test module (`from tiny_model import tiny, sft_adapter`). pytest makes a
separate fixture of each import, so the builds are cached here, by name, for the whole process:
however many modules import them, the model is pretrained and each adapter trained once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from tunesmith.config.recipe import validate_recipe

PRETRAIN_TEXT = str(REPO / "data" / "raw" / "pretrain.txt")
TASKS = str(REPO / "data" / "tasks.jsonl")
SEED = 7
BUILD = dict(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             pretrain_steps=5, max_length=64)
TRAINING = dict(max_length=64, per_device_train_batch_size=4, warmup_steps=0, logging_steps=1, lora={"r": 4, "lora_alpha": 8})
SFT = dict(TRAINING, max_steps=5)
DPO = dict(TRAINING, max_steps=3)
CPT = dict(TRAINING, max_steps=3)


def recipe() -> dict:
    """The default recipe shrunk to the tiny sizes above, defaults filled (a fresh copy each call)."""
    with open(REPO / "recipes" / "default.yaml", encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    raw["base_model"]["build"].update(BUILD)
    for section, overrides in (("sft", SFT), ("dpo", DPO), ("continued_pretraining", CPT)):
        raw.setdefault(section, {"lora": {}})
        raw[section].update({key: value for key, value in overrides.items() if key != "lora"})
        raw[section]["lora"].update(overrides["lora"])
    return validate_recipe(raw)


@dataclass(frozen=True)
class Tiny:
    recipe: dict
    tokenizer_dir: str
    base_dir: str
    sft_data: str
    preference_data: str

    def section(self, name: str) -> dict:
        """A copy of one recipe section, safe to change in a test."""
        return copy.deepcopy(self.recipe[name])


@dataclass(frozen=True)
class SftRun:
    path: str
    result: dict
    trainer: object  # the SFTTrainer that trained it, to inspect its dataset and arguments


_built: dict[str, object] = {}


def _once(name: str, build):
    if name not in _built:
        _built[name] = build()
    return _built[name]


def _build_tiny(root: Path) -> Tiny:
    from tunesmith.data.curate import curate
    from tunesmith.model.base_model import pretrain_base, train_tokenizer

    settings = recipe()
    train_tokenizer([PRETRAIN_TEXT], BUILD["vocab_size"], root / "tokenizer")
    pretrain_base(str(root / "tokenizer"), [PRETRAIN_TEXT], settings["base_model"]["build"], SEED, str(root / "base"))
    data = {}
    for role in ("sft", "preference"):
        data[role] = str(root / "curated" / f"{role}.parquet")
        curate(settings["sources"], role, TASKS, settings["curate"], data[role],
               str(root / "curated" / f"{role}.quarantine.parquet"), str(root / "curated" / f"{role}.card.json"))
    return Tiny(settings, str(root / "tokenizer"), str(root / "base"), data["sft"], data["preference"])


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    """Tokenizer (vocab 500), a 2-layer Llama pretrained 5 steps, and curated sft/preference Parquet."""
    return _once("tiny", lambda: _build_tiny(tmp_path_factory.mktemp("tiny")))


def _recording_trainer(train) -> tuple:
    """Run `train()` with trl's SFTTrainer recording its instance; returns (result, trainer)."""
    return _recording("SFTTrainer", train)


def _train_sft(tiny: Tiny, out_dir: Path) -> SftRun:
    from tunesmith.training.train import train_sft

    result, trainer = _recording_trainer(lambda: train_sft(
        tiny.base_dir, tiny.section("base_model"), tiny.section("template"), tiny.section("sft"), tiny.sft_data,
        SEED, str(out_dir)))
    return SftRun(str(out_dir), result, trainer)


@pytest.fixture(scope="session")
def sft_adapter(tiny, tmp_path_factory) -> SftRun:
    """A LoRA SFT adapter trained 5 steps on the curated SFT data."""
    return _once("sft", lambda: _train_sft(tiny, tmp_path_factory.mktemp("adapters") / "sft"))


def _recording(trainer_name: str, train) -> tuple:
    """Run `train()` with trl's `trainer_name` class recording its instance; returns (result, trainer)."""
    import trl

    trainers = []
    original = getattr(trl, trainer_name)

    class Recording(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trl, trainer_name, Recording)
        result = train()
    return result, trainers[0]


@dataclass(frozen=True)
class DpoRun:
    path: str
    trainer: object  # the DPOTrainer that trained it: its datasets hold the reference log-probabilities


def _train_dpo(tiny: Tiny, sft: SftRun, out_dir: Path) -> DpoRun:
    from tunesmith.training.train import train_dpo

    _, trainer = _recording("DPOTrainer", lambda: train_dpo(
        tiny.base_dir, tiny.section("base_model"), tiny.section("template"), tiny.section("dpo"),
        tiny.preference_data, sft.path, SEED, str(out_dir)))
    return DpoRun(str(out_dir), trainer)


def _train_cpt(tiny: Tiny, out_dir: Path) -> SftRun:
    from tunesmith.training.train import train_cpt

    result, trainer = _recording_trainer(lambda: train_cpt(
        tiny.base_dir, tiny.section("base_model"), tiny.section("continued_pretraining"), [PRETRAIN_TEXT], SEED,
        str(out_dir)))
    return SftRun(str(out_dir), result, trainer)


@pytest.fixture(scope="session")
def cpt_adapter(tiny, tmp_path_factory) -> SftRun:
    """A LoRA continued-pretraining adapter trained 3 steps on the shipped pretrain text."""
    return _once("cpt", lambda: _train_cpt(tiny, tmp_path_factory.mktemp("adapters") / "cpt"))


@pytest.fixture(scope="session")
def dpo_run(tiny, sft_adapter, tmp_path_factory) -> DpoRun:
    """A LoRA DPO adapter trained 3 steps on top of the frozen SFT adapter, and its trainer."""
    return _once("dpo", lambda: _train_dpo(tiny, sft_adapter, tmp_path_factory.mktemp("adapters") / "dpo"))


@pytest.fixture(scope="session")
def dpo_adapter(dpo_run) -> str:
    """The DPO adapter folder (standalone: base + SFT + DPO)."""
    return dpo_run.path
