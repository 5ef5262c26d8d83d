"""Which settings a job looked up: lookups, `.get` and `**` unpacking count; hashing a section does not."""

import json

from recipe_keys import leaves
from tunesmith.jobs.reads import RecordingParams, recording_params, wrap


def test_lookups_are_recorded_as_dotted_paths_and_hashing_is_not_a_read():
    log = set()
    settings = wrap({"sft": {"lora": {"r": 1, "alpha": 2}, "max_length": 3, "unused": 4},
                     "sources": [{"path": "a", "split": "train"}]}, log, "")
    section = settings["sft"]
    copied = {**section["lora"]}
    section.get("max_length")
    json.dumps(settings, sort_keys=True)
    assert [source["path"] for source in settings["sources"]] == ["a"]
    assert copied == {"r": 1, "alpha": 2}
    assert leaves(log) == ["sft.lora.alpha", "sft.lora.r", "sft.max_length", "sources[0].path"]
    assert "sft.unused" not in log and "sources[0].split" not in log


def test_a_snakemake_script_object_records_its_params_and_gets_them_back():
    from snakemake.iocontainers import Params, Snakemake

    class Files(list):
        def _plainstrings(self):
            return self

    job = Snakemake(Files(), Files(), Params(fromdict={"sft": {"a": 1, "b": 2}, "seed": 3}), {}, 1, {}, Files(), {},
                    "train_sft", 0)
    log = set()
    with recording_params(job, RecordingParams(job.params, log)):
        assert job.params.sft["a"] == 1 and job.params.seed == 3
    assert sorted(log) == ["seed", "sft", "sft.a"]
    assert type(job) is Snakemake and job.params.sft == {"a": 1, "b": 2}


def test_a_recorded_section_dumps_as_plain_yaml():
    import yaml

    log = set()
    section = wrap({"sources": [{"id": "a", "path": "x.jsonl"}], "curate": {"max": 3}}, log, "")
    assert yaml.safe_load(yaml.safe_dump(section)) == {"sources": [{"id": "a", "path": "x.jsonl"}], "curate": {"max": 3}}
    assert yaml.safe_load(yaml.dump(section["sources"])) == [{"id": "a", "path": "x.jsonl"}]


def test_a_schema_key_is_read_only_when_it_or_something_inside_it_is_looked_up():
    from tunesmith.jobs.reads import schema_leaves, unread_schema_keys

    schema = {"properties": {
        "dpo": {"properties": {"beta": {"type": "number"}, "lora": {"properties": {"r": {"type": "integer"}}},
                               "trainer": {"type": "object"}}},
        "sources": {"type": "array", "items": {"properties": {"path": {"type": "string"}}}}}}
    assert schema_leaves(schema) == {"dpo.beta", "dpo.lora.r", "dpo.trainer", "sources[].path"}
    # the sections alone (a stage that declares or hashes `dpo.lora` whole) read none of their keys
    assert unread_schema_keys(schema, {"dpo", "dpo.lora", "sources", "sources[0]"}) == [
        "dpo.beta", "dpo.lora.r", "dpo.trainer", "sources[].path"]
    assert unread_schema_keys(schema, {"dpo.beta", "dpo.lora.r", "dpo.trainer.optim", "sources[3].path"}) == []
