"""Model loading: what 4-bit weights do to an adapter, the quantisation guard, standalone adapter folders
(the chain concatenated exactly), export, and the EOS check."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_model import TASKS, cpt_adapter, dpo_adapter, dpo_run, recipe, sft_adapter, tiny  # noqa: F401  (fixtures)
from tunesmith.model.adapters import concatenate, read_config
from tunesmith.model.model import (
    ModelError, check_eos, load_model, load_tokenizer, quantization_config, read_metadata, write_metadata,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_section(**overrides) -> dict:
    return {**recipe()["base_model"], **overrides}


def task_prompts(tiny, count=8) -> list[str]:
    from tunesmith.data.tasks import read_tasks
    from tunesmith.model.template import PromptTemplate

    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    template = PromptTemplate(tiny.section("template"))
    return [template.render_prompt(task.prompt_text, tokenizer) for task in read_tasks(TASKS)[:count]]


def logits_of(model, tokenizer, prompts) -> torch.Tensor:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits.float()
    return logits[batch["attention_mask"].bool()]  # real tokens only


# --- quantisation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_training_a_quantised_base_is_refused_without_cuda(monkeypatch, kind):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="CUDA") as error:
        quantization_config(base_section(quantization=kind), training=True)
    assert "base_model.quantization" in str(error.value)


def test_inference_of_a_quantised_base_is_allowed_on_cpu(monkeypatch):
    from transformers import BitsAndBytesConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = quantization_config(base_section(quantization="nf4", compute_dtype="bfloat16"))
    assert isinstance(config, BitsAndBytesConfig)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config(base_section(quantization="int8")).load_in_8bit
    assert quantization_config(base_section(quantization="none"), training=True) is None


def realistic_adapter(base_dir: str, folder: Path, share: float = 0.01) -> Path:
    """A rank-32 LoRA adapter on every projection whose update is `share` of each weight's norm: the
    size a real lr-2e-4 QLoRA run's updates have (the tiny default's are far larger)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=32, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False))
    for module in model.modules():
        if isinstance(module, LoraLayer):
            ratio = module.get_delta_weight("default").norm() / module.base_layer.weight.norm()
            module.lora_B["default"].weight.data *= share / ratio
    model.save_pretrained(folder)
    return folder


def effect_kept(changed: torch.Tensor, unchanged: torch.Tensor, reference: torch.Tensor) -> float:
    """The share of the adapter's effect on the unquantised logits (`reference`) that the quantised
    model shows (`changed` - `unchanged`): the projection of one effect onto the other."""
    effect = changed - unchanged
    return float((effect * reference).sum() / (reference * reference).sum())


def test_an_adapter_keeps_its_effect_on_a_4bit_base_through_our_loading(tiny, tmp_path):
    """The difference the CPU proxy hid: a realistic (1% of the weight norm) update on an nf4 base.
    Merging it into the 4-bit weights (what generation and DPO did) rounds it away; our loading
    keeps it unmerged and keeps the effect."""
    from peft import PeftModel

    adapter = str(realistic_adapter(tiny.base_dir, tmp_path / "adapter"))
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    prompts = task_prompts(tiny)
    full = base_section(quantization="none", dtype="float32")
    nf4 = base_section(quantization="nf4", dtype="float32", compute_dtype="float32")
    reference = (logits_of(load_model(tiny.base_dir, full, adapter=adapter), tokenizer, prompts)
                 - logits_of(load_model(tiny.base_dir, full), tokenizer, prompts))
    quantised_base = logits_of(load_model(tiny.base_dir, nf4), tokenizer, prompts)
    ours = effect_kept(logits_of(load_model(tiny.base_dir, nf4, adapter=adapter), tokenizer, prompts),
                       quantised_base, reference)
    merged_model = PeftModel.from_pretrained(load_model(tiny.base_dir, nf4), adapter).merge_and_unload()
    merged = effect_kept(logits_of(merged_model, tokenizer, prompts), quantised_base, reference)
    print(f"\nshare of a 1% update's effect kept on nf4: our loading {ours:.3f}, merged into nf4 {merged:.3f}")
    assert ours >= 0.95
    assert merged < 0.5, "the merge no longer loses the update; the test no longer shows the difference"


# --- standalone adapters -----------------------------------------------------------------------------

def _adapter(base_dir: str, folder: Path, seed: int, r: int, alpha: int, targets: list[str]) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False))
    model.save_pretrained(folder)
    return str(folder)


