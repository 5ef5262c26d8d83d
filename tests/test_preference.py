"""The preference stage's methods beside DPO (ORPO, SimPO, KTO) on the tiny model: the trl trainer each one gets,
the adapter stacked on the frozen SFT adapter, the reference (KTO: the SFT model; ORPO and SimPO: none), KTO's
unpaired rows, rows a long prompt fills, and the recipe checks between the `dpo` keys."""

import csv
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from test_train import assert_lora_trained, logged, with_long_prompts
from tiny_model import SEED, _once, _recording, recipe, sft_adapter, tiny  # noqa: F401
from tunesmith.data.unpaired import BOTH_LABELS, SHARED_ANSWER, UnpairError, unpaired_rows, write_unpaired
from tunesmith.model.adapters import read_config, trained_part
from tunesmith.model.model import load_model, read_metadata
from tunesmith.model.template import PromptTemplate
from tunesmith.training.preference import preference_problems
from tunesmith.training.train import train_dpo

TRAINERS = {"orpo": "experimental.orpo.ORPOTrainer", "simpo": "experimental.cpo.CPOTrainer", "kto": "KTOTrainer"}


def _trainer_class(dotted: str):
    import importlib

    module, _, name = f"trl.{dotted}".rpartition(".")
    return module, name, getattr(importlib.import_module(module), name)


def _train_method(tiny, sft, out_dir: Path, method: str, dataset=None, **changes):
    """train_dpo with `dpo.method` set, recording the trl trainer it builds; returns (result, trainer)."""
    module, name, _ = _trainer_class(TRAINERS[method])
    section = tiny.section("dpo") | {"method": method, "logging_steps": 1} | changes
    if method == "simpo":
        section["beta"] = 2.0
    if dataset is None and method == "kto":  # what the unpair_preferences rule makes of the curated pairs
        dataset = str(out_dir.parent / "unpaired.parquet")
        write_unpaired(tiny.preference_data, SEED, dataset, out_dir.parent / "unpaired.quarantine.parquet",
                       out_dir.parent / "unpaired.card.json")
    return _recording_in(module, name, lambda: train_dpo(
        tiny.base_dir, tiny.section("base_model"), tiny.section("template"), section,
        dataset or tiny.preference_data, sft.path, SEED, str(out_dir)))


def _recording_in(module: str, name: str, train):
    """tiny_model._recording for a trainer that lives in a trl submodule."""
    import importlib

    if module == "trl":
        return _recording(name, train)
    target = importlib.import_module(module)
    trainers = []
    original = getattr(target, name)

    class Recording(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(target, name, Recording)
        result = train()
    return result, trainers[0]


@pytest.fixture(scope="module", params=["orpo", "simpo", "kto"])
def method_run(request, tiny, sft_adapter, tmp_path_factory):
    method = request.param

    def build():
        folder = tmp_path_factory.mktemp(method) / "dpo"
        result, trainer = _train_method(tiny, sft_adapter, folder, method)
        return folder, result, trainer

    return (method, *_once(f"method-{method}", build))


def test_each_method_trains_with_its_trl_trainer_a_new_adapter_on_top_of_the_frozen_sft_adapter(tiny, sft_adapter,
                                                                                                 method_run):
    method, folder, result, trainer = method_run
    assert type(trainer).__mro__[1] is _trainer_class(TRAINERS[method])[2], "the trl trainer of the method"
    metadata = read_metadata(folder)
    assert metadata["stage"] == "dpo" and metadata["method"] == method
    assert metadata["on_top_of"] == metadata["beneath"] == sft_adapter.path
    assert [step["stage"] for step in metadata["chain"]] == ["sft", "dpo"]
    assert metadata["template_hash"] == PromptTemplate(tiny.recipe["template"]).hash
    assert metadata["rows"] == len(trainer.train_dataset) == result["rows"] > 0
    assert_lora_trained(trained_part(folder))
    # The standalone adapter's first rows are the SFT adapter, untouched (its scale folded into A).
    sft_config, sft_weights = read_config(sft_adapter.path), load_file(f"{sft_adapter.path}/adapter_model.safetensors")
    standalone = load_file(Path(folder) / "adapter_model.safetensors")
    scale, rank = sft_config["lora_alpha"] / sft_config["r"], sft_config["r"]
    for name, tensor in sft_weights.items():
        if ".lora_A." in name:
            torch.testing.assert_close(standalone[name][:rank], scale * tensor.float())
        else:
            torch.testing.assert_close(standalone[name][:, :rank], tensor.float())
    assert read_config(folder)["r"] == sft_config["r"] + tiny.recipe["dpo"]["lora"]["r"]
    with open(Path(folder) / "training_log.csv", newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle) if row.get("loss")]
    assert len(losses) == tiny.recipe["dpo"]["max_steps"] and all(math.isfinite(loss) for loss in losses)
    assert logged(folder, "rewards/margins"), "the reward margin is logged for the curves"
    assert (Path(folder) / "training_curves.png").stat().st_size > 5000


