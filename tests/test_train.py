"""LoRA CPT, SFT and DPO on the tiny model: adapter folders, metadata, what the loss sees, clean failure,
the curated validation split, and training on two processes."""

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from tiny_model import PRETRAIN_TEXT, SEED, cpt_adapter, dpo_adapter, sft_adapter, tiny  # noqa: F401  (fixtures)
from tunesmith.model import load_model, read_metadata
from tunesmith.template import PromptTemplate
from tunesmith.train import split_rows, train_cpt, train_dpo, train_sft


def assert_no_partial_siblings(folder: Path) -> None:
    assert not [entry.name for entry in folder.parent.iterdir() if entry.name.endswith(".partial")]


def assert_lora_trained(adapter: str) -> None:
    weights = load_file(f"{adapter}/adapter_model.safetensors")
    second_factors = {name: tensor for name, tensor in weights.items() if ".lora_B." in name}
    assert second_factors, "no LoRA weights saved"
    # peft initialises lora_B to zero, so a nonzero B means the optimiser moved it.
    assert all(tensor.abs().sum() > 0 for tensor in second_factors.values())


def test_sft_writes_an_adapter_peft_loads(tiny, sft_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = Path(sft_adapter.path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.base_dir), folder)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    metadata = read_metadata(folder)
    assert metadata == {
        "stage": "sft", "template_hash": PromptTemplate(tiny.recipe["template"]).hash, "base_model": tiny.base_dir,
        "seed": SEED, "base_adapters": [], "rows": metadata["rows"], "eval_rows": metadata["eval_rows"],
        "processes": 1, "parallelism": "NO", "effective_batch_size": tiny.recipe["sft"]["batch_size"],
    }
    assert metadata["rows"] + metadata["eval_rows"] == pq.read_metadata(tiny.sft_data).num_rows
    with open(folder / "training_log.csv", newline="") as handle:
        losses = [row["loss"] for row in csv.DictReader(handle) if row.get("loss")]
    assert len(losses) == tiny.recipe["sft"]["max_steps"]
    assert sft_adapter.result["rows"] == metadata["rows"]
    assert not (folder / "trainer").exists()
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


def test_dpo_trains_on_top_of_the_sft_adapter(tiny, sft_adapter, dpo_adapter):
    from peft import PeftModel

    metadata = read_metadata(dpo_adapter)
    assert metadata["stage"] == "dpo" and metadata["on_top_of"] == sft_adapter.path
    assert metadata["template_hash"] == read_metadata(sft_adapter.path)["template_hash"]
    assert metadata["rows"] + metadata["eval_rows"] == pq.read_metadata(tiny.preference_data).num_rows
    assert (Path(dpo_adapter) / "training_log.csv").is_file()
    merged_sft = load_model(tiny.base_dir, tiny.section("base_model"), adapters=[sft_adapter.path])
    assert isinstance(PeftModel.from_pretrained(merged_sft, dpo_adapter), PeftModel)
    assert_lora_trained(dpo_adapter)
    assert_no_partial_siblings(Path(dpo_adapter))


def _train(tiny, dataset: str, out_dir: Path) -> dict:
    return train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), tiny.section("sft"),
                     dataset, SEED, str(out_dir))


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


