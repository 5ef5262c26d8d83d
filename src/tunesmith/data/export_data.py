"""Curated data in the layouts trl and `datasets` load without renaming, beside the Parquet we train on.

One folder per curated dataset, `results/curated/<key>/<role>.dataset/`, ready for `load_dataset`
locally and for the hub as it is (the push target uploads it unchanged):

  sft:        prompt_completion/{train,validation}.parquet   prompt, completion (strings)
              messages/{train,validation}.parquet            messages: [user turn, assistant turn]
  preference: preference/{train,validation}.parquet          prompt, chosen, rejected (strings)
              messages/{train,validation}.parquet            prompt: [user turn], chosen/rejected: [assistant turn]
  README.md   the dataset card; its YAML `configs` name each layout and its splits, so
              `load_dataset(folder)` gives the first layout's DatasetDict and
              `load_dataset(folder, "messages")` the conversational one.

The text is the curated text, before any template: a trainer applies its own (trl's chat template
for `messages`). Train and validation are the curation's deterministic `split`. Every row keeps its
`id` and `source`, so it traces back to the data card and the raw file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tunesmith.jobs.atomic import atomic_path

SPLITS = ("train", "validation")
# role -> {config name: columns built from a curated row}
LAYOUTS = {
    "sft": {
        "prompt_completion": lambda row: {"prompt": row["prompt"], "completion": row["response"]},
        "messages": lambda row: {"messages": [{"role": "user", "content": row["prompt"]},
                                              {"role": "assistant", "content": row["response"]}]},
    },
    "preference": {
        "preference": lambda row: {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]},
        "messages": lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}],
                                 "chosen": [{"role": "assistant", "content": row["chosen"]}],
                                 "rejected": [{"role": "assistant", "content": row["rejected"]}]},
    },
}


def configs(role: str) -> list[dict]:
    """The card's `configs` metadata: each layout with its split files (the first is the default)."""
    return [{"config_name": name, **({"default": True} if index == 0 else {}),
             "data_files": [{"split": split, "path": f"{name}/{split}.parquet"} for split in SPLITS]}
            for index, name in enumerate(LAYOUTS[role])]


def export_dataset(kept_path: str | os.PathLike, role: str, out_dir: str | os.PathLike, card_text: str) -> dict:
    """Write every layout of the curated `role` dataset, split into train and validation, and the
    dataset card `card_text` as README.md, into `out_dir` (atomically). Returns rows per split."""
    if role not in LAYOUTS:
        raise ValueError(f"no export layout for role {role!r}")
    rows = pq.read_table(kept_path).to_pylist()
    by_split = {split: [row for row in rows if row["split"] == split] for split in SPLITS}
    unknown = {row["split"] for row in rows} - set(SPLITS)
    if unknown:
        raise ValueError(f"{kept_path}: rows with split {sorted(unknown)}; expected {list(SPLITS)}")
    with atomic_path(out_dir, directory=True) as tmp:
        for name, build in LAYOUTS[role].items():
            (Path(tmp) / name).mkdir()
            for split, split_rows in by_split.items():
                records = [{**build(row), "id": row["id"], "source": row["source"]} for row in split_rows]
                table = pa.Table.from_pylist(records, schema=_schema(role, name))
                pq.write_table(table, Path(tmp) / name / f"{split}.parquet")
        (Path(tmp) / "README.md").write_text(card_text, encoding="utf-8")
    return {split: len(split_rows) for split, split_rows in by_split.items()}


def _schema(role: str, layout: str) -> pa.Schema:
    """Fixed column types, so an empty split has the same features as a full one."""
    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    turns = pa.list_(turn)
    fields = {
        ("sft", "prompt_completion"): [("prompt", pa.string()), ("completion", pa.string())],
        ("sft", "messages"): [("messages", turns)],
        ("preference", "preference"): [("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())],
        ("preference", "messages"): [("prompt", turns), ("chosen", turns), ("rejected", turns)],
    }[(role, layout)]
    return pa.schema([*fields, ("id", pa.string()), ("source", pa.string())])
