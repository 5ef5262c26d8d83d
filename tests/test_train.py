"""LoRA CPT, SFT and DPO on the tiny model: adapter folders and metadata, what the loss sees, the DPO
reference, rows trained/dropped/truncated, evaluation cadence, clean failure and resume, curves, and
training on two processes."""

import csv
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tiny_model import PRETRAIN_TEXT, SEED, cpt_adapter, dpo_adapter, dpo_run, sft_adapter, tiny  # noqa: F401
from tunesmith.model.adapters import read_config, trained_part
from tunesmith.model.model import ModelError, load_model, read_metadata
from tunesmith.model.template import PromptTemplate
from tunesmith.training.launcher import run_distributed
from tunesmith.training.train import train_cpt, train_dpo, train_sft
from tunesmith.training.train_data import split_rows


def assert_no_partial_siblings(folder: Path) -> None:
    assert not [entry.name for entry in folder.parent.iterdir() if entry.name.endswith(".partial")]


def assert_lora_trained(adapter: str) -> None:
    weights = load_file(f"{adapter}/adapter_model.safetensors")
    second_factors = {name: tensor for name, tensor in weights.items() if ".lora_B." in name}
    assert second_factors, "no LoRA weights saved"
    # peft initialises lora_B to zero, so a nonzero B means the optimiser moved it.
    assert all(tensor.abs().sum() > 0 for tensor in second_factors.values())


def logged(folder, key: str) -> list[int]:
    with open(Path(folder) / "training_log.csv", newline="") as handle:
        return [int(float(row["step"])) for row in csv.DictReader(handle) if row.get(key)]


def test_sft_writes_an_adapter_peft_loads(tiny, sft_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = Path(sft_adapter.path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.base_dir), folder)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    metadata = read_metadata(folder)
    assert {key: metadata[key] for key in ("stage", "template_hash", "base_model", "seed", "base_adapters",
                                           "beneath", "processes", "parallelism", "effective_batch_size")} == {
        "stage": "sft", "template_hash": PromptTemplate(tiny.recipe["template"]).hash, "base_model": tiny.base_dir,
        "seed": SEED, "base_adapters": [], "beneath": None, "processes": 1, "parallelism": "NO",
        "effective_batch_size": tiny.recipe["sft"]["per_device_train_batch_size"],
    }
    assert [step["stage"] for step in metadata["chain"]] == ["sft"]
    assert metadata["rows"] == len(sft_adapter.trainer.train_dataset), "the rows trl really trained on"
    assert metadata["rows_curated"] + metadata["eval_rows_curated"] == pq.read_metadata(tiny.sft_data).num_rows
    assert len(logged(folder, "loss")) == tiny.recipe["sft"]["max_steps"]
    assert sft_adapter.result["rows"] == metadata["rows"]
    # max_steps stops SFT inside its first epoch: the rows it saw, not the rows it had.
    steps, batch = tiny.recipe["sft"]["max_steps"], tiny.recipe["sft"]["per_device_train_batch_size"]
    assert 0 < metadata["epochs_seen"] < 1 and abs(metadata["rows_seen"] - steps * batch) <= batch, metadata
    assert read_config(folder)["target_modules"] == sorted(tiny.recipe["sft"]["lora"]["target_modules"])
    assert not (folder / "trainer").exists() and not (folder / "trained").exists(), "nothing lies beneath SFT"
    assert_no_partial_siblings(folder)


def test_sft_moves_the_lora_weights(sft_adapter):
    assert_lora_trained(sft_adapter.path)


def test_sft_loss_is_on_the_rendered_completion_only(tiny, sft_adapter):
    """What the collator hands the model: prompt tokens masked, the response and EOS labelled."""
    trainer = sft_adapter.trainer
    tokenizer = trainer.processing_class
    template = PromptTemplate(tiny.recipe["template"])
    rows = [row for row in pq.read_table(tiny.sft_data).to_pylist() if row["split"] == "train"][:8]
    batch = trainer.data_collator([trainer.train_dataset[index] for index in range(len(rows))])
    for row, ids, labels in zip(rows, batch["input_ids"].tolist(), batch["labels"].tolist()):
        labelled = [token for token, label in zip(ids, labels) if label != -100]
        assert labelled == [label for label in labels if label != -100]
        masked = [token for token, label in zip(ids, labels) if label == -100 and token != tokenizer.pad_token_id]
        assert tokenizer.decode(masked) == tokenizer.bos_token + template.render_prompt(row["prompt"], tokenizer)
        assert tokenizer.decode(labelled) == row["response"] + tokenizer.eos_token