def test_orpo_and_simpo_need_no_reference_model(method_run):
    method, _, _, trainer = method_run
    if method == "kto":
        pytest.skip("KTO has a reference (next test)")
    assert getattr(trainer, "ref_model", None) is None
    if method == "simpo":
        assert trainer.loss_type == "simpo" and trainer.cpo_alpha == 0.0 and trainer.simpo_gamma == 0.5


def _completion_logps(model, trainer, rows) -> torch.Tensor:
    """Summed log-probabilities of each row's completion under `model`, as KTO's collator batches them."""
    batch = trainer.data_collator([rows[index] for index in range(len(rows))])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = labels[:, 1:]
    return (logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != -100)).sum(dim=1)


def test_kto_reference_is_the_sft_model_and_its_rows_are_the_pairs_answers_with_labels(tiny, sft_adapter, method_run):
    method, folder, _, trainer = method_run
    if method != "kto":
        pytest.skip("KTO only")
    rows = trainer.train_dataset.select(range(6))
    section = tiny.section("base_model")
    sft_model = load_model(tiny.base_dir, section, adapter=sft_adapter.path)
    reference = torch.tensor(rows["ref_logps"])
    torch.testing.assert_close(reference, _completion_logps(sft_model, trainer, rows), rtol=1e-4, atol=1e-3)
    base = _completion_logps(load_model(tiny.base_dir, section), trainer, rows)
    assert (reference - base).abs().max() > 0.05, "SFT changed nothing; the comparison would prove nothing"
    assert trainer.ref_model is None, "the reference model is released once its log-probabilities are computed"
    # Each trained row is a rendered answer of a curated pair with its label: chosen desirable, rejected not.
    pairs = [row for row in pq.read_table(tiny.preference_data).to_pylist() if row["split"] == "train"]
    labels = {(pair["prompt"], pair["chosen"]): True for pair in pairs} | {
        (pair["prompt"], pair["rejected"]): False for pair in pairs}
    template, tokenizer = PromptTemplate(tiny.recipe["template"]), trainer.processing_class
    by_text = {tokenizer.bos_token + template.render_prompt(prompt, tokenizer)
               + template.render_completion(prompt, answer, tokenizer) + tokenizer.eos_token: label
               for (prompt, answer), label in labels.items()}
    for row in trainer.train_dataset.select(range(20)):
        text = tokenizer.decode(row["prompt_ids"] + row["completion_ids"])
        assert by_text[text] == row["label"]
    metadata = read_metadata(folder)
    card = json.loads((Path(folder).parent / "unpaired.card.json").read_text())
    assert card["pairs"] == pq.read_metadata(tiny.preference_data).num_rows
    assert card["desirable"] + card["undesirable"] == card["kept"] == (metadata["rows_curated"]
                                                                     + metadata["eval_rows_curated"])


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_rows_whose_prompt_fills_max_length_are_dropped_before_orpo_and_simpo(tiny, sft_adapter, tmp_path, method):
    """ORPO's and CPO's trainers would keep such a row with an empty answer (SimPO's reward of it is 0/0); the
    stage drops it as DPO and KTO do, and counts it."""
    dataset, _ = with_long_prompts(tiny.preference_data, tmp_path / "long.parquet", count=5)
    train_pairs = sum(1 for side in pq.read_table(dataset)["split"].to_pylist() if side == "train")
    _, trainer = _train_method(tiny, sft_adapter, tmp_path / "dpo", method, dataset=dataset, max_steps=1)
    metadata = read_metadata(tmp_path / "dpo")
    assert metadata["rows_dropped"]["prompt_fills_max_length"] >= 5
    assert metadata["rows"] == len(trainer.train_dataset) == train_pairs - metadata["rows_dropped"][
        "prompt_fills_max_length"]
    assert all(row["chosen_labels"][-1] != -100 and row["rejected_labels"][-1] != -100 for row in trainer.train_dataset)


# --- KTO rows from pairs -----------------------------------------------------------------------------

