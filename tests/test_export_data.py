"""Curated data in trl's layouts: `load_dataset(folder)` gives real train/validation splits, and trl's
SFT and DPO trainers take them as they are, with no renaming."""

import duckdb
import pytest

from tiny_model import SEED, tiny  # noqa: F401  (fixture)
from tunesmith.data.export_data import LAYOUTS
from tunesmith.hub.hub import export_curated


def export(tiny, role, tmp_path):  # noqa: F811
    folder = tmp_path / f"{role}.dataset"
    card = tiny.sft_data.replace(".parquet", ".card.json") if role == "sft" else \
        tiny.preference_data.replace(".parquet", ".card.json")
    kept = tiny.sft_data if role == "sft" else tiny.preference_data
    counts = export_curated(kept, card, role, tiny.recipe["sources"], tiny.recipe["curate"], str(folder))
    return folder, kept, counts


def load(folder, *config):
    """load_dataset with a cache of its own: the default cache is shared by every process of this
    user, and while this test was written an entry there answered for a new folder with old columns
    (cause not pinned down), which let a broken export pass."""
    from datasets import load_dataset

    return load_dataset(str(folder), *config, cache_dir=f"{folder}.datasets-cache")


def split_counts(parquet) -> dict:
    return dict(duckdb.sql(f"SELECT split, count(*) FROM '{parquet}' GROUP BY split").fetchall())


@pytest.mark.parametrize("role", ["sft", "preference"])
def test_every_layout_loads_as_train_and_validation_splits(tiny, role, tmp_path):  # noqa: F811
    folder, kept, counts = export(tiny, role, tmp_path)
    assert counts == split_counts(kept)
    assert counts["validation"] > 0, "the sample data has validation rows; an empty split would hide a bug"
    first, second = LAYOUTS[role]
    default = load(folder)  # the card's default config
    assert set(default) == {"train", "validation"}
    assert {split: len(rows) for split, rows in default.items()} == counts
    expected = {"sft": {"prompt", "completion"}, "preference": {"prompt", "chosen", "rejected"}}[role]
    assert set(default["train"].column_names) == expected | {"id", "source"}
    conversational = load(folder, second)
    assert {split: len(rows) for split, rows in conversational.items()} == counts
    row = conversational["train"][0]
    turns = row["messages"] if role == "sft" else row["prompt"] + row["chosen"]
    assert [turn["role"] for turn in turns] == ["user", "assistant"]
    # The same rows in both layouts, in the same order, with the curated text unchanged.
    original = duckdb.sql(f"SELECT * FROM '{kept}' WHERE split = 'train'").df()
    assert list(default["train"]["id"]) == list(original["id"])
    text = "completion" if role == "sft" else "chosen"
    assert list(default["train"][text]) == list(original["response" if role == "sft" else "chosen"])
    assert conversational["train"]["id"] == default["train"]["id"]


def test_trl_trains_sft_and_dpo_on_the_exported_layouts_without_renaming(tiny, tmp_path):  # noqa: F811
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.data_utils import is_conversational

    tokenizer = AutoTokenizer.from_pretrained(tiny.base_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    common = dict(max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False, report_to="none",
                  save_strategy="no", max_length=64, seed=SEED)
    sft_folder, _, _ = export(tiny, "sft", tmp_path)
    sft = load(sft_folder)
    trainer = trl.SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny.base_dir), processing_class=tokenizer,
                             train_dataset=sft["train"], eval_dataset=sft["validation"],
                             args=trl.SFTConfig(output_dir=str(tmp_path / "sft"), **common))
    assert trainer.train().global_step == 1
    labels = trainer.train_dataset[0]["labels"]
    assert -100 in labels and any(label != -100 for label in labels), "trl saw prompt/completion: loss on the answer"

    preference_folder, _, _ = export(tiny, "preference", tmp_path)
    preference = load(preference_folder)
    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny.base_dir), processing_class=tokenizer,
                             train_dataset=preference["train"],
                             args=trl.DPOConfig(output_dir=str(tmp_path / "dpo"), **common))
    assert trainer.train().global_step == 1
    assert is_conversational(load(sft_folder, "messages")["train"][0])
    assert is_conversational(load(preference_folder, "messages")["train"][0])


def test_an_interrupted_export_leaves_no_folder(tiny, tmp_path, monkeypatch):  # noqa: F811
    import pyarrow.parquet as pq

    calls = []

    def failing_write(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    real_write = pq.write_table
    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        export(tiny, "sft", tmp_path)
    assert not (tmp_path / "sft.dataset").exists()
    assert not list(tmp_path.glob(".sft.dataset*")), "no partial folder is left beside it"