def test_dpo_trains_a_new_adapter_on_top_of_the_frozen_sft_adapter(tiny, sft_adapter, dpo_adapter):
    metadata = read_metadata(dpo_adapter)
    assert metadata["stage"] == "dpo" and metadata["on_top_of"] == sft_adapter.path
    assert metadata["beneath"] == sft_adapter.path
    assert metadata["template_hash"] == read_metadata(sft_adapter.path)["template_hash"]
    assert metadata["rows_curated"] + metadata["eval_rows_curated"] == pq.read_metadata(tiny.preference_data).num_rows
    assert (Path(dpo_adapter) / "training_log.csv").is_file()
    trained = trained_part(dpo_adapter)
    assert trained == str(Path(dpo_adapter) / "trained")
    assert_lora_trained(trained)
    # The standalone adapter's first rows are the SFT adapter, untouched by DPO (scale folded into A).
    sft_config, sft_weights = read_config(sft_adapter.path), load_file(f"{sft_adapter.path}/adapter_model.safetensors")
    standalone = load_file(f"{dpo_adapter}/adapter_model.safetensors")
    scale, rank = sft_config["lora_alpha"] / sft_config["r"], sft_config["r"]
    for name, tensor in sft_weights.items():
        if ".lora_A." in name:
            torch.testing.assert_close(standalone[name][:rank], scale * tensor.float())
        else:
            torch.testing.assert_close(standalone[name][:, :rank], tensor.float())
    assert_no_partial_siblings(Path(dpo_adapter))


def _sequence_logps(model, trainer, dataset) -> torch.Tensor:
    """Summed log-probabilities of each pair's chosen completion under `model`, as trl batches them."""
    batch = trainer.data_collator([dataset[index] for index in range(len(dataset))])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = labels[:, 1:]
    picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != -100)
    return picked.sum(dim=1).chunk(2)[0]


def test_the_dpo_reference_is_the_sft_model_not_the_base(tiny, sft_adapter, dpo_run):
    trainer = dpo_run.trainer
    pairs = trainer.train_dataset.select(range(6))
    reference = torch.tensor(pairs["ref_chosen_logps"])
    section = tiny.section("base_model")
    sft_model = load_model(tiny.base_dir, section, adapter=sft_adapter.path)
    torch.testing.assert_close(reference, _sequence_logps(sft_model, trainer, pairs), rtol=1e-4, atol=1e-3)
    base = _sequence_logps(load_model(tiny.base_dir, section), trainer, pairs)
    assert (reference - base).abs().max() > 0.05, "SFT changed nothing; the comparison would prove nothing"
    assert trainer.ref_model is None, "the reference model is released once its log-probabilities are computed"


def _train(tiny, dataset: str, out_dir: Path, **changes) -> dict:
    return train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"),
                     tiny.section("sft") | changes, dataset, SEED, str(out_dir))


def test_missing_dataset_leaves_no_output(tiny, tmp_path):
    out_dir = tmp_path / "adapters" / "sft"
    with pytest.raises(FileNotFoundError):
        _train(tiny, str(tmp_path / "no-such.parquet"), out_dir)
    assert not out_dir.exists()
    assert not (out_dir.parent.exists() and list(out_dir.parent.iterdir()))


def test_failure_during_training_keeps_the_previous_adapter(tiny, tmp_path, monkeypatch):
    import trl

    def crash(self, *args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(trl.SFTTrainer, "train", crash)
    out_dir = tmp_path / "adapters" / "sft"
    out_dir.mkdir(parents=True)
    (out_dir / "tunesmith.json").write_text('{"stage": "sft"}')
    with pytest.raises(RuntimeError, match="killed mid-training"):
        _train(tiny, tiny.sft_data, out_dir)
    # With save_steps the checkpoints folder stays beside the adapter: it is what a restart resumes from.
    assert sorted(entry.name for entry in out_dir.parent.iterdir()) in (["sft"], ["sft", "sft.checkpoints"])
    assert [entry.name for entry in out_dir.iterdir()] == ["tunesmith.json"]


# --- rows trained, dropped and truncated ------------------------------------------------------------

FILLER = "とても長い前置きの文章です。"


def with_long_prompts(parquet: str, out: Path, count: int, filler: str = FILLER) -> tuple[str, list]:
    """The curated data with `count` train rows whose prompt starts with a long preamble."""
    table = pq.read_table(parquet)
    rows = table.to_pylist()
    changed = [index for index, row in enumerate(rows) if row["split"] == "train"][:count]
    for index in changed:
        rows[index]["prompt"] = filler * 40 + rows[index]["prompt"]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out)
    return str(out), [rows[index] for index in changed]