def test_concatenated_chain_is_exactly_the_stacked_adapters_and_peft_cat(tiny, tmp_path):
    """Stages that adapt different modules with different ranks and scales still sum exactly."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    first = _adapter(tiny.base_dir, tmp_path / "first", 1, r=4, alpha=8, targets=["q_proj", "v_proj", "up_proj"])
    second = _adapter(tiny.base_dir, tmp_path / "second", 2, r=2, alpha=16, targets=["q_proj", "k_proj", "down_proj"])
    config = concatenate([first, second], tmp_path / "cat", tiny.base_dir)
    assert config["r"] == config["lora_alpha"] == 6
    assert set(config["target_modules"]) == {"q_proj", "v_proj", "up_proj", "k_proj", "down_proj"}

    stacked = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.base_dir), first, adapter_name="a")
    stacked.load_adapter(second, adapter_name="b")
    stacked.add_weighted_adapter(["a", "b"], [1.0, 1.0], "peft_cat", combination_type="cat")
    ours = load_file(tmp_path / "cat" / "adapter_model.safetensors")
    for name, module in stacked.named_modules():
        if hasattr(module, "lora_A") and "peft_cat" in module.lora_A:
            key = name.replace(".lora_A", "")
            torch.testing.assert_close(ours[f"{key}.lora_A.weight"], module.lora_A["peft_cat"].weight)
            torch.testing.assert_close(ours[f"{key}.lora_B.weight"], module.lora_B["peft_cat"].weight)

    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    prompts = task_prompts(tiny, 4)
    stacked.base_model.set_adapter(["a", "b"])
    both = logits_of(stacked.eval(), tokenizer, prompts)
    standalone = logits_of(load_model(tiny.base_dir, tiny.section("base_model"), adapter=str(tmp_path / "cat")),
                           tokenizer, prompts)
    torch.testing.assert_close(standalone, both, rtol=1e-4, atol=1e-5)
    stacked.base_model.set_adapter(["a"])
    assert not torch.allclose(logits_of(stacked, tokenizer, prompts), both, atol=1e-3), "the second adapter did nothing"


def _merged_by_hand(base_dir: str, chain: list[str]):
    """W + (alpha / r) * B @ A for every LoRA pair of every stage's own trained adapter, without peft."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    state = model.state_dict()
    for adapter in chain:
        config = read_config(adapter)
        scale = config["lora_alpha"] / config["r"]
        weights = load_file(f"{adapter}/adapter_model.safetensors")
        for name in [name for name in weights if name.endswith(".lora_A.weight")]:
            module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            state[f"{module}.weight"] += scale * weights[name.replace(".lora_A.", ".lora_B.")] @ weights[name]
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("with_cpt", [False, True], ids=["sft_dpo", "cpt_sft_dpo"])
def test_each_stage_folder_holds_its_whole_chain(tiny, cpt_adapter, sft_adapter, dpo_adapter, tmp_path, with_cpt):
    """The DPO folder alone is base + SFT + DPO (+ CPT), as each stage trained it."""
    from tunesmith.model.adapters import trained_part
    from tunesmith.training.train import train_dpo, train_sft

    if with_cpt:
        sft = tiny.section("sft") | {"max_steps": 2}
        train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), sft, tiny.sft_data, 7,
                  str(tmp_path / "sft"), base_adapters=[cpt_adapter.path])
        train_dpo(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), tiny.section("dpo"),
                  tiny.preference_data, str(tmp_path / "sft"), 7, str(tmp_path / "dpo"),
                  base_adapters=[cpt_adapter.path])
        sft_folder, dpo_folder, parts = str(tmp_path / "sft"), str(tmp_path / "dpo"), [cpt_adapter.path]
    else:
        sft_folder, dpo_folder, parts = sft_adapter.path, dpo_adapter, []
    parts += [trained_part(sft_folder), trained_part(dpo_folder)]
    assert len(set(parts)) == len(parts)
    metadata = read_metadata(dpo_folder)
    assert [step["stage"] for step in metadata["chain"]] == (["cpt"] if with_cpt else []) + ["sft", "dpo"]
    assert read_config(dpo_folder)["r"] == sum(step["r"] for step in metadata["chain"])
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    prompts = task_prompts(tiny, 4)
    loaded = logits_of(load_model(tiny.base_dir, tiny.section("base_model"), adapter=dpo_folder), tokenizer, prompts)
    torch.testing.assert_close(loaded, logits_of(_merged_by_hand(tiny.base_dir, parts), tokenizer, prompts),
                               rtol=1e-4, atol=1e-5)
    without_dpo = logits_of(_merged_by_hand(tiny.base_dir, parts[:-1]), tokenizer, prompts)
    assert not torch.allclose(loaded, without_dpo, atol=1e-4), "the DPO part changed nothing"


