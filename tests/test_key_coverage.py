"""Every recipe key in the schema is read by some code: the reads are recorded, not declared.

What counts as read (tunesmith.jobs.reads): a key some job looked up, from the manifests of the README's default run
(the session's `default_run`, which the end-to-end tests build anyway: no training run is added); a key the
workflow itself looks up while planning (`plan.steps` traced with its reads recorded, over the shipped recipes and
the stage table's recipe shapes; the settings it hands each job are not reads); and a key the stages' own code
looks up on branches the default run does not take, where that code runs without a model (`_traced_reads`).
A section read whole (a stage declaring `dpo.lora`, a judge listing `judge.local`'s names) counts for none of the
keys inside it, so a new key under `dpo.`, `curate.near_dedup.` or `judge.local.` that no code reads fails here,
wherever it is.

Keys read only on other paths are listed in NOT_IN_THE_DEFAULT_RUN, one by one (never a section), each with the
recipe choice that reads it; the list is checked to hold no key those reads reach.
"""

import copy
import json

import pytest

from conftest import REPO
from test_stage_table import SHAPES, shaped
from tunesmith.config import plan
from tunesmith.config.recipe import RecipeError, load_recipe
from tunesmith.config.schema import load_schema
from tunesmith.jobs.reads import schema_leaves, unread_schema_keys, wrap

# Read only on a path neither the default run nor `_traced_reads` takes: key -> the choice (or the reader) that
# reads it. Each is read where its tests take that path (test_judge, test_generate, test_tracking, test_hub,
# test_launcher, test_fetch, test_workflow's sweep and judge runs, test_standin's run).
_LOCAL_JUDGE = ("batch_size", "compute_dtype", "dtype", "quantization", "trust_remote_code",
                "vllm.gpu_memory_utilization", "vllm.max_model_len")
_JUDGE = ("bootstrap_samples", "confidence", "max_new_tokens", "parse_retries", "temperature")
_OPENAI = ("api_key_env", "base_url", "concurrency", "max_retries", "model", "timeout")
NOT_IN_THE_DEFAULT_RUN = {
    "base_model.compute_dtype": "base_model.quantization: nf4", "base_model.revision": "a hub base_model.path",
    **{f"generate.vllm.{name}": "generate.backend: vllm" for name in ("gpu_memory_utilization", "max_model_len")},
    "distributed.zero_stage": "distributed.strategy: deepspeed",
    **{f"judge.{name}": "judge.backend other than none" for name in _JUDGE},
    **{f"judge.local.{name}": "judge.backend: transformers or vllm" for name in _LOCAL_JUDGE},
    **{f"judge.openai.{name}": "judge.backend: openai" for name in _OPENAI},
    "tracking.project": "tracking.report_to not empty", "tracking.mlflow.tracking_uri": "tracking.report_to: [mlflow]",
    "tracking.wandb.mode": "tracking.report_to: [wandb]",
    # read from the workflow's config, not a job's params (so in no manifest)
    "curate.memory_limit": "tunesmith.data.curate.curate_memory_limit", "repeats": "rules/common.smk (replicates)",
    "sweep.matrix": "rules/common.smk (variants)", "pairs.shards": "tunesmith.workflow (the pairs jobs' paths)",
    "pairs.min_margin": "scripts/build_pairs.py (pairs.enabled)",
    **{f"publish.{name}": "rules/publish.smk (the push rules)" for name in ("dataset_repo", "license", "model_repo",
                                                                           "private")},
}


def _planning_reads() -> set[str]:
    """The keys `plan.steps` looks up to decide the stages and what each reads (not the settings it picks for
    them), over the shipped recipes and the stage table's shapes."""
    recipes = [load_recipe(REPO / "recipes" / name) for name in ("default.yaml", "sweep.yaml", "on-policy.yaml")]
    for shape in SHAPES:
        try:
            recipes.append(shaped(shape))
        except RecipeError:
            continue
    read, original_pick, original_lookup = set(), plan.pick, plan.lookup
    for recipe in recipes:
        # the settings a step hands its job, and the declared keys it compares with file paths, are not reads
        plain = copy.deepcopy(recipe)
        plan.pick = lambda _, keys, plain=plain: original_pick(plain, keys)
        plan.lookup = lambda _, dotted, plain=plain: original_lookup(plain, dotted)
        try:
            plan.steps(wrap(recipe, read, ""))
        finally:
            plan.pick, plan.lookup = original_pick, original_lookup
    return read