def test_rows_trl_drops_are_counted_and_not_reported_as_trained(tiny, tmp_path, caplog):
    import logging

    dataset, _ = with_long_prompts(tiny.sft_data, tmp_path / "long.parquet", count=7)
    table = pq.read_table(dataset)
    rows = table.to_pylist()
    for row in [row for row in rows if row["split"] == "train"][7:10]:  # short prompts, answers past max_length
        row["response"] = FILLER * 40
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), dataset)
    train_rows = sum(1 for side in pq.read_table(dataset)["split"].to_pylist() if side == "train")
    from tiny_model import _recording_trainer

    with caplog.at_level(logging.INFO, logger="tunesmith.training.train"):
        _, trainer = _recording_trainer(lambda: _train(tiny, dataset, tmp_path / "sft", max_steps=1))
    metadata = read_metadata(tmp_path / "sft")
    assert metadata["rows_curated"] == train_rows
    assert metadata["rows_dropped"]["prompt_fills_max_length"] >= 7
    assert metadata["rows"] == len(trainer.train_dataset) == train_rows - metadata["rows_dropped"]["prompt_fills_max_length"]
    assert metadata["rows_truncated"]["response_cut_at_max_length"] > 0
    assert f"{metadata['rows']} of {train_rows} rows train; dropped: " in caplog.text


def test_long_prompts_can_be_cut_from_the_left_instead(tiny, tmp_path):
    dataset, long_rows = with_long_prompts(tiny.sft_data, tmp_path / "long.parquet", count=7)
    train_rows = sum(1 for side in pq.read_table(dataset)["split"].to_pylist() if side == "train")
    from tiny_model import _recording_trainer

    _, trainer = _recording_trainer(lambda: _train(tiny, dataset, tmp_path / "sft", max_steps=1,
                                                   long_prompts="truncate_left"))
    metadata = read_metadata(tmp_path / "sft")
    assert metadata["rows_dropped"] == {} and metadata["rows"] == len(trainer.train_dataset) == train_rows
    assert metadata["rows_truncated"]["prompt_cut_from_left"] >= 7
    tokenizer, max_length = trainer.processing_class, tiny.recipe["sft"]["max_length"]
    for row in trainer.train_dataset:
        labels = [label for label in row["labels"] if label != -100] if "labels" in row else row["completion_mask"]
        assert len(row["input_ids"]) <= max_length and any(labels), "every row keeps part of its response"
    inputs = set()  # each trained row's input, between the template's markers
    for row in trainer.train_dataset:
        text = tokenizer.decode(row["input_ids"]).removeprefix(tokenizer.bos_token)
        if text.startswith("### 指示\n") and "\n### 回答\n" in text:
            inputs.add(text[len("### 指示\n") : text.index("\n### 回答\n")])
    for long_row in long_rows:  # the template and the end of the input stay; only the preamble's start goes
        original = long_row["prompt"].removeprefix(FILLER * 40)
        cut = [text for text in inputs if long_row["prompt"].endswith(text) and len(original) < len(text)
               < len(long_row["prompt"])]
        assert cut, f"no row trained on a left-cut version of {original!r}"


# --- evaluation cadence -----------------------------------------------------------------------------

def with_split(parquet: str, out: Path, validation: float = 0.1) -> str:
    """The curated data with a `split` column as curation writes it: by each row's content hash."""
    table = pq.read_table(parquet)
    if "split" in table.column_names:
        table = table.drop_columns(["split"])
    sides = ["validation" if int(row_id[:8], 16) / 2**32 < validation else "train"
             for row_id in table["id"].to_pylist()]
    pq.write_table(table.append_column("split", pa.array(sides)), out)
    return str(out)


def test_split_rows_follows_the_curated_split_column(tiny, tmp_path):
    from datasets import Dataset

    rows = Dataset.from_parquet(with_split(tiny.sft_data, tmp_path / "split.parquet"))
    train, held = split_rows(rows)
    assert set(train["split"]) == {"train"} and set(held["split"]) == {"validation"}
    assert len(train) + len(held) == len(rows) and 0.03 < len(held) / len(rows) < 0.2
    everything = rows.remove_columns(["split"])
    assert split_rows(everything) == (everything, None), "without the column every row trains"
    only_train = rows.map(lambda row: {"split": "train"})
    assert split_rows(only_train)[1] is None
    with pytest.raises(ValueError, match="'test'"):
        split_rows(rows.map(lambda row: {"split": "test"}), "sft.parquet")


def test_sft_evaluates_on_the_validation_rows(tiny, tmp_path):
    dataset = with_split(tiny.sft_data, tmp_path / "split.parquet")
    held = [side for side in pq.read_table(dataset)["split"].to_pylist() if side == "validation"]
    _train(tiny, dataset, tmp_path / "adapter", max_steps=4, logging_steps=2, evaluations=2)
    assert logged(tmp_path / "adapter", "eval_loss") == [2, 4]
    metadata = read_metadata(tmp_path / "adapter")
    assert metadata["eval_rows"] == len(held) > 0
    assert metadata["rows_curated"] == pq.read_metadata(dataset).num_rows - len(held)


def test_evaluations_per_run_are_bounded_not_tied_to_logging(tiny, tmp_path):
    _train(tiny, tiny.sft_data, tmp_path / "three", max_steps=20, logging_steps=1, evaluations=3)
    evaluated = logged(tmp_path / "three", "eval_loss")
    assert len(logged(tmp_path / "three", "loss")) == 20
    assert 1 <= len(evaluated) <= 3 and evaluated[-1] == 20
    _train(tiny, tiny.sft_data, tmp_path / "none", max_steps=3, evaluations=0)
    assert logged(tmp_path / "none", "eval_loss") == []


