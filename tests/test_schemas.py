import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

SCHEMA_DIRECTORY = Path(__file__).resolve().parents[1] / "schemas"
JSON_SCHEMAS = sorted(SCHEMA_DIRECTORY.glob("*.json"))

ROW_EXAMPLES = {
    "sft_row": {
        "id": "0" * 64, "source": "ichikara", "file": "data/raw/ichikara.jsonl", "line": 1,
        "prompt": "日本の首都は？", "response": "東京です。", "split": "train",
    },
    "preference_row": {
        "id": "a" * 64, "source": "hh-ja", "file": "data/raw/hh.jsonl", "line": 3,
        "prompt": "日本の首都は？", "chosen": "東京です。", "rejected": "大阪です。", "split": "validation",
    },
    "task_row": {"task_id": 0, "input": "日本の首都は？_x000D_"},
    "submission_row": {"task_id": 0, "input": "日本の首都は？", "output": "東京です。"},
}


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def object_schemas(schema, where="#"):
    """Every (sub)schema that declares properties, with a pointer for messages."""
    if isinstance(schema, dict):
        if "properties" in schema:
            yield where, schema
        for key, value in schema.items():
            yield from object_schemas(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from object_schemas(value, f"{where}/{index}")


def test_the_row_schemas_exist():
    assert {path.name for path in JSON_SCHEMAS} >= {f"{name}.schema.json" for name in ROW_EXAMPLES}


@pytest.mark.parametrize("path", JSON_SCHEMAS, ids=lambda path: path.name)
def test_schema_is_valid_closed_and_described(path):
    schema = load(path)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    for where, sub in object_schemas(schema):
        assert sub.get("additionalProperties") is False, f"{path.name} {where}: additionalProperties must be false"
        for name, prop in sub["properties"].items():
            assert prop.get("description"), f"{path.name} {where}/properties/{name}: no description"


@pytest.mark.parametrize("name", sorted(ROW_EXAMPLES))
def test_row_schema_accepts_a_good_row_and_rejects_an_unknown_key(name):
    validator = Draft202012Validator(load(SCHEMA_DIRECTORY / f"{name}.schema.json"))
    good = ROW_EXAMPLES[name]
    assert list(validator.iter_errors(good)) == []
    assert not validator.is_valid({**good, "extra": 1})
    for key in good:
        assert not validator.is_valid({k: v for k, v in good.items() if k != key}), f"{name}: {key} should be required"


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("sft_row", "id", "xyz"),
        ("sft_row", "line", 0),
        ("sft_row", "response", ""),
        ("preference_row", "rejected", ""),
        ("preference_row", "id", "A" * 64),
        ("sft_row", "split", "test"),
        ("task_row", "task_id", -1),
        ("submission_row", "output", None),
        ("submission_row", "task_id", True),
    ],
)
def test_row_schema_rejects_bad_values(name, key, value):
    validator = Draft202012Validator(load(SCHEMA_DIRECTORY / f"{name}.schema.json"))
    assert not validator.is_valid({**ROW_EXAMPLES[name], key: value})