def test_unpaired_rows_label_each_answer_once_and_reconcile():
    pairs = [
        {"prompt": "p1", "chosen": "A", "rejected": "B", "split": "train"},
        {"prompt": "p1", "chosen": "B", "rejected": "C", "split": "train"},  # B: chosen here, rejected above
        {"prompt": "p1", "chosen": "A", "rejected": "D", "split": "validation"},  # A again: one row, train's
        {"prompt": "p2", "chosen": "A", "rejected": "E", "split": "validation"},  # another prompt: its own row
    ]
    rows, left_out, counts = unpaired_rows(pairs, seed=3)
    assert sorted((row["prompt"], row["completion"], row["label"], row["split"]) for row in rows) == [
        ("p1", "A", True, "train"), ("p1", "C", False, "train"), ("p1", "D", False, "validation"),
        ("p2", "A", True, "validation"), ("p2", "E", False, "validation")]
    assert counts == {"pairs": 4, "desirable": 2, "undesirable": 3,
                      "answers_left_out": {SHARED_ANSWER: 2, BOTH_LABELS: 1}}
    # Every answer is kept or left out with its reason: B twice (once a repeat, once for its two labels), A's repeat.
    assert sorted((row["completion"], row["label"], row["reason"]) for row in left_out) == [
        ("A", True, SHARED_ANSWER), ("B", False, BOTH_LABELS), ("B", True, SHARED_ANSWER)]
    assert 2 * counts["pairs"] == len(rows) + len(left_out)
    again, _, _ = unpaired_rows(pairs, seed=3)
    assert again == rows, "the same seed gives the same order"
    assert [row["completion"] for row in unpaired_rows(pairs, seed=4)[0]] != [row["completion"] for row in rows] or \
        [row["prompt"] for row in unpaired_rows(pairs, seed=5)[0]] != [row["prompt"] for row in rows]


def test_unpaired_rows_mix_labels_in_training_order():
    pairs = [{"prompt": f"p{index}", "chosen": "good", "rejected": "bad"} for index in range(40)]
    rows, _, counts = unpaired_rows(pairs, seed=0)
    assert counts["desirable"] == counts["undesirable"] == 40 and "split" not in rows[0]
    first_batch = [row["label"] for row in rows[:8]]
    assert 0 < sum(first_batch) < 8, "a batch of KTO rows holds both labels, not all desirable answers first"


def test_the_unpaired_dataset_keeps_or_quarantines_every_answer_and_refuses_one_label(tmp_path):
    pairs = [{"prompt": f"p{index % 5}", "chosen": f"good{index}", "rejected": "bad",
              "split": "validation" if index == 9 else "train"} for index in range(10)]
    source = tmp_path / "preference.parquet"
    pq.write_table(pa.Table.from_pylist(pairs), source)
    paths = [tmp_path / name for name in ("unpaired.parquet", "unpaired.quarantine.parquet", "unpaired.card.json")]
    card = write_unpaired(source, 0, *paths)
    kept, quarantined = pq.read_table(paths[0]).to_pylist(), pq.read_table(paths[1]).to_pylist()
    assert set(kept[0]) == {"prompt", "completion", "label", "split"}
    # "bad" under each of the 5 prompts is one row; its other 5 copies are quarantined as repeats.
    assert (len(kept), len(quarantined)) == (15, 5) and card["answers_in"] == 20 == len(kept) + len(quarantined)
    assert {row["reason"] for row in quarantined} == {SHARED_ANSWER}
    assert card == json.loads(paths[2].read_text()) and card["splits"] == {"train": 14, "validation": 1}
    assert card["kept"] == card["desirable"] + card["undesirable"] == 15
    # A > B and B > A: each answer has both labels, so KTO would have nothing to learn from.
    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": "A", "rejected": "B", "split": "train"},
                                         {"prompt": "p", "chosen": "B", "rejected": "A", "split": "train"}]), source)
    with pytest.raises(UnpairError, match=r"preference.parquet: the 2 curated pairs give no desirable training"):
        write_unpaired(source, 0, *paths)


def test_kto_refuses_a_dataset_of_pairs_and_dpo_one_of_single_answers(tiny, sft_adapter, tmp_path):
    with pytest.raises(ValueError, match=r"dpo.method kto trains on rows of completion, label, prompt, but the file "
                                         r"has columns .*chosen.* \(the unpair_preferences rule makes it"):
        train_dpo(tiny.base_dir, tiny.section("base_model"), tiny.section("template"),
                  tiny.section("dpo") | {"method": "kto"}, tiny.preference_data, sft_adapter.path, SEED,
                  str(tmp_path / "dpo"))
    assert not (tmp_path / "dpo").exists()


# --- recipe checks ------------------------------------------------------------------------------------

def test_the_dpo_keys_are_checked_together():
    good = recipe()
    assert preference_problems(good) == []
    kto = recipe()
    kto["dpo"] |= {"method": "kto", "per_device_train_batch_size": 1}
    assert preference_problems(kto) == [
        "dpo.per_device_train_batch_size: method kto needs at least 2 answers per batch (its KL estimate pairs each answer with another "
        "row's prompt)"]
    orpo = recipe()
    orpo["dpo"] |= {"method": "orpo", "loss_type": "ipo"}
    assert "dpo.loss_type: 'ipo' is a DPO loss; method 'orpo'" in preference_problems(orpo)[0]


def test_the_recipe_validator_refuses_them_before_any_job():
    from tunesmith.config.recipe import RecipeError, validate_recipe

    kto = recipe()
    kto["dpo"] |= {"method": "kto", "per_device_train_batch_size": 1}
    with pytest.raises(RecipeError, match="dpo.per_device_train_batch_size: method kto needs at least 2"):
        validate_recipe(kto)