def test_dpo_evaluates_on_the_validation_pairs_and_plots_its_rewards(tiny, sft_adapter, tmp_path):
    from tunesmith.training.curves import plot_curves

    dataset = with_split(tiny.preference_data, tmp_path / "split.parquet", validation=0.2)
    held = [side for side in pq.read_table(dataset)["split"].to_pylist() if side == "validation"]
    dpo = tiny.section("dpo") | {"max_steps": 2, "logging_steps": 1, "evaluations": 1}
    train_dpo(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), dpo, dataset, sft_adapter.path,
              SEED, str(tmp_path / "dpo"))
    assert logged(tmp_path / "dpo", "eval_loss") == [2]
    assert logged(tmp_path / "dpo", "eval_rewards/accuracies") == [2]
    assert logged(tmp_path / "dpo", "rewards/margins") == [1, 2]
    assert read_metadata(tmp_path / "dpo")["eval_rows"] == len(held) > 0
    with open(tmp_path / "dpo" / "training_log.csv", newline="") as handle:
        history = [{key: float(value) for key, value in row.items() if value} for row in csv.DictReader(handle)]
    plotted = plot_curves(history, str(tmp_path / "curves.png"), "dpo")
    assert {"loss", "rewards/margins", "rewards/accuracies", "eval_rewards/margins",
            "eval_rewards/accuracies"} <= set(plotted)


def test_training_curves_are_drawn(sft_adapter, dpo_adapter):
    from PIL import Image

    sizes = {}
    for name, folder in (("sft", sft_adapter.path), ("dpo", dpo_adapter)):
        png = Path(folder) / "training_curves.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        sizes[name] = Image.open(png).size
    assert sizes["dpo"][1] > 2 * sizes["sft"][1], "DPO's reward margin and accuracy panels are missing"


# --- resume -----------------------------------------------------------------------------------------

KILLED_RUN = """
import json, os, signal, sys
import transformers
from tunesmith.training.train import train_dpo, train_sft
stage, kill_step, arguments = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
original = transformers.Trainer._save_optimizer_and_scheduler

def die_half_way(self, output_dir):
    # checkpoint-N holds the adapter by now; its optimizer and trainer state are still to come
    if output_dir.endswith(f"checkpoint-{kill_step}"):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)

transformers.Trainer._save_optimizer_and_scheduler = die_half_way
(train_sft if stage == "sft" else train_dpo)(**arguments)
"""


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_one_before(tiny, sft_adapter, tmp_path, caplog,
                                                                            stage):
    """SIGKILL a real run in the middle of writing checkpoint-6; the rerun skips (and removes) it,
    resumes from checkpoint-4 and ends with the adapter an uninterrupted run writes. For DPO this also
    shows the frozen SFT adapter stays active after resuming."""
    import logging
    import subprocess
    import sys

    section = tiny.section(stage) | {"max_steps": 8, "save_steps": 2, "logging_steps": 1}
    out = tmp_path / "adapter"
    arguments = dict(base_path=tiny.base_dir, base_section=tiny.section("base_model"),
                     template_section=tiny.section("template"), seed=SEED, out_dir=str(out))
    if stage == "sft":
        arguments |= dict(sft=section, dataset_path=tiny.sft_data)
    else:
        arguments |= dict(dpo=section, dataset_path=tiny.preference_data, sft_adapter=sft_adapter.path)
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    process = subprocess.run([sys.executable, str(script), stage, "6", json.dumps(arguments)], capture_output=True,
                             text=True, timeout=600)
    assert process.returncode == -9, process.stderr[-3000:]
    assert not out.exists(), "a killed run must not leave an adapter"
    (checkpoints,) = Path(f"{out}.checkpoints").iterdir()
    # The oldest is rotated away only after a checkpoint is complete: 2 and 4 stay beside the broken 6.
    assert sorted(path.name for path in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4",
                                                                             "checkpoint-6"]
    assert not (checkpoints / "checkpoint-6" / "trainer_state.json").exists()

    with caplog.at_level(logging.INFO):
        (train_sft if stage == "sft" else train_dpo)(**arguments)
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-6" in caplog.text
    assert f"resuming from {checkpoints / 'checkpoint-4'}" in caplog.text
    assert logged(out, "loss") == list(range(1, 9)), "the history of the killed run is kept, each step once"
    assert not Path(f"{out}.checkpoints").exists(), "checkpoints are removed once the adapter is in place"

    uninterrupted = tmp_path / "uninterrupted"
    (train_sft if stage == "sft" else train_dpo)(**arguments | {"out_dir": str(uninterrupted)})
    resumed, straight = (load_file(Path(trained_part(folder)) / "adapter_model.safetensors")
                         for folder in (out, uninterrupted))
    assert resumed.keys() == straight.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-4, atol=1e-6)
    # The resumed log continues the killed run's running token count (trl keeps it outside the checkpoint).
    counted = {name: [(row["step"], row["num_tokens"]) for row in csv.DictReader(open(folder / "training_log.csv"))
                      if row.get("num_tokens")] for name, folder in (("resumed", out), ("straight", uninterrupted))}
    assert len(counted["straight"]) == 8 and counted["resumed"] == counted["straight"]


