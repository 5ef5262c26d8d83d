"""On-policy preference pairs (tunesmith.training.on_policy): keys, sharding, resuming, accounting, curation."""

import copy
import json
from collections import Counter

import pytest

from conftest import REPO, snakemake
from stage_keys import downstream_of
from tiny_model import TASKS, sft_adapter, tiny  # noqa: F401  (fixtures)
from tunesmith.config import plan
from tunesmith.config.recipe import RecipeError, load_recipe, validate_recipe
from tunesmith.data.curate import curate
from tunesmith.jobs.atomic import read_jsonl
from tunesmith.training import on_policy


def on_policy_recipe(**pairs):
    recipe = load_recipe(REPO / "recipes" / "default.yaml")
    recipe["pairs"].update(enabled=True, **pairs)
    return validate_recipe(recipe)


# ---- the plan ---------------------------------------------------------------------------------------------

def changed_steps(recipe, dotted_value):
    before = plan.steps(recipe)
    changed = copy.deepcopy(recipe)
    section, *rest = dotted_value[0].split(".")
    node = changed[section]
    for name in rest[:-1]:
        node = node[name]
    node[rest[-1]] = dotted_value[1]
    after = plan.steps(validate_recipe(changed))
    return before, {name for name in before if before[name].key != after[name].key}


def test_a_grader_change_regrades_and_rebuilds_what_follows_but_never_resamples():
    recipe = on_policy_recipe()
    before, changed = changed_steps(recipe, ("pairs.grader.metric", "exact"))
    assert "pairs_sample" not in changed and "sft" not in changed
    assert changed == downstream_of(before, {"pairs_grade"})
    assert {"pairs_grade", "pairs_build", "curate_preference", "dpo"} <= changed
    before, changed = changed_steps(recipe, ("pairs.grader.kind", "judge"))
    assert "pairs_sample" not in changed and "pairs_grade" in changed


def test_sampling_settings_resample_and_the_margin_only_rebuilds_pairs():
    recipe = on_policy_recipe()
    before, changed = changed_steps(recipe, ("pairs.sampling.temperature", 0.7))
    assert changed == downstream_of(before, {"pairs_sample"})
    before, changed = changed_steps(recipe, ("pairs.min_margin", 5))
    assert changed == downstream_of(before, {"pairs_build"}) and "pairs_grade" not in changed


def test_the_shard_count_is_in_no_key():
    recipe = on_policy_recipe()
    _, changed = changed_steps(recipe, ("pairs.shards", 3))
    assert not changed


def test_the_pairs_are_curated_as_a_preference_source_after_sft():
    steps = plan.steps(on_policy_recipe())
    names = list(steps)
    assert names.index("sft") < names.index("pairs_sample") < names.index("pairs_build") < names.index("curate_preference")
    assert steps["curate_preference"].upstream["pairs"] == steps["pairs_build"].key
    assert steps["pairs_sample"].upstream["sft"] == steps["sft"].key
    assert steps["pairs_sample"].upstream["dataset"] == steps["curate_sft"].key
    assert "pairs_sample" not in plan.steps(validate_recipe(load_recipe(REPO / "recipes" / "default.yaml")))


def test_pairs_need_dpo_and_own_the_source_id():
    recipe = load_recipe(REPO / "recipes" / "default.yaml")
    recipe["pairs"]["enabled"], recipe["dpo"]["enabled"] = True, False
    with pytest.raises(RecipeError, match="pairs.enabled: true .* dpo.enabled is false"):
        validate_recipe(recipe)
    recipe = load_recipe(REPO / "recipes" / "default.yaml")
    recipe["sources"] = [source for source in recipe["sources"] if source["role"] != "preference"]
    with pytest.raises(RecipeError, match="no source has role 'preference'"):
        validate_recipe(copy.deepcopy(recipe))
    recipe["pairs"]["enabled"] = True
    validate_recipe(recipe)  # on-policy pairs alone are preference data


# ---- pairs and their accounting -----------------------------------------------------------------------------

def row(prompt_id, grades, problems=None, prompt=None):
    problems = problems or [[] for _ in grades]
    return {"prompt_id": prompt_id, "prompt": prompt or f"問題 {prompt_id}", "reference": "答え", "seed": 1,
            "sft_adapter": "abc", "grader": "references (chrf)",
            "answers": [{"output": f"{prompt_id}-{index}", "grade": grade, "problems": problem}
                        for index, (grade, problem) in enumerate(zip(grades, problems))]}