def test_an_adapter_folder_loads_standalone_from_any_directory(tiny, dpo_adapter, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    config = read_config(dpo_adapter)
    assert os.path.isabs(config["base_model_name_or_path"])
    assert config["base_model_name_or_path"] == os.path.abspath(tiny.base_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    prompts = task_prompts(tiny, 4)
    standard = AutoPeftModelForCausalLM.from_pretrained(dpo_adapter).eval()
    ours = load_model(tiny.base_dir, tiny.section("base_model"), adapter=dpo_adapter)
    torch.testing.assert_close(logits_of(standard, tokenizer, prompts), logits_of(ours, tokenizer, prompts))


def test_an_adapter_folder_loads_on_a_4bit_base_in_one_line(tiny, dpo_adapter):
    """The README's nf4 line: AutoPeftModelForCausalLM alone loads the base in its saved dtype (26 GB for 13B in
    bf16); the quantisation config passes through to the base's from_pretrained, and the model is the one
    tunesmith generates with from a quantised recipe."""
    from peft import AutoPeftModelForCausalLM
    from transformers import BitsAndBytesConfig

    # The README's line, with compute in float32 and the CPU as device, as everything on this machine.
    model = AutoPeftModelForCausalLM.from_pretrained(dpo_adapter, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32), device_map={"": "cpu"})
    assert model.get_base_model().is_loaded_in_4bit
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    prompts = task_prompts(tiny, 4)
    nf4 = tiny.section("base_model") | {"quantization": "nf4", "dtype": "float32", "compute_dtype": "float32"}
    ours = load_model(tiny.base_dir, nf4, adapter=dpo_adapter)
    torch.testing.assert_close(logits_of(model.eval(), tokenizer, prompts), logits_of(ours, tokenizer, prompts))
    unquantised = logits_of(load_model(tiny.base_dir, tiny.section("base_model"), adapter=dpo_adapter), tokenizer,
                            prompts)
    assert not torch.allclose(logits_of(model, tokenizer, prompts), unquantised, atol=1e-4), "not quantised at all"


def test_target_modules_are_written_in_one_order(tmp_path):
    """peft saves target_modules from a set, in another order each run: the folder is rewritten sorted, so that
    two clean runs write the same bytes."""
    from tunesmith.model.adapters import CONFIG, set_base

    (tmp_path / CONFIG).write_text(json.dumps({"target_modules": ["v_proj", "q_proj", "o_proj", "k_proj"]}))
    set_base(tmp_path, "llm-jp/llm-jp-3-13b")
    assert read_config(tmp_path)["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_a_hub_base_stays_a_hub_id(tmp_path, monkeypatch):
    from tunesmith.model.adapters import base_reference

    monkeypatch.chdir(tmp_path)
    assert base_reference("llm-jp/llm-jp-3-13b") == "llm-jp/llm-jp-3-13b"
    (tmp_path / "local").mkdir()
    assert base_reference("local") == str(tmp_path / "local")


def test_concatenate_refuses_what_one_scale_cannot_express(tiny, tmp_path):
    from tunesmith.model.adapters import AdapterError

    folder = Path(_adapter(tiny.base_dir, tmp_path / "a", 1, r=2, alpha=4, targets=["q_proj"]))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    with pytest.raises(AdapterError, match="use_rslora"):
        concatenate([str(folder), str(folder)], tmp_path / "out", tiny.base_dir)


# --- metadata, devices, EOS -----------------------------------------------------------------------

def test_metadata_round_trips_and_is_required(tmp_path):
    with pytest.raises(ModelError, match="tunesmith.json"):
        read_metadata(tmp_path)
    write_metadata(tmp_path, stage="sft", template_hash="abc", note="日本語")
    assert read_metadata(tmp_path) == {"stage": "sft", "template_hash": "abc", "note": "日本語"}


def test_each_training_process_loads_on_its_own_gpu(monkeypatch):
    from tunesmith.model.model import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device() == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device() == torch.device("cpu")


def test_an_eos_that_does_not_encode_to_its_id_is_refused(tiny, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    check_eos(tokenizer, tiny.base_dir)
    folder = tmp_path / "split-eos"
    tokenizer.save_pretrained(folder)
    # EOS as a "single word" token: right after text (as trl appends it) it is not matched, and the
    # BPE pieces of "</s>" are encoded instead.
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    for token in spec["added_tokens"]:
        if token["content"] == tokenizer.eos_token:
            token["single_word"] = True
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    broken = AutoTokenizer.from_pretrained(folder)
    with pytest.raises(ModelError, match="never stops") as error:
        check_eos(broken, str(folder))
    assert str(folder) in str(error.value) and "base_model.path" in str(error.value)


# --- export ---------------------------------------------------------------------------------------

def test_export_merges_on_the_cpu_in_the_recipe_dtype_with_the_training_prompt(tiny, dpo_adapter, tmp_path,
                                                                                 monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.hub.export import export_merged
    from tunesmith.model.template import PromptTemplate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine: the merge still runs on CPU
    section = tiny.section("base_model") | {"dtype": "bfloat16", "quantization": "nf4"}
    export_merged(tiny.base_dir, section, dpo_adapter, str(tmp_path / "merged"), tiny.section("template"))
    monkeypatch.undo()
    folder = tmp_path / "merged"
    assert not list(folder.glob("adapter_*")), "no adapter files: a plain model folder"
    exported = AutoModelForCausalLM.from_pretrained(folder)
    assert exported.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ours = load_model(tiny.base_dir, tiny.section("base_model") | {"dtype": "bfloat16"}, adapter=dpo_adapter)
    prompts = task_prompts(tiny, 4)
    torch.testing.assert_close(logits_of(exported.eval(), tokenizer, prompts), logits_of(ours, tokenizer, prompts),
                               rtol=0.05, atol=0.05)
    template = PromptTemplate(tiny.section("template"))
    user = "3と5を足すと？"
    chat_ids = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
    assert list(chat_ids) == tokenizer(template.render_prompt(user, tokenizer)).input_ids
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "### 指示" in card and "sft" in card and "dpo" in card
    assert read_metadata(folder)["dtype"] == "bfloat16"