def test_same_seed_gives_the_same_adapter_weights(tiny, tmp_path):
    for name in ("first", "second"):
        _train(tiny, tiny.sft_data, tmp_path / name)
    first = load_file(tmp_path / "first" / "adapter_model.safetensors")
    second = load_file(tmp_path / "second" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all((first[key] == second[key]).all() for key in first)


@pytest.mark.parametrize("strategy", ["wrapped", "bfd"])
def test_packed_sft_trains(tiny, tmp_path, strategy):
    result = _train(tiny, tiny.sft_data, tmp_path / "adapter", packing=True, packing_strategy=strategy, max_steps=2)
    assert result["train_loss"] > 0 and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    metadata = read_metadata(tmp_path / "adapter")
    assert metadata["sequences"] > 0 and metadata["rows"] == metadata["rows_curated"] - sum(
        metadata["rows_dropped"].values())


def test_dpo_can_continue_the_sft_adapter_and_saves_only_that_adapter(tiny, sft_adapter, tmp_path):
    from peft import PeftModel

    dpo = tiny.section("dpo") | {"start": "continue_sft"}
    train_dpo(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), dpo, tiny.preference_data,
              sft_adapter.path, SEED, str(tmp_path / "dpo"))
    metadata = read_metadata(tmp_path / "dpo")
    assert metadata["continues"] == sft_adapter.path and "on_top_of" not in metadata
    folder = tmp_path / "dpo"
    assert sorted(entry.name for entry in folder.iterdir() if entry.is_dir()) == [], "no ref/ copy, nothing beneath"
    sft_weights = load_file(Path(sft_adapter.path) / "adapter_model.safetensors")
    dpo_weights = load_file(folder / "adapter_model.safetensors")
    assert sft_weights.keys() == dpo_weights.keys(), "the same adapter, trained on"
    assert any(not (sft_weights[key] == dpo_weights[key]).all() for key in sft_weights)
    assert read_config(folder)["r"] == read_config(sft_adapter.path)["r"]
    assert isinstance(PeftModel.from_pretrained(load_model(tiny.base_dir, tiny.section("base_model")), str(folder)),
                      PeftModel)


def test_training_refuses_a_tokenizer_whose_eos_splits_before_loading_the_model(tiny, tmp_path, monkeypatch):
    import tunesmith.training.train as train_module

    base = tmp_path / "base"
    shutil.copytree(tiny.base_dir, base)
    spec = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
    for token in spec["added_tokens"]:
        if token["content"] == "</s>":
            token["single_word"] = True  # not matched right after text: "</s>" is encoded as its pieces
    (base / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(train_module, "trainable_model", lambda *args, **kwargs: pytest.fail("loaded a model"))
    with pytest.raises(ModelError, match="never stops"):
        train_sft(str(base), tiny.section("base_model"), tiny.section("template"), tiny.section("sft"), tiny.sft_data,
                  SEED, str(tmp_path / "sft"))
    assert not (tmp_path / "sft").exists()


# --- continued pretraining -------------------------------------------------------------------------

def test_cpt_trains_an_adapter_on_every_token_of_the_raw_text(tiny, cpt_adapter):
    from tunesmith.model.base_model import read_text_lines

    folder = Path(cpt_adapter.path)
    metadata = read_metadata(folder)
    assert metadata["stage"] == "cpt" and "template_hash" not in metadata
    assert metadata["documents"] == cpt_adapter.result["documents"] == len(read_text_lines([PRETRAIN_TEXT]))
    assert_lora_trained(cpt_adapter.path)
    trainer = cpt_adapter.trainer
    batch = trainer.data_collator([trainer.train_dataset[index] for index in range(4)])
    # Packed blocks of max_length tokens, every one of them in the loss: no prompt, no padding.
    assert batch["input_ids"].shape == (4, tiny.recipe["continued_pretraining"]["max_length"])
    assert (batch["labels"] != -100).all()
    assert (batch["input_ids"] == trainer.processing_class.eos_token_id).any(), "documents end in EOS"
    assert len(logged(folder, "loss")) == 3
    assert_no_partial_siblings(folder)


def test_cpt_refuses_sources_without_text(tiny, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ValueError, match="continued_pretraining"):
        train_cpt(tiny.base_dir, tiny.section("base_model"), tiny.section("continued_pretraining"), [str(empty)],
                  SEED, str(tmp_path / "cpt"))
    assert not (tmp_path / "cpt").exists()


def test_sft_and_dpo_train_on_top_of_the_frozen_cpt_adapter(tiny, cpt_adapter, tmp_path, monkeypatch):
    import tunesmith.training.train as train_module

    beneath = []
    real = train_module.trainable_model
    monkeypatch.setattr(train_module, "trainable_model",
                        lambda base, section, below, **kwargs: beneath.append(below) or real(base, section, below,
                                                                                             **kwargs))
    train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), tiny.section("sft") | {"max_steps": 2},
              tiny.sft_data, SEED, str(tmp_path / "sft"), base_adapters=[cpt_adapter.path])
    assert beneath == [cpt_adapter.path]
    metadata = read_metadata(tmp_path / "sft")
    assert metadata["base_adapters"] == [cpt_adapter.path] and metadata["beneath"] == cpt_adapter.path
    assert [step["stage"] for step in metadata["chain"]] == ["cpt", "sft"]
    assert read_config(tmp_path / "sft")["r"] == read_config(cpt_adapter.path)["r"] + tiny.recipe["sft"]["lora"]["r"]
    assert_lora_trained(trained_part(tmp_path / "sft"))

    beneath.clear()
    train_dpo(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), tiny.section("dpo") | {"max_steps": 1},
              tiny.preference_data, str(tmp_path / "sft"), SEED, str(tmp_path / "dpo"), base_adapters=[cpt_adapter.path])
    assert beneath == [str(tmp_path / "sft")], "DPO trains on top of the SFT folder, which holds CPT + SFT"
    assert [step["stage"] for step in read_metadata(tmp_path / "dpo")["chain"]] == ["cpt", "sft", "dpo"]