KILLED_RUN = """
import sys
from tunesmith.train import train_sft
base, base_section, template, sft, data, seed, out = sys.argv[1:]
import json
train_sft(base, json.loads(base_section), json.loads(template), json.loads(sft), data, int(seed), out)
"""


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny, tmp_path, caplog):
    """SIGKILL a real SFT run after its second checkpoint; the restart continues, not from step 0."""
    import logging
    import signal
    import subprocess
    import sys
    import time

    sft = tiny.section("sft") | {"max_steps": 40, "save_steps": 2, "logging_steps": 1}
    out = tmp_path / "adapter"
    args = [tiny.base_dir, json.dumps(tiny.section("base_model")), json.dumps(tiny.section("template")),
            json.dumps(sft), tiny.sft_data, str(SEED), str(out)]
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    process = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(Path(f"{out}.checkpoints").glob("*/checkpoint-4/trainer_state.json")):
        assert process.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    (checkpoints,) = Path(f"{out}.checkpoints").iterdir()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists(), "a killed run must not leave an adapter"
    resumed_from = max(int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*"))
    assert resumed_from >= 4

    import trl

    steps_run = []
    original_step = trl.SFTTrainer.training_step

    def recording_step(self, *args, **kwargs):
        steps_run.append(self.state.global_step + 1)
        return original_step(self, *args, **kwargs)

    with caplog.at_level(logging.INFO, logger="tunesmith.train"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(trl.SFTTrainer, "training_step", recording_step)
        train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), sft, tiny.sft_data,
                  SEED, str(out))
    assert f"resuming from {checkpoints / f'checkpoint-{resumed_from}'}" in caplog.text
    assert steps_run[0] == resumed_from + 1 and steps_run[-1] == 40
    with open(out / "training_log.csv", newline="") as handle:
        logged = [int(float(row["step"])) for row in csv.DictReader(handle) if row.get("loss")]
    assert logged == list(range(1, 41)), "the history of the killed run is kept, each step once"
    assert not Path(f"{out}.checkpoints").exists(), "checkpoints are removed once the adapter is in place"


def test_same_seed_gives_the_same_adapter_weights(tiny, tmp_path):
    sft = tiny.section("sft")
    for name in ("first", "second"):
        train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), sft, tiny.sft_data,
                  SEED, str(tmp_path / name))
    first = load_file(tmp_path / "first" / "adapter_model.safetensors")
    second = load_file(tmp_path / "second" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all((first[key] == second[key]).all() for key in first)


def test_training_curves_are_drawn(sft_adapter):
    png = Path(sft_adapter.path) / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def with_split(parquet: str, out: Path, validation: float = 0.1) -> str:
    """The curated data with a `split` column as curation writes it: by each row's content hash."""
    import pyarrow as pa

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
    sft = tiny.section("sft") | {"max_steps": 4, "logging_steps": 2}
    train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), sft, dataset, SEED,
              str(tmp_path / "adapter"))
    with open(tmp_path / "adapter" / "training_log.csv", newline="") as handle:
        evaluated = [row for row in csv.DictReader(handle) if row.get("eval_loss")]
    assert [int(float(row["step"])) for row in evaluated] == [2, 4]
    metadata = read_metadata(tmp_path / "adapter")
    assert metadata["eval_rows"] == len(held) > 0
    assert metadata["rows"] == pq.read_metadata(dataset).num_rows - len(held)


def test_dpo_evaluates_on_the_validation_pairs(tiny, sft_adapter, tmp_path):
    dataset = with_split(tiny.preference_data, tmp_path / "split.parquet", validation=0.2)
    held = [side for side in pq.read_table(dataset)["split"].to_pylist() if side == "validation"]
    dpo = tiny.section("dpo") | {"max_steps": 2, "logging_steps": 2}
    train_dpo(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), dpo, dataset, sft_adapter.path,
              SEED, str(tmp_path / "dpo"))
    with open(tmp_path / "dpo" / "training_log.csv", newline="") as handle:
        evaluated = [row for row in csv.DictReader(handle) if row.get("eval_loss")]
    assert [int(float(row["step"])) for row in evaluated] == [2]
    assert evaluated[0]["eval_rewards/accuracies"] != ""
    assert read_metadata(tmp_path / "dpo")["eval_rows"] == len(held) > 0