def test_every_sampled_answer_is_in_a_pair_or_quarantined_with_its_reason():
    rows = [row("1", [10, 50, 30, 50]),  # pair 1 vs 0; 2 and the tied 3 are not extreme
            row("2", [20, 20, 20]),  # all equal
            row("3", [20, 20.5, 20]),  # below the margin
            row("4", [None, 80, 10]),  # one ungraded, then a pair
            row("5", [90, 10], [["too_short"], ["too_short"]]),  # nothing passes the guards
            row("6", [90, 10, 40], [["too_short"], [], []])]  # the best passing answer is chosen
    pairs, quarantine = on_policy.pairs_of(rows, min_margin=1)
    assert [(pair["prompt_id"], pair["chosen"], pair["rejected"]) for pair in pairs] == [
        ("1", "1-1", "1-0"), ("4", "4-1", "4-2"), ("6", "6-2", "6-1")]
    assert 2 * len(pairs) + len(quarantine) == sum(len(entry["answers"]) for entry in rows)
    reasons = Counter((entry["prompt_id"], entry["reason"]) for entry in quarantine)
    assert reasons == {("1", "not_extreme"): 2, ("2", "all_equal"): 3, ("3", "below_margin"): 3,
                       ("4", "ungraded"): 1, ("5", "no_passing_answer"): 2, ("6", "not_extreme"): 1}
    assert set(on_policy.REASONS) >= {reason for _, reason in reasons}
    assert pairs[0]["grades"] == [10, 50, 30, 50] and pairs[0]["sft_adapter"] == "abc" and pairs[0]["seed"] == 1