# --- several processes -----------------------------------------------------------------------------

def test_sft_on_two_processes_writes_one_adapter_that_loads(tiny, tmp_path, capfd):
    """A real `accelerate launch` of two CPU processes (gloo): both train, rank 0 alone writes."""
    from peft import PeftModel

    sft = tiny.section("sft") | {"max_steps": 3, "logging_steps": 1}
    distributed = tiny.section("distributed") | {"processes": 2}
    out = tmp_path / "adapters" / "sft"
    result = run_distributed(train_sft, distributed, base_path=tiny.base_dir, base_section=tiny.section("base_model"),
                             template_section=tiny.section("template"), sft=sft, dataset_path=tiny.sft_data,
                             seed=SEED, out_dir=str(out), threads=2)
    output = capfd.readouterr().err
    for rank in (0, 1):
        assert any(f"[rank {rank}/2]" in line and "sft: " in line for line in output.splitlines()), \
            f"rank {rank} did not train:\n{output[-3000:]}"
    assert sorted(entry.name for entry in out.parent.iterdir()) == ["sft"], "one adapter, no partial or checkpoints"
    metadata = read_metadata(out)
    assert metadata["processes"] == 2 and metadata["parallelism"] == "MULTI_CPU"
    assert metadata["effective_batch_size"] == 2 * sft["per_device_train_batch_size"]
    assert result == {"train_loss": result["train_loss"], "rows": metadata["rows"], "rows_seen": metadata["rows_seen"]}
    assert result["train_loss"] > 0 and metadata["rows_seen"] == 3 * metadata["effective_batch_size"]
    assert len(logged(out, "loss")) == 3
    assert_lora_trained(str(out))
    assert isinstance(PeftModel.from_pretrained(load_model(tiny.base_dir, tiny.section("base_model")), out), PeftModel)


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_preference_training_on_two_processes_shares_its_reference_log_probabilities(tiny, sft_adapter, tmp_path,
                                                                                   method):
    """DPO and KTO compute the reference model's log-probabilities once, before training (trl caches them in the
    dataset's folder): with two processes every rank must find rank 0's cache. A dataset living only in memory
    has its cache in a folder of each process's own, so rank 1 found nothing (a two-node Slurm run found this)."""
    from tunesmith.data.unpaired import write_unpaired

    dataset = tiny.preference_data
    if method == "kto":
        dataset = str(tmp_path / "unpaired.parquet")
        write_unpaired(tiny.preference_data, SEED, dataset, tmp_path / "q.parquet", tmp_path / "card.json")
    dpo = tiny.section("dpo") | {"method": method, "max_steps": 2, "logging_steps": 1}
    distributed = tiny.section("distributed") | {"processes": 2}
    out = tmp_path / "adapters" / "dpo"
    result = run_distributed(train_dpo, distributed, base_path=tiny.base_dir, base_section=tiny.section("base_model"),
                             template_section=tiny.section("template"), dpo=dpo, dataset_path=dataset,
                             sft_adapter=sft_adapter.path, seed=SEED, out_dir=str(out), threads=2)
    metadata = read_metadata(out)
    assert metadata["processes"] == 2 and metadata["parallelism"] == "MULTI_CPU" and result["train_loss"] > 0
    assert sorted(entry.name for entry in out.parent.iterdir()) == ["dpo"], "one adapter, nothing left beside it"
    assert_lora_trained(trained_part(str(out)))