@pytest.mark.parametrize("strategy", ["wrapped", "bfd"])
def test_packed_sft_trains(tiny, tmp_path, strategy):
    sft = tiny.section("sft") | {"packing": True, "packing_strategy": strategy, "max_steps": 2}
    result = train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), sft, tiny.sft_data,
                       SEED, str(tmp_path / "adapter"))
    assert result["train_loss"] > 0 and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_dpo_can_continue_the_sft_adapter(tiny, sft_adapter, tmp_path):
    from peft import PeftModel

    from tunesmith.train import train_dpo

    dpo = tiny.section("dpo") | {"start": "continue_sft"}
    train_dpo(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), dpo, tiny.preference_data,
              sft_adapter.path, SEED, str(tmp_path / "dpo"))
    metadata = read_metadata(tmp_path / "dpo")
    assert metadata["continues"] == sft_adapter.path and "on_top_of" not in metadata
    sft_weights = load_file(Path(sft_adapter.path) / "adapter_model.safetensors")
    dpo_weights = load_file(tmp_path / "dpo" / "adapter_model.safetensors")
    assert sft_weights.keys() == dpo_weights.keys(), "the same adapter, trained on"
    assert any(not (sft_weights[key] == dpo_weights[key]).all() for key in sft_weights)
    base = load_model(tiny.base_dir, tiny.section("base_model"))
    assert isinstance(PeftModel.from_pretrained(base, str(tmp_path / "dpo")), PeftModel)


def test_export_writes_a_standalone_merged_model(tiny, sft_adapter, dpo_adapter, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.model import export_merged

    chain = [sft_adapter.path, dpo_adapter]
    export_merged(tiny.base_dir, tiny.section("base_model"), chain, str(tmp_path / "merged"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    merged = load_model(tiny.base_dir, tiny.section("base_model"), adapters=chain)
    ids = tokenizer("### 指示\\n3と5を足すと？\\n### 回答\\n", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, merged(ids).logits, atol=1e-5)
    assert not list((tmp_path / "merged").glob("adapter_*")), "no adapter files: a plain model folder"


# --- continued pretraining -------------------------------------------------------------------------

def test_cpt_trains_an_adapter_on_every_token_of_the_raw_text(tiny, cpt_adapter):
    from tunesmith.base_model import read_text_lines

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
    with open(folder / "training_log.csv", newline="") as handle:
        assert len([row for row in csv.DictReader(handle) if row.get("loss")]) == 3
    assert_no_partial_siblings(folder)


def test_cpt_refuses_sources_without_text(tiny, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ValueError, match="continued_pretraining"):
        train_cpt(tiny.base_dir, tiny.section("base_model"), tiny.section("continued_pretraining"), [str(empty)],
                  SEED, str(tmp_path / "cpt"))
    assert not (tmp_path / "cpt").exists()


def test_sft_trains_on_the_base_merged_with_the_cpt_adapter(tiny, cpt_adapter, tmp_path, monkeypatch):
    import tunesmith.train as train_module

    loaded = []
    real_load = train_module.load_model
    monkeypatch.setattr(train_module, "load_model",
                        lambda *args, **kwargs: loaded.append(kwargs.get("adapters")) or real_load(*args, **kwargs))
    sft = tiny.section("sft") | {"max_steps": 2}
    train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), sft, tiny.sft_data, SEED,
              str(tmp_path / "sft"), base_adapters=[cpt_adapter.path])
    assert loaded == [[cpt_adapter.path]]
    assert read_metadata(tmp_path / "sft")["base_adapters"] == [cpt_adapter.path]
    assert_lora_trained(str(tmp_path / "sft"))

    loaded.clear()
    dpo = tiny.section("dpo") | {"max_steps": 1}
    train_dpo(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), dpo, tiny.preference_data,
              str(tmp_path / "sft"), SEED, str(tmp_path / "dpo"), base_adapters=[cpt_adapter.path])
    assert loaded == [[cpt_adapter.path, str(tmp_path / "sft")]], "DPO's model is base + CPT + SFT, in that order"
    assert read_metadata(tmp_path / "dpo")["base_adapters"] == [cpt_adapter.path]


# --- several processes -----------------------------------------------------------------------------