def test_pairs_are_decontaminated_against_the_task_file(tmp_path):
    """The pairs enter curation as the source `on_policy`: a pair whose prompt is a task input is dropped."""
    from tunesmith.data.tasks import read_tasks

    tasks = [{"input": task.input} for task in read_tasks(TASKS)]
    rows = [row(str(index), [0, 60], prompt=f"しりとりの単語を一つ答えてください{index}") for index in range(4)]
    rows.append(row("9", [0, 60], prompt=tasks[0]["input"]))
    out = tmp_path / "pairs"
    for index, shard in enumerate((rows[:2], rows[2:])):
        (tmp_path / f"graded{index}.jsonl").write_text(
            "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in shard), encoding="utf-8")
    summary = on_policy.build_pairs([str(tmp_path / "graded0.jsonl"), str(tmp_path / "graded1.jsonl")], 1,
                                    str(out / "pairs.jsonl"), str(out / "quarantine.jsonl"),
                                    str(out / "summary.json"), str(out / "pairs.parquet"))
    assert summary["pairs"] == 5
    (origin,) = on_policy.pairs_origin({"pairs/pairs.jsonl": "", "pairs/pairs.parquet": ""}, tmp_path)
    assert origin.startswith("on-policy pairs: 5, sampled from SFT adapter results/sft/abc/adapter, graded by "
                             "references (chrf)") and origin.endswith("pairs/pairs.jsonl")
    settings = validate_recipe(load_recipe(REPO / "recipes" / "default.yaml"))["curate"]
    settings = {**settings, "japanese": {**settings["japanese"], "min_share": 0}, "min_response_chars": 1}
    card = curate([on_policy.pairs_source(str(out / "pairs.jsonl"))], "preference", TASKS, settings,
                  str(tmp_path / "kept.parquet"), str(tmp_path / "quarantine.parquet"), str(tmp_path / "card.json"),
                  ingested=[str(out / "pairs.parquet")])
    import pyarrow.parquet as pq

    quarantined = pq.read_table(tmp_path / "quarantine.parquet").to_pylist()
    assert [(entry["line"], entry["reason"]) for entry in quarantined] == [(5, "contaminated")], quarantined
    assert card["sources"]["on_policy"]["kept"] == 4


# ---- sampling, grading, sharding, resuming ------------------------------------------------------------------

def fake_sampler(calls, fail_after=None):
    def sample(prompts, n, settings, seeds):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("killed")
        calls.extend(prompts)
        return [[f"{prompt[-3:]}:{(seed + index) % 97}" for index in range(n)] for prompt, seed in zip(prompts, seeds)]
    return sample


PROMPTS = [{"id": str(index), "prompt": f"問題{index}", "reference": "答え"} for index in range(6)]
SETTINGS = {"answers_per_prompt": 3}
GUARDS = validate_recipe(load_recipe(REPO / "recipes" / "default.yaml"))["generate"]["guards"]


def test_a_killed_sampling_job_resumes_without_sampling_again(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        on_policy.sample_prompts(fake_sampler(calls, fail_after=4), PROMPTS, SETTINGS, {}, GUARDS, str, 7, tmp_path,
                                 chunk=2)
    assert len(calls) == 4
    resumed = []
    rows = on_policy.sample_prompts(fake_sampler(resumed), PROMPTS, SETTINGS, {}, GUARDS, str, 7, tmp_path)
    assert resumed == ["問題4", "問題5"]
    fresh = on_policy.sample_prompts(fake_sampler([]), PROMPTS, SETTINGS, {}, GUARDS, str, 7, tmp_path / "fresh")
    assert rows == fresh


def test_a_killed_grading_job_resumes_without_regrading(tmp_path, monkeypatch):
    rows = on_policy.sample_prompts(fake_sampler([]), PROMPTS, SETTINGS, {}, GUARDS, str, 7, tmp_path / "s")
    graded, real = [], on_policy.reference_grade

    def counting(answer, reference, metric, fail_after=None):
        if fail_after is not None and len(graded) >= fail_after:
            raise KeyboardInterrupt("killed")
        graded.append(answer)
        return real(answer, reference, metric)

    grader = {"kind": "references", "metric": "chrf"}
    monkeypatch.setattr(on_policy, "reference_grade", lambda *a: counting(*a, fail_after=7))
    with pytest.raises(KeyboardInterrupt):
        on_policy.grade_rows(copy.deepcopy(rows), grader, None, tmp_path / "cache")
    assert len(graded) == 7
    monkeypatch.setattr(on_policy, "reference_grade", counting)
    graded.clear()
    counts = on_policy.grade_rows(rows, grader, None, tmp_path / "cache")
    assert counts == {"answers": 18, "cached": 7, "requests": 0} and len(graded) == 11
    graded.clear()
    other = on_policy.grade_rows(copy.deepcopy(rows), {"kind": "references", "metric": "exact"}, None, tmp_path / "cache")
    assert other["cached"] == 0 and len(graded) == 18  # another grader is another cache entry


class FakeJudge:
    def __init__(self):
        self.requests = 0

    def check_reachable(self):
        pass

    def complete(self, conversations, on_reply):
        for index, conversation in enumerate(conversations):
            self.requests += 1
            on_reply(index, json.dumps({"reason": "ok", "grade": 1 + len(conversation[0]["content"]) % 5}))


def test_the_judge_grader_asks_only_about_answers_it_has_not_graded(tmp_path):
    from tunesmith.config.recipe import validate_recipe as validated

    judge = validated(load_recipe(REPO / "recipes" / "default.yaml"))["judge"]
    judge = {**judge, "backend": "openai", "openai": {**judge["openai"], "model": "m"}}
    rows = on_policy.sample_prompts(fake_sampler([]), PROMPTS, SETTINGS, {}, GUARDS, str, 7, tmp_path / "s")
    grader = {"kind": "judge", "metric": "chrf"}
    first = on_policy.grade_rows(rows, grader, judge, tmp_path / "cache", backend_factory=FakeJudge)
    assert first == {"answers": 18, "cached": 0, "requests": 18}
    assert all(answer["grade"] in range(1, 6) for entry in rows for answer in entry["answers"])
    again = on_policy.grade_rows(copy.deepcopy(rows), grader, judge, tmp_path / "cache", backend_factory=FakeJudge)
    assert again == {"answers": 18, "cached": 18, "requests": 0}


def test_prompt_seeds_come_from_the_id_and_the_sample_from_the_seed(tmp_path):
    assert on_policy.prompt_seed(42, "7") == on_policy.prompt_seed(42, "7") != on_policy.prompt_seed(42, "8")
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"問{index}", "reference": "a"}) + "\n" for index in range(20)))
    settings = {"prompts": str(path), "sample": 5}
    picked = on_policy.read_prompts(settings, 1)
    assert len(picked) == 5 and picked == on_policy.read_prompts(settings, 1) != on_policy.read_prompts(settings, 2)
    path.write_text('{"prompt": "a"}\n{"reference": "b"}\n')
    with pytest.raises(on_policy.PairsError, match=r"prompts.jsonl:2: needs a non-empty string 'prompt'"):
        on_policy.read_prompts(settings, 1)