FAKE_SRUN = """#!{python}
# srun's part in a Slurm step: each of --ntasks copies of the command with its SLURM_NODEID, and the address
# of the node srun was started on; one failing task stops the others (--kill-on-bad-exit).
import os, subprocess, sys, time
arguments = sys.argv[1:]
with open({record!r}, "w") as handle:
    handle.write(repr(arguments))
tasks = int(next(a for a in arguments if a.startswith("--ntasks=")).split("=")[1])
command = arguments[next(i for i, a in enumerate(arguments) if not a.startswith("--")):]
processes = [subprocess.Popen(command, env={{**os.environ, "SLURM_NODEID": str(i), "SLURM_PROCID": str(i),
                                           "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1"}}) for i in range(tasks)]
while all(p.poll() is None for p in processes):
    time.sleep(0.2)
if any(p.poll() not in (None, 0) for p in processes):
    for p in processes:
        p.poll() is None and p.terminate()
codes = [p.wait() for p in processes]
sys.exit(next((code for code in codes if code), 0))
"""


def test_sft_on_two_nodes_is_one_process_group(tiny, tmp_path, capfd, monkeypatch):
    """distributed.nodes 2 as two node ranks of this host: srun (here a stand-in that starts one task per node, as
    Slurm does, with SLURM_NODEID) runs one `tunesmith.training.launcher --node` per node, each an `accelerate launch
    --num_machines 2 --machine_rank <node>` of one gloo process; rank 0 writes the one adapter."""
    import sys

    bin_folder, record = tmp_path / "bin", tmp_path / "srun.args"
    bin_folder.mkdir()
    (bin_folder / "srun").write_text(FAKE_SRUN.format(python=sys.executable, record=str(record)))
    (bin_folder / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    sft = tiny.section("sft") | {"max_steps": 3, "logging_steps": 1}
    distributed = tiny.section("distributed") | {"processes": 1, "nodes": 2}
    out = tmp_path / "adapters" / "sft"
    result = run_distributed(train_sft, distributed, base_path=tiny.base_dir, base_section=tiny.section("base_model"),
                             template_section=tiny.section("template"), sft=sft, dataset_path=tiny.sft_data,
                             seed=SEED, out_dir=str(out), threads=2)
    output = capfd.readouterr().err
    for rank in (0, 1):
        assert any(f"[rank {rank}/2]" in line and "sft: " in line for line in output.splitlines()), \
            f"rank {rank} did not train:\n{output[-3000:]}"
    srun = eval(record.read_text())
    assert srun[:4] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=2"]
    assert sorted(entry.name for entry in out.parent.iterdir()) == ["sft"], "one adapter; the spec folder is gone"
    metadata = read_metadata(out)
    assert metadata["processes"] == 2 and metadata["nodes"] == 2 and metadata["parallelism"] == "MULTI_CPU"
    assert metadata["effective_batch_size"] == 2 * sft["per_device_train_batch_size"]
    assert result == {"train_loss": result["train_loss"], "rows": metadata["rows"], "rows_seen": metadata["rows_seen"]}
    assert result["train_loss"] > 0 and metadata["rows_seen"] == 3 * metadata["effective_batch_size"]
    assert len(logged(out, "loss")) == 3
    assert_lora_trained(str(out))


def test_a_failing_multi_process_run_reports_its_output_and_writes_nothing(tiny, tmp_path):
    from tunesmith.training.launcher import DistributedError

    distributed = tiny.section("distributed") | {"processes": 2}
    out = tmp_path / "adapters" / "sft"
    with pytest.raises(DistributedError, match="distributed.processes") as error:
        run_distributed(train_sft, distributed, base_path=tiny.base_dir, base_section=tiny.section("base_model"),
                        template_section=tiny.section("template"), sft=tiny.section("sft"),
                        dataset_path=str(tmp_path / "no-such.parquet"), seed=SEED, out_dir=str(out))
    assert "no-such.parquet" in str(error.value), "the processes' own error is shown"
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_deepspeed_without_the_package_stops_before_training(tiny, tmp_path, monkeypatch):
    import importlib.util

    import tunesmith.training.train as train_module
    from tunesmith.training.launcher import DistributedError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "deepspeed" else real_find_spec(name, *args))
    monkeypatch.setattr(train_module, "trainable_model", lambda *args, **kwargs: pytest.fail("loaded a model"))
    distributed = {"processes": 2, "nodes": 1, "strategy": "deepspeed", "zero_stage": 2}
    with pytest.raises(DistributedError, match="deepspeed"):
        run_distributed(train_dpo, distributed, base_path=tiny.base_dir, base_section=tiny.section("base_model"),
                        template_section=tiny.section("template"), dpo=tiny.section("dpo"),
                        dataset_path=tiny.preference_data, sft_adapter="sft", seed=SEED, out_dir=str(tmp_path / "dpo"))
    assert not list(tmp_path.iterdir())