def _traced_reads(tmp_path) -> set[str]:
    """The keys real code looks up on branches the default run does not take, where that code runs in a moment
    without a model: each preference method's trl config, continued pretraining's and packed SFT's arguments,
    a chat template, sampled generation."""
    from tunesmith.generation.generate import vllm_sampling
    from tunesmith.model.template import PromptTemplate
    from tunesmith.training.preference import trainer_class_and_config
    from tunesmith.training.train import _common_args, _lora_config, cpt_arguments, sft_arguments

    read = set()
    for shape in ("SimPO on two nodes, tracked in MLflow and W&B", "KTO on two processes"):
        dpo = wrap(shaped(shape), read, "")["dpo"]
        trainer_class_and_config(dpo, _common_args(dpo, 1, str(tmp_path), {"report_to": []}, evaluate=True))
    recipe = wrap(shaped("continued pretraining, DPO continuing SFT"), read, "")
    cpt = recipe["continued_pretraining"]
    cpt_arguments(cpt, _common_args(cpt, 1, str(tmp_path), {"report_to": []}))
    _lora_config(cpt["lora"])
    recipe = wrap(shaped("chat template, sampling, packing"), read, "")
    sft = recipe["sft"]
    sft_arguments(sft, _common_args(sft, 1, str(tmp_path), {"report_to": []}))
    assert PromptTemplate(recipe["template"]).hash
    vllm_sampling(recipe["generate"], seed=1)
    read |= _on_policy_reads(tmp_path)
    return read


def _on_policy_reads(tmp_path) -> set[str]:
    """The on-policy pairs' jobs (recipes/on-policy.yaml) with a stand-in sampler instead of the SFT model: reading
    and sampling the prompts, the sampling settings, the grader."""
    from tunesmith.training.on_policy import grader_identity, read_prompts, sample_prompts, sampling_settings

    read = set()
    recipe = load_recipe(REPO / "recipes/on-policy.yaml")
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text('{"id": "1", "prompt": "1+1=", "reference": "2"}\n', encoding="utf-8")
    recipe["pairs"]["prompts"] = str(prompts_file)
    recipe = wrap(recipe, read, "")
    pairs = recipe["pairs"]
    prompts = read_prompts(pairs, seed=1)
    sampling = sampling_settings(pairs, recipe["generate"])
    rows = sample_prompts(lambda texts, n, sampling, seeds: [["2"] * n for _ in texts], prompts, pairs, sampling,
                          recipe["generate"]["guards"], str, seed=1, cache_dir=tmp_path / "samples")
    assert len(rows[0]["answers"]) == pairs["answers_per_prompt"]
    assert grader_identity(pairs["grader"], None)["kind"] == "references"
    return read


def _job_reads(run) -> set[str]:
    read = set()
    for path in run.glob("results/**/*.manifest.json"):
        read |= set(json.loads(path.read_text(encoding="utf-8")).get("settings_read") or [])
    return read


@pytest.fixture(scope="module")
def default_reads(default_run, tmp_path_factory) -> set[str]:
    return _job_reads(default_run) | _planning_reads() | _traced_reads(tmp_path_factory.mktemp("traced"))


def problems(schema: dict, read: set[str]) -> list[str]:
    return [key for key in unread_schema_keys(schema, read) if key not in NOT_IN_THE_DEFAULT_RUN]


@pytest.mark.e2e
def test_every_schema_key_is_read_by_some_job_or_the_plan(default_reads):
    unread = problems(load_schema(), default_reads)
    assert not unread, f"no code read these schema keys: {unread}"


@pytest.mark.e2e
def test_the_keys_left_out_are_schema_keys_the_default_run_does_not_read(default_reads):
    schema = load_schema()
    assert set(NOT_IN_THE_DEFAULT_RUN) <= schema_leaves(schema)
    assert set(NOT_IN_THE_DEFAULT_RUN) <= set(unread_schema_keys(schema, default_reads)), "read after all: drop it"


def planted(schema: dict, dotted: str) -> dict:
    """The schema with a new key at `dotted` (a number with a default and a description, like any key)."""
    schema = copy.deepcopy(schema)
    node = schema
    for name in dotted.split("."):
        node = node["properties"].setdefault(name, {})
    node.update(type="number", default=1, description="planted")
    return schema


@pytest.mark.e2e
@pytest.mark.parametrize("key", ["dpo.planted_key", "curate.near_dedup.planted_key", "judge.local.planted_key"])
def test_a_planted_key_no_code_reads_is_named(default_reads, key):
    """The key is in a section the stage table declares whole (dpo's keys, near-dup's, the local judge's), so a
    check of what is declared passes it; the recorded reads do not."""
    assert problems(planted(load_schema(), key), default_reads) == [key]