def run_pairs(tiny, adapter, out, shards, grader):  # noqa: F811
    # The tiny model writes noise; references of its common characters give grades that differ (chrF > 0).
    prompts = out / "prompts.jsonl"
    out.mkdir()
    prompts.write_text("".join(json.dumps({"id": f"p{index}", "prompt": f"次の言葉を{index}回繰り返してください。",
                                           "reference": "1父にをのるつとこい答え"}, ensure_ascii=False) + "\n"
                               for index in range(7)), encoding="utf-8")
    recipe = on_policy_recipe(prompts=str(prompts), sample=5, answers_per_prompt=3, min_margin=0.5,
                              sampling={"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 12})
    graded = []
    for shard in range(shards):
        samples, graded_path = out / f"samples{shard}.jsonl", out / f"graded{shard}.jsonl"
        on_policy.sample_answers(tiny.base_dir, tiny.section("base_model"), adapter, tiny.section("template"),
                                 recipe["pairs"], recipe["generate"], 7, shard, shards, str(samples),
                                 str(out / "sample_cache"), "sftkey")
        on_policy.grade_answers(str(samples), grader, str(graded_path), str(out / "grade_cache"))
        graded.append(str(graded_path))
    return on_policy.build_pairs(graded, 0.5, str(out / "pairs.jsonl"), str(out / "quarantine.jsonl"),
                                 str(out / "summary.json"), str(out / "pairs.parquet"))


def test_sharded_pairs_are_byte_equal_to_unsharded_and_record_their_lineage(tiny, sft_adapter, tmp_path):  # noqa: F811
    grader = {"kind": "references", "metric": "chrf"}
    one = run_pairs(tiny, sft_adapter.path, tmp_path / "one", 1, grader)
    three = run_pairs(tiny, sft_adapter.path, tmp_path / "three", 3, grader)
    assert one == three and one["pairs"] >= 1
    assert (tmp_path / "one" / "pairs.jsonl").read_bytes() == (tmp_path / "three" / "pairs.jsonl").read_bytes()
    assert (tmp_path / "one" / "quarantine.jsonl").read_bytes() == (tmp_path / "three" / "quarantine.jsonl").read_bytes()
    pairs = read_jsonl(tmp_path / "one" / "pairs.jsonl")
    for pair in pairs:
        assert pair["sft_adapter"] == "sftkey" and pair["seed"] == on_policy.prompt_seed(7, pair["prompt_id"])
        assert len(pair["grades"]) == 3 and pair["grades"][pair["chosen_index"]] - pair["grades"][pair["rejected_index"]] >= 0.5
    assert one["answers"] == 15 == one["paired_answers"] + sum(one["quarantined"].values())


# ---- the workflow -------------------------------------------------------------------------------------------

def test_the_on_policy_recipe_plans_every_target_with_its_shards(tmp_path):
    """A dry run of `rule all` (exported datasets and the staged preference dataset too, whose sources are then
    the pairs alone) with pairs.shards 3."""
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake("-n", "--directory", tmp_path, "all", "results/publish/dataset/preference",
                       "--config", f"recipe={REPO / 'recipes/on-policy.yaml'}", "set=pairs.shards=3", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {name: result.stdout.count(f"\nrule {name}:") for name in
              ("sample_answers", "grade_answers", "build_pairs", "export_dataset", "stage_dataset")}
    assert counts == {"sample_answers": 3, "grade_answers": 3, "build_pairs": 1, "export_dataset": 2,
                      "stage_dataset": 1}, counts


@pytest.mark.e2e
def test_the_on_policy_recipe_runs_sharded_and_dpo_traces_back_to_the_sft_model(tmp_path):
    """recipes/on-policy.yaml with a few steps per stage, 2 shards: every pairs job reads the keys its stage
    declares, curated DPO rows lead back to the pair and the SFT adapter that wrote it, and a grader change
    plans grading and what follows, no sampling."""
    import re

    import pyarrow.parquet as pq
    import yaml

    from quick_recipe import quick_recipe
    from recipe_keys import leaf_keys
    from tunesmith.lineage import lineage

    recipe_path = quick_recipe(REPO / "recipes/on-policy.yaml", tmp_path / "quick.yaml")
    raw = yaml.safe_load(open(recipe_path, encoding="utf-8"))
    raw["pairs"].update(sample=24, min_margin=1, shards=2)
    yaml.safe_dump(raw, open(recipe_path, "w", encoding="utf-8"), allow_unicode=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(REPO / "data")

    def in_work(*args):
        return snakemake("--directory", work, *args, "--config", f"recipe={recipe_path}", timeout=3600)

    result = in_work("submission.jsonl", "--cores", "2", "--resources", "gpu=2")
    assert result.returncode == 0, result.stderr[-5000:]
    steps = plan.steps(load_recipe(recipe_path))
    for name in ("pairs_sample", "pairs_grade", "pairs_build"):
        step = steps[name]
        for manifest_path in work.glob(f"results/{plan.STAGES[name].folder}/{step.key}/*.manifest.json"):
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            unread = leaf_keys(step.settings, list(step.settings)) - set(manifest["settings_read"])
            assert not unread, (name, sorted(unread))
    assert len(list(work.glob("results/pairs_samples/*/*-of-2.jsonl"))) == 2
    text = "\n".join(lineage(f"results/dpo/{steps['dpo'].key}/adapter", root=work))
    for found in (f"results/curated/{steps['curate_preference'].key}/preference.parquet",
                  f"results/pairs/{steps['pairs_build'].key}/pairs.parquet  [pairs_build",
                  f"results/pairs_graded/{steps['pairs_grade'].key}/0-of-2.jsonl  [pairs_grade",
                  f"results/pairs_samples/{steps['pairs_sample'].key}/1-of-2.jsonl  [pairs_sample",
                  f"results/sft/{steps['sft'].key}/adapter  [sft"):
        assert found in text, (found, text)
    assert f"on-policy pairs: {len(read_jsonl(work / 'results/pairs' / steps['pairs_build'].key / 'pairs.jsonl'))}, " \
           f"sampled from SFT adapter results/sft/{steps['sft'].key}/adapter" in text
    kept = pq.read_table(work / f"results/curated/{steps['curate_preference'].key}/preference.parquet").to_pylist()
    pairs = read_jsonl(work / f"results/pairs/{steps['pairs_build'].key}/pairs.jsonl")
    assert kept and {row["source"] for row in kept} == {"on_policy"}
    for row in kept:
        pair = pairs[row["line"] - 1]
        assert (pair["chosen"], pair["rejected"]) == (row["chosen"], row["rejected"])
        assert pair["sft_adapter"] == steps["sft"].key
    raw["pairs"]["grader"] = {"kind": "references", "metric": "exact"}
    yaml.safe_dump(raw, open(recipe_path, "w", encoding="utf-8"), allow_unicode=True)
    planned = in_work("submission.jsonl", "-n")
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "rule sample_answers:" not in planned.stdout and re.search(r"^rule grade_answers:$", planned.stdout, re.M)


def test_the_vllm_sampler_seeds_each_prompt_so_batching_changes_no_answer(monkeypatch):
    """vLLM (a stand-in: the real one needs CUDA): one engine batch per call, each request with n answers and its
    prompt's own seed; the answers of a prompt are the same alone or batched with others."""
    import random
    import sys
    import types

    from tunesmith.generation import generate as generate_module

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    batches = []

    class LLM:
        def generate(self, prompts, requests, lora_request=None, use_tqdm=True):
            batches.append([request.kwargs for request in requests])
            return [types.SimpleNamespace(prompt=prompt, outputs=[
                types.SimpleNamespace(text=f"{prompt}:{random.Random(request.kwargs['seed']).random() + index}###x")
                for index in range(request.kwargs["n"])]) for prompt, request in zip(prompts, requests)]

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setattr(generate_module, "vllm_engine", lambda *args: (LLM(), "lora"))
    recipe = on_policy_recipe()
    sampling = on_policy.sampling_settings(recipe["pairs"], {**recipe["generate"], "stop_strings": ["###"]})
    sample = on_policy.vllm_sampler("base", recipe["base_model"], "adapter", sampling, 0)
    together = sample(["a", "b", "c"], 3, sampling, [11, 12, 13])
    alone = [sample([prompt], 3, sampling, [seed])[0] for prompt, seed in zip("abc", (11, 12, 13))]
    assert together == alone and len(together[0]) == 3 and not any("###" in text for text in together[0])
    assert [request["seed"] for request in batches[0]] == [11, 12, 13]
    assert batches[0][0]["n"] == 3 and batches[0][0]["temperature"] == recipe["pairs"]["sampling"]["temperature"]