# --- a quantised base: the adapter trains in float32 ------------------------------------------------

def _lora_a_share_moved(trainer, learning_rate: float) -> float:
    """One AdamW step of the trainer's own optimiser on a fake gradient: the share of lora_A entries it changes."""
    optimizer = trainer.create_optimizer()
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    generator = torch.Generator().manual_seed(SEED)
    trained = [(name, parameter) for name, parameter in trainer.model.named_parameters() if parameter.requires_grad]
    for _, parameter in trained:
        parameter.grad = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
    before = {name: parameter.detach().clone() for name, parameter in trained if "lora_A" in name}
    optimizer.step()
    changed = sum(int((parameter.detach() != before[name]).sum()) for name, parameter in trained if name in before)
    return changed / sum(tensor.numel() for tensor in before.values())


@pytest.mark.parametrize("stage", ["sft", "dpo"])
@pytest.mark.parametrize("trl_cast_kept", [False, True], ids=["ours", "trl_cast_kept"])
def test_adapters_on_a_4bit_base_train_in_float32_and_move_at_a_preference_learning_rate(
        tiny, sft_adapter, tmp_path, monkeypatch, stage, trl_cast_kept):
    """trl 1.16 casts the trainable parameters of a quantised model to bf16; an AdamW step at DPO's 5e-6 is then
    below bf16's resolution for most of lora_A. The trainers are built exactly as train_sft/train_dpo build them,
    on the tiny model in nf4 on the CPU (bitsandbytes loads it there; training 4-bit on CPU does not work, so
    nothing trains here). `trl_cast_kept` shows the defect the float32 cast removes."""
    import tunesmith.model.model as model_module
    import tunesmith.training.train as train_module

    monkeypatch.setattr(model_module, "can_train_quantised", lambda: True)  # a GPU machine, as far as loading goes
    if trl_cast_kept:
        monkeypatch.setattr(train_module, "trainable_in_float32", lambda model, section: 0)
    base = tiny.section("base_model") | {"quantization": "nf4", "dtype": "bfloat16", "compute_dtype": "bfloat16"}
    section = tiny.section(stage) | {"learning_rate": 5e-6, "max_steps": 1}
    if stage == "sft":
        trainer, _ = train_module.sft_trainer(tiny.base_dir, base, tiny.section("template"), section, tiny.sft_data,
                                              SEED, str(tmp_path / "checkpoints"), {"report_to": []})
    else:
        trainer, _, _ = train_module.preference_trainer(
            tiny.base_dir, base, tiny.section("template"), section, tiny.preference_data, sft_adapter.path, SEED,
            str(tmp_path / "checkpoints"), {"report_to": []}, str(tmp_path / "dpo"))
    assert getattr(trainer.model, "is_loaded_in_4bit", False), "the base is not quantised: the test proves nothing"
    dtypes = {parameter.dtype for parameter in trainer.model.parameters() if parameter.requires_grad}
    share = _lora_a_share_moved(trainer, 5e-6)
    print(f"\n{stage}: trainable dtypes {dtypes}; share of lora_A entries one lr-5e-6 step changes: {share:.4f}")
    if trl_cast_kept:
        assert dtypes == {torch.bfloat16} and share < 0.5, "trl no longer casts to bf16: drop this case"
    else:
        assert dtypes == {torch.float32}
        assert share >= 0.99


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_the_evaluation_batch_defaults_to_the_training_batch_and_sizes_the_reference_precompute(tiny, tmp_path,
                                                                                              method):
    """trl's own evaluation batch is 8 (and with it the batch of the reference's log-probabilities on the validation
    rows): several times a 13B recipe's training batch of 2, and the likely peak of its GPU memory."""
    from trl import SFTConfig

    from tunesmith.training.preference import trainer_class_and_config
    from tunesmith.training.train import _common_args

    batch = tiny.recipe["dpo"]["per_device_train_batch_size"]
    assert batch != 8, "the default would not be told apart from trl's"
    for value, expected in ((None, batch), (3, 3)):
        dpo = tiny.section("dpo") | {"method": method, "per_device_eval_batch_size": value}
        _, args = trainer_class_and_config(dpo, _common_args(dpo, SEED, str(tmp_path), {"report_to": []},
                                                             evaluate=True))
        assert (args.per_device_eval_batch_size, args.precompute_ref_batch_size) == (expected, expected)
        sft = tiny.section("sft") | {"per_device_eval_batch_size": value}
        args = SFTConfig(**_common_args(sft, SEED, str(tmp_path), {"report_to": []}, evaluate=True))
        assert args.per_device_eval_batch_size == (expected if value else tiny.recipe["sft"]["per_device_train_batch_size"])