def test_sft_on_two_processes_writes_one_adapter_that_loads(tiny, tmp_path, capfd):
    """A real `accelerate launch` of two CPU processes (gloo): both train, rank 0 alone writes."""
    from peft import PeftModel

    sft = tiny.section("sft") | {"max_steps": 3, "logging_steps": 1}
    distributed = tiny.section("distributed") | {"processes": 2}
    out = tmp_path / "adapters" / "sft"
    result = train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), sft, tiny.sft_data,
                       SEED, str(out), threads=2, distributed=distributed)
    output = capfd.readouterr().err
    for rank in (0, 1):
        assert any(f"[rank {rank}/2]" in line and "sft: " in line for line in output.splitlines()), \
            f"rank {rank} did not train:\n{output[-3000:]}"
    assert sorted(entry.name for entry in out.parent.iterdir()) == ["sft"], "one adapter, no partial or checkpoints"
    metadata = read_metadata(out)
    assert metadata["processes"] == 2 and metadata["parallelism"] == "MULTI_CPU"
    assert metadata["effective_batch_size"] == 2 * sft["batch_size"]
    assert result == {"train_loss": result["train_loss"], "rows": metadata["rows"]} and result["train_loss"] > 0
    with open(out / "training_log.csv", newline="") as handle:
        assert len([row for row in csv.DictReader(handle) if row.get("loss")]) == 3
    assert_lora_trained(str(out))
    assert isinstance(PeftModel.from_pretrained(load_model(tiny.base_dir, tiny.section("base_model")), out), PeftModel)


def test_a_failing_multi_process_run_reports_its_output_and_writes_nothing(tiny, tmp_path):
    from tunesmith.distributed import DistributedError

    distributed = tiny.section("distributed") | {"processes": 2}
    out = tmp_path / "adapters" / "sft"
    with pytest.raises(DistributedError, match="distributed.processes") as error:
        train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), tiny.section("sft"),
                  str(tmp_path / "no-such.parquet"), SEED, str(out), distributed=distributed)
    assert "no-such.parquet" in str(error.value), "the processes' own error is shown"
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_launch_options_per_strategy(monkeypatch):
    import importlib.util

    import torch

    from tunesmith.distributed import DistributedError, check_strategy, launch_arguments

    section = {"processes": 4, "strategy": "ddp", "zero_stage": 2}
    ddp = launch_arguments(section, 29123)
    assert ddp[0] == "--multi_gpu" and ddp[ddp.index("--num_processes") + 1] == "4"
    assert ddp[ddp.index("--main_process_port") + 1] == "29123"
    fsdp = launch_arguments(section | {"strategy": "fsdp"}, 29123)
    assert "--use_fsdp" in fsdp and fsdp[fsdp.index("--fsdp_version") + 1] == "2"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "deepspeed" else real_find_spec(name, *args))
    with pytest.raises(DistributedError, match="distributed.strategy is 'deepspeed'.*pip install deepspeed"):
        launch_arguments(section | {"strategy": "deepspeed"}, 29123)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    deepspeed = launch_arguments(section | {"strategy": "deepspeed", "zero_stage": 3}, 29123)
    assert deepspeed[deepspeed.index("--zero_stage") + 1] == "3"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for strategy in ("fsdp", "deepspeed"):
        with pytest.raises(DistributedError, match=f"distributed.strategy is '{strategy}'.*CUDA"):
            check_strategy(section | {"strategy": strategy}, {"quantization": "none"})
    check_strategy(section, {"quantization": "nf4"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(DistributedError, match="base_model.quantization"):
        check_strategy(section | {"strategy": "fsdp"}, {"quantization": "nf4"})


def test_deepspeed_without_the_package_stops_before_training(tiny, tmp_path, monkeypatch):
    import importlib.util

    import tunesmith.train as train_module
    from tunesmith.distributed import DistributedError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "deepspeed" else real_find_spec(name, *args))
    monkeypatch.setattr(train_module, "load_model", lambda *args, **kwargs: pytest.fail("loaded a model"))
    distributed = {"processes": 2, "strategy": "deepspeed", "zero_stage": 2}
    with pytest.raises(DistributedError, match="deepspeed"):
        train_dpo(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), tiny.section("dpo"),
                  tiny.preference_data, "sft", SEED, str(tmp_path / "dpo"), distributed=distributed)
    assert not list(tmp_path.iterdir())
