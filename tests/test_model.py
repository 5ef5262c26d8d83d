"""Model loading: the quantisation guard, adapter metadata, and adapter chains merged in order."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_model import cpt_adapter, dpo_adapter, recipe, sft_adapter, tiny  # noqa: F401  (fixtures)
from tunesmith.model import ModelError, load_model, quantization_config, read_metadata, write_metadata


def base_section(**overrides) -> dict:
    return {**recipe()["base_model"], **overrides}


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantization_is_refused_without_cuda(monkeypatch, kind):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="CUDA") as error:
        quantization_config(base_section(quantization=kind))
    assert "base_model.quantization" in str(error.value)


def test_no_quantization_is_none():
    assert quantization_config(base_section(quantization="none")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bitsandbytes 4-bit)")
def test_nf4_on_cuda_is_a_bitsandbytes_config():
    from transformers import BitsAndBytesConfig

    config = quantization_config(base_section(quantization="nf4", compute_dtype="bfloat16"))
    assert isinstance(config, BitsAndBytesConfig)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config(base_section(quantization="int8")).load_in_8bit


def test_metadata_round_trips_and_is_required(tmp_path):
    with pytest.raises(ModelError, match="tunesmith.json"):
        read_metadata(tmp_path)
    write_metadata(tmp_path, stage="sft", template_hash="abc", note="日本語")
    assert read_metadata(tmp_path) == {"stage": "sft", "template_hash": "abc", "note": "日本語"}


def _merged_by_hand(base_dir: str, adapters: list[str]):
    """W + (alpha / r) * B @ A for every LoRA pair, adapter after adapter, without peft."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    state = model.state_dict()
    for adapter in adapters:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
        assert not config.get("use_rslora") and not config.get("use_dora")
        scale = config["lora_alpha"] / config["r"]
        weights = load_file(f"{adapter}/adapter_model.safetensors")
        pairs = [name for name in weights if name.endswith(".lora_A.weight")]
        assert pairs
        for name in pairs:
            module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            low_rank_b = weights[name.replace(".lora_A.", ".lora_B.")]
            state[f"{module}.weight"] += scale * low_rank_b @ weights[name]
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("with_cpt", [False, True], ids=["sft_dpo", "cpt_sft_dpo"])
def test_adapter_chain_equals_merging_by_hand(tiny, cpt_adapter, sft_adapter, dpo_adapter, with_cpt):
    from transformers import AutoTokenizer

    chain = ([cpt_adapter.path] if with_cpt else []) + [sft_adapter.path, dpo_adapter]
    loaded = load_model(tiny.base_dir, tiny.section("base_model"), adapters=chain).eval()
    assert not any("lora" in name for name in loaded.state_dict())
    base = load_model(tiny.base_dir, tiny.section("base_model")).eval()
    by_hand = _merged_by_hand(tiny.base_dir, chain)
    tokenizer = AutoTokenizer.from_pretrained(tiny.base_dir)
    batch = tokenizer(["### 指示\nねこ\n### 回答\n", "3と5を足すと?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected, got, unadapted = (model(**batch).logits for model in (by_hand, loaded, base))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, unadapted, atol=1e-4)


def test_each_training_process_loads_on_its_own_gpu(monkeypatch):
    from tunesmith.model import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device() == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device() == torch.device("cpu")
