"""The build plan of a recipe: the stage table, and each stage's settings and content key.

The stage table (`STAGES`) is the one place that says, for every stage: the recipe keys it reads,
given the recipe's choices (a hub model reads no `base_model.build` key; DPO that continues the SFT
adapter reads no `dpo.lora`), the stages it consumes, and the folder its artifacts live in. From it:
- each rule receives exactly those keys, as a subset of the recipe shaped like the recipe
  (`params.settings`), so the code of a stage cannot read a key the table does not declare;
- each stage's artifact lives under a key hashing its name, those settings and the keys of the
  artifacts it consumes (a Merkle chain): recipes and sweep variants that agree on everything a
  stage depends on share its artifact, and a change to a key reruns exactly the stages that read it
  and what is downstream of them (a key no stage reads reruns nothing);
- `tunesmith explain` diffs a stage's settings against the manifest of the artifact it replaces,
  and the benchmarks find built artifacts, through the same table.

Over 350 lines because the table is data (a row per stage, with the choices that change what it reads)
and kept beside the few functions that read it, so that nothing else holds a stage's keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config.recipe import fetched_models, key_parts, lookup
from tunesmith.jobs.atomic import local_files, section_hash

MODEL_STAGES = ("base", "sft", "dpo")
PAIR_ACCURACY_STAGES = ("sft", "dpo")  # the stages whose preference accuracy on held-out pairs is compared
ROLES = ("sft", "preference")
# What an ingest step reads of its source; style, columns, weight and caps are curation's business.
INGEST_KEYS = ("id", "path", "format", "role", "split")


@dataclass(frozen=True)
class Stage:
    """A row of the stage table."""
    folder: str  # results/<folder>/<key>/...
    reads: object = field(repr=False)  # (recipe, instance) -> the recipe keys read, as dotted paths
    consumes: object = field(repr=False)  # (recipe, instance) -> {name: step name} of consumed artifacts
    # (recipe, instance) -> the settings, where they are not simply the keys read (a fetch is keyed on
    # the model alone, whichever section names it, so a base that also judges is fetched once)
    shape: object = field(default=None, repr=False)
    files: object = field(default=None, repr=False)  # (recipe, instance) -> files outside the workflow it reads
    # (recipe, instance) -> keys the job reads that cannot change its artifact, so in no key (tracking)
    unkeyed: object = field(default=None, repr=False)


@dataclass(frozen=True)
class Step:
    """One stage of one recipe: the recipe keys it reads with their values, and the keys it consumes."""
    name: str  # the step's name: "sft", "curate_preference", "generate_dpo", "ingest" (per source)...
    settings: dict  # the recipe restricted to the keys the stage reads
    upstream: dict = field(default_factory=dict)  # name -> key of a consumed artifact
    files: tuple = ()  # files outside the workflow (the task file) it reads
    reads: tuple = ()  # the dotted keys behind `settings`
    unkeyed: tuple = ()  # keys the job also reads that cannot change its artifact (Stage.unkeyed)

    @property
    def key(self) -> str:
        # Hashed under "stage" as before the field was renamed: built artifacts keep their keys.
        return section_hash({"stage": self.name, "settings": self.settings, "upstream": self.upstream,
                             "files": list(self.files)})[:12]


# ---- what each stage reads ------------------------------------------------------------------------

def _model(recipe: dict) -> list[str]:
    """Loading the base model (tunesmith.model.model). Which model it is comes from upstream: the built tiny
    model, or the fetched snapshot of `base_model.path` (the fetch step reads the path and revision)."""
    section = recipe["base_model"]
    keys = ["base_model.dtype", "base_model.quantization", "base_model.trust_remote_code"]
    if section["quantization"] == "nf4":
        keys.append("base_model.compute_dtype")
    return keys


def _template(recipe: dict, generation: bool = False, training: bool = False) -> list[str]:
    """The keys that shape the rendered text (tunesmith.model.template); generation also cleans answers, training
    also checks the token boundary of its rows."""
    template = recipe["template"]
    keys = ["template.kind"] + (["template.prompt"] if template["kind"] == "plain"
                                else ["template.system", "template.chat_template"])
    if training:
        keys.append("template.max_boundary_mismatch")
    if generation:
        keys += ["template.stop_markers", "template.allow_mismatch"]
    return keys


def _distributed(recipe: dict) -> list[str]:
    section = recipe["distributed"]
    if section["processes"] * section["nodes"] == 1:
        return ["distributed.processes", "distributed.nodes"]
    return ["distributed.processes", "distributed.nodes", "distributed.strategy"] + (
        ["distributed.zero_stage"] if section["strategy"] == "deepspeed" else [])


def _tracking(recipe: dict, _=None) -> list[str]:
    """Where a training job reports its run (tunesmith.training.tracking). Tracking cannot change the trained weights,
    so these keys are in no content key (Stage.unkeyed): changing them reruns nothing."""
    report_to = recipe["tracking"]["report_to"]
    if not report_to:
        return ["tracking.report_to"]
    return ["tracking.report_to", "tracking.project"] + [
        f"tracking.{name}" for name in ("mlflow", "wandb") if name in report_to]


# The preference methods' own keys (trl's names), read only under their method.
METHOD_KEYS = {"dpo": ["dpo.loss_type"], "simpo": ["dpo.simpo_gamma", "dpo.cpo_alpha"],
               "kto": ["dpo.desirable_weight", "dpo.undesirable_weight"]}


def _training(recipe: dict, section: str, lora: bool = True) -> list[str]:
    """A training section's keys: everything but the switches that decide whether the stage exists."""
    values = recipe[section]
    keys = [f"{section}.{name}" for name in values if name not in ("enabled", "lora", "start")]
    if lora:
        keys.append(f"{section}.lora")
    if "packing" in values and not values["packing"]:
        keys.remove(f"{section}.packing_strategy")
    if "method" in values:  # the dpo stage (dpo.method): each method's own settings only for that method
        method = values["method"]
        keys = [key for key in keys if key not in set().union(*METHOD_KEYS.values())]
        keys += METHOD_KEYS.get(method, [])
    return keys


def _sources(recipe: dict, role: str, fields=None) -> list[str]:
    return [f"sources[{index}]" + (f".{name}" if name else "")
            for index, source in enumerate(recipe["sources"]) if source["role"] == role
            for name in (fields or [None])]


def _curation(recipe: dict) -> list[str]:
    settings = recipe["curate"]
    keys = ["seed", "curate.normalize_training_text", "curate.min_prompt_chars", "curate.min_response_chars", "curate.max_prompt_chars",
            "curate.max_response_chars", "curate.tokens", "curate.japanese.min_share", "curate.repetition",
            "curate.block_patterns", "curate.dedup", "curate.near_dedup.enabled", "curate.decontaminate",
            "curate.validation_fraction", "curate.min_kept_share"]
    if settings["japanese"]["min_share"] > 0:
        keys.append("curate.japanese.fields")
    if settings["near_dedup"]["enabled"]:
        keys += [f"curate.near_dedup.{name}" for name in settings["near_dedup"] if name != "enabled"]
    if settings["decontaminate"]:
        keys.append("curate.decontamination")
    return keys


def _generation(recipe: dict) -> list[str]:
    settings = recipe["generate"]
    keys = ["seed", "generate.max_new_tokens", "generate.do_sample", "generate.repetition_penalty",
            "generate.stop_strings", "generate.backend", "generate.guards.min_chars", "generate.guards.max_chars",
            "generate.guards.max_char_share", "generate.guards.char_share_min_length", "generate.guards.ngram_size",
            "generate.guards.max_ngram_repeats", "generate.guards.max_line_repeats", "generate.guards.retries"]
    if settings["do_sample"]:
        keys += ["generate.temperature", "generate.top_p"]
    keys += ["generate.vllm"] if settings["backend"] == "vllm" else ["generate.batch_size"]
    if settings["guards"]["retries"]:
        retry = settings["guards"]["retry"]
        keys += ["generate.guards.retry.do_sample", "generate.guards.retry.repetition_penalty"]
        keys += ["generate.guards.retry.temperature"] if retry["do_sample"] else []
        keys += ["generate.top_p"] if retry["do_sample"] and not settings["do_sample"] else []
    return keys


def _judge(recipe: dict) -> list[str]:
    """What decides a grade: the judge, its prompt, and the task side it is shown. The evaluation's own
    keys (bootstrap_samples, confidence, reference_grades) are not a judge job's, so changing them
    regrades nothing."""
    judge = recipe["judge"]
    keys = ["seed", "judge.backend", "judge.max_new_tokens", "judge.temperature", "judge.parse_retries",
            "judge.prompt_template", "tasks.path", "tasks.references"]
    if judge["backend"] == "openai":
        return keys + ["judge.openai"]
    # A local judge model is the fetch_judge snapshot: its path and revision are the fetch's keys.
    return keys + [f"judge.local.{name}" for name in judge["local"] if name not in ("path", "revision")]


def _evaluation(recipe: dict) -> list[str]:
    """Scoring the compared stages: which they are, the references, and how grades are summarised."""
    keys = ["seed", "evaluate.stages", "evaluate.confidence", "evaluate.bootstrap_samples", "submission.stage",
            "dpo.enabled", "tasks.path", "tasks.references", "judge.backend"]
    judge = recipe["judge"]
    if judge["backend"] != "none":
        keys += ["judge.bootstrap_samples", "judge.confidence", "judge.reference_grades",
                 "judge.openai.model" if judge["backend"] == "openai" else "judge.local.path"]
    return keys


def _pairs_sampling(recipe: dict) -> list[str]:
    """Sampling on-policy answers (tunesmith.training.on_policy): the SFT model, the prompts, the sampling settings, and
    generation's template, stop strings, penalty, backend and guards (the guards' retries are generation's own)."""
    keys = ["seed", *_model(recipe), *_template(recipe, generation=True), "curate.normalize_training_text",
            "pairs.prompts", "pairs.sample", "pairs.answers_per_prompt", "pairs.sampling",
            "generate.repetition_penalty", "generate.stop_strings", "generate.backend",
            *(f"generate.guards.{name}" for name in recipe["generate"]["guards"] if name not in ("retries", "retry"))]
    return keys + (["generate.vllm"] if recipe["generate"]["backend"] == "vllm" else [])


def _pairs_grading(recipe: dict) -> list[str]:
    """Grading sampled answers: the grader, and for the judge everything that decides a judge's grade."""
    if recipe["pairs"]["grader"]["kind"] == "references":
        return ["pairs.grader.kind", "pairs.grader.metric"]
    return ["pairs.grader.kind", *(key for key in _judge(recipe) if not key.startswith("tasks."))]


def _built_base(recipe: dict) -> dict:
    """The base model a model stage consumes: the built tiny model, or the fetched snapshot."""
    return {"base_model": "base_model"} if recipe["base_model"]["path"] is None else {"fetch_base": "fetch_base"}


def _fetched(recipe: dict, role: str) -> dict:
    path, revision = fetched_models(recipe)[role]
    return {"path": path, "revision": revision}


def curation_lengths(settings: dict, role: str) -> dict:
    """What a curation card measures against (from the curation step's settings): the training stage's
    max_length, and the tokenizer that counts tokens when curate.tokens.count asks for the base model's."""
    counted = settings["curate"]["tokens"]["count"] == "base_model" and "base_model" in settings
    return {"max_length": settings["sft" if role == "sft" else "dpo"]["max_length"],
            "tokenizer": settings["base_model"]["path"] if counted else None,
            "trust_remote_code": settings["base_model"]["trust_remote_code"] if counted else False}


def _curation_lengths_reads(recipe: dict, role: str) -> list[str]:
    keys = [f"{'sft' if role == 'sft' else 'dpo'}.max_length"]
    if recipe["curate"]["tokens"]["count"] == "base_model" and recipe["base_model"]["path"] is not None:
        keys += ["base_model.path", "base_model.trust_remote_code"]
    return keys


def _beneath(recipe: dict) -> dict:
    """What SFT and DPO train on top of: the base, and the continued-pretraining adapter if any."""
    return {**_built_base(recipe), **({"cpt": "cpt"} if recipe["continued_pretraining"]["enabled"] else {})}


STAGES = {
    # A named model (hub id or local folder) is snapshotted once by the fetch_model localrule, where the
    # network is; every model step consumes the snapshot, never the hub.
    "fetch": Stage("models", lambda r, role: [f"{'base_model' if role == 'base' else 'judge.local'}.{name}"
                                              for name in ("path", "revision")], lambda r, _: {},
                   shape=_fetched, files=lambda r, role: tuple(local_files(_fetched(r, role)["path"]))
                   if Path(_fetched(r, role)["path"]).is_dir() else ()),
    "tokenizer": Stage("tokenizer", lambda r, _: ["base_model.build.vocab_size",
                                                  *_sources(r, "pretrain", ["path", "format"])],
                       lambda r, _: {}),
    "base_model": Stage("base_model", lambda r, _: [
        "seed", *(f"base_model.build.{name}" for name in r["base_model"]["build"] if name != "vocab_size"),
        *_sources(r, "pretrain", ["path", "format"])], lambda r, _: {"tokenizer": "tokenizer"}),
    "ingest": Stage("ingested", lambda r, index: [f"sources[{index}].{name}" for name in INGEST_KEYS]
                    + ["curate.max_line_bytes"], lambda r, _: {}),
    "curate": Stage("curated", lambda r, role: [*_sources(r, role), *_curation(r), *_curation_lengths_reads(r, role)]
                    + (["tasks.path"] if r["curate"]["decontaminate"] else []), lambda r, role: {
                        f"ingest_{source['id']}": f"ingest_{source['id']}" for source in r["sources"] if source["role"] == role}
                    | ({"pairs": "pairs_build"} if role == "preference" and r["pairs"]["enabled"] else {}),
                    unkeyed=lambda r, role: ["curate.memory_limit"]),  # the rows are the same under any limit
    # KTO's labelled single answers, made from the curated pairs (tunesmith.data.unpaired); only when dpo.method is kto.
    "unpair": Stage("curated", lambda r, _: ["seed"], lambda r, _: {"pairs": "curate_preference"}),
    # No template: raw text, so a template edit does not rerun continued pretraining.
    "cpt": Stage("cpt", lambda r, _: ["seed", *_model(r), *_training(r, "continued_pretraining"), *_distributed(r),
                                      *_sources(r, "pretrain", ["path", "format"])], lambda r, _: _built_base(r),
                 unkeyed=_tracking),
    "sft": Stage("sft", lambda r, _: ["seed", *_model(r), *_template(r, training=True), *_training(r, "sft"), *_distributed(r)],
                 lambda r, _: {**_beneath(r), "dataset": "curate_sft"}, unkeyed=_tracking),
    "dpo": Stage("dpo", lambda r, _: ["seed", *_model(r), *_template(r, training=True), "dpo.start",
                                      *_training(r, "dpo", lora=r["dpo"]["start"] == "new_adapter"), *_distributed(r)],
                 lambda r, _: {**_beneath(r), "dataset": preference_dataset(r), "sft": "sft"}, unkeyed=_tracking),
    # On-policy pairs (issue 20, tunesmith.training.on_policy): the SFT model's sampled answers (pairs.shards jobs, the
    # shard count in no key: the answers are the same however they are split), their grades (a grader change
    # regrades, never resamples), and the pairs, which curation reads as the preference source `on_policy`.
    "pairs_sample": Stage("pairs_samples", lambda r, _: _pairs_sampling(r), lambda r, _: {
        **_built_base(r), "sft": "sft", **({"dataset": "curate_sft"} if r["pairs"]["prompts"] is None else {})},
        files=lambda r, _: (r["pairs"]["prompts"],) if r["pairs"]["prompts"] else (),
        unkeyed=lambda r, _: ["pairs.shards"]),
    "pairs_grade": Stage("pairs_graded", lambda r, _: _pairs_grading(r), lambda r, _: {"samples": "pairs_sample"}
                         | ({"fetch_judge": "fetch_judge"} if r["pairs"]["grader"]["kind"] == "judge"
                            and "judge" in fetched_models(r) else {}),
                         files=lambda r, _: (r["judge"]["prompt_template"],)
                         if r["pairs"]["grader"]["kind"] == "judge" and r["judge"]["prompt_template"] else ()),
    "pairs_build": Stage("pairs", lambda r, _: ["pairs.min_margin"], lambda r, _: {"graded": "pairs_grade"}),
    # Prompts are the task inputs cleaned as the training text was (normalised only if it was).
    "generate": Stage("generations", lambda r, _: [*_model(r), *_template(r, generation=True), *_generation(r)]
                      + ["tasks.path", "curate.normalize_training_text"], lambda r, stage: {**_built_base(r), **{
                          name: name for name in adapter_stages(r, stage)}}),
    # Preference accuracy of a stage's model: its log-probabilities under the template, nothing else
    # (no seed, no generation settings).
    "pair_accuracy": Stage("pair_accuracy", lambda r, _: [*_model(r), *_template(r)], lambda r, stage: {
        **_built_base(r), **{name: name for name in adapter_stages(r, stage)}, "dataset": "curate_preference"}),
    # One judge job per scored stage, and `reference` for the answers of judge.reference_grades.
    "judge": Stage("judged", lambda r, stage: _judge(r) + (["judge.reference_grades"] if stage == "reference" else []),
                   lambda r, stage: ({} if stage == "reference" else {"generations": f"generate_{stage}"})
                   | ({"fetch_judge": "fetch_judge"} if "judge" in fetched_models(r) else {})),
    # Keyed like every artifact, so two recipes' scores and submissions coexist; results/eval.json and
    # submission.jsonl are copies of the current recipe's (rules/submission.smk).
    "evaluate": Stage("evaluated", lambda r, _: _evaluation(r), lambda r, _: {
        **{f"generate_{stage}": f"generate_{stage}" for stage in model_stages(r)},
        **{f"judge_{stage}": f"judge_{stage}" for stage in model_stages(r) if judge_enabled(r)},
        **({"judge_reference": "judge_reference"} if judge_enabled(r) and r["judge"]["reference_grades"] else {}),
        **({f"pair_accuracy_{stage}": f"pair_accuracy_{stage}" for stage in PAIR_ACCURACY_STAGES}
           if r["dpo"]["enabled"] else {})}),
    # The submitted answers: one stage's, or with `submission.stage: best` the stage the evaluation's paired
    # tests pick (tunesmith.evaluation.choice), so then it consumes the evaluation.
    "submit": Stage("submissions", lambda r, _: ["submission.stage", "submission.allow_empty", "dpo.enabled",
                                                 "tasks.path"],
                    lambda r, _: {"evaluation": "evaluate"} if r["submission"]["stage"] == "best"
                    else {"generations": f"generate_{submitted_stage(r)}"}),
}


# ---- picking settings -------------------------------------------------------------------------------

def pick(recipe: dict, keys) -> dict:
    """The recipe restricted to `keys` (dotted paths; `sources[2].path` for a list item's key), shaped
    like the recipe. Of a list, only the picked items are kept, in order: a source's index in the
    recipe does not matter, its place among the picked ones does."""
    picked: dict = {}
    for dotted in keys:
        parts, value = key_parts(dotted), lookup(recipe, dotted)
        node = picked
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _sorted(_as_lists(picked))  # new dicts and lists all the way down: nothing shared with the recipe


def _sorted(node):
    """Mappings in key order: Snakemake compares a job's params as written, so the order of keys in the
    recipe file must not make a finished job look changed."""
    if isinstance(node, dict):
        return {name: _sorted(node[name]) for name in sorted(node)}
    if isinstance(node, list):
        return [_sorted(item) for item in node]
    return node


def _as_lists(node):
    """Dicts keyed by list indexes (from `pick`) back into lists, in index order."""
    if not isinstance(node, dict):
        return node
    items = {name: _as_lists(value) for name, value in node.items()}
    if items and all(isinstance(name, int) for name in items):
        return [items[index] for index in sorted(items)]
    return items


# ---- the plan ---------------------------------------------------------------------------------------

def model_stages(recipe: dict) -> list[str]:
    """Stages whose answers are generated and scored: `evaluate.stages` and the submitted one, in
    build order (dpo only when DPO is enabled); every stage when the submission picks the best."""
    wanted = {*recipe["evaluate"]["stages"], submitted_stage(recipe)}
    wanted = set(MODEL_STAGES) if "best" in wanted else wanted
    return [stage for stage in MODEL_STAGES if stage in wanted and (stage != "dpo" or recipe["dpo"]["enabled"])]


def submitted_stage(recipe: dict) -> str:
    """The stage submission.stage names (`best`: chosen after evaluation, tunesmith.evaluation.choice)."""
    stage = recipe["submission"]["stage"]
    return "sft" if stage == "dpo" and not recipe["dpo"]["enabled"] else stage


def judge_enabled(recipe: dict) -> bool:
    return recipe["judge"]["backend"] != "none"


def preference_dataset(recipe: dict) -> str:
    """The step whose dataset the dpo stage (any dpo.method) trains on: the curated pairs, or for KTO their answers
    labelled one by one."""
    return "unpair_preference" if recipe["dpo"]["method"] == "kto" else "curate_preference"


def adapter_stages(recipe: dict, stage: str) -> list[str]:
    """The adapters a stage's model is made of, in training order; the last one's folder holds them
    all as one standalone adapter (tunesmith.model.adapters), which is what generation and export load."""
    cpt = ["cpt"] if recipe["continued_pretraining"]["enabled"] else []
    dpo_chain = ["dpo"] if recipe["dpo"]["start"] == "continue_sft" else ["sft", "dpo"]
    return {"base": [], "sft": cpt + ["sft"], "dpo": cpt + dpo_chain}[stage]


def _instances(recipe: dict) -> list[tuple[str, str, object]]:
    """(step name, stage, instance) in build order."""
    found = [(f"fetch_{role}", "fetch", role) for role in fetched_models(recipe)]
    if recipe["base_model"]["path"] is None:
        found += [("tokenizer", "tokenizer", None), ("base_model", "base_model", None)]
    if recipe["continued_pretraining"]["enabled"]:
        found.append(("cpt", "cpt", None))
    on_policy = recipe["dpo"]["enabled"] and recipe["pairs"]["enabled"]
    data = []
    for role in (ROLES if recipe["dpo"]["enabled"] else ("sft",)):
        data += [(f"ingest_{source['id']}", "ingest", index) for index, source in enumerate(recipe["sources"])
                 if source["role"] == role]
        data.append((f"curate_{role}", "curate", role))
    if recipe["dpo"]["enabled"] and preference_dataset(recipe) == "unpair_preference":
        data.append(("unpair_preference", "unpair", None))
    # On-policy pairs come from the SFT model: the preference data then follows SFT.
    later = [entry for entry in data if on_policy and entry[0] in ("curate_preference", "unpair_preference")]
    found += [entry for entry in data if entry not in later]
    found.append(("sft", "sft", None))
    if on_policy:
        found += [("pairs_sample", "pairs_sample", None), ("pairs_grade", "pairs_grade", None),
                  ("pairs_build", "pairs_build", None)]
    found += later
    if recipe["dpo"]["enabled"]:
        found.append(("dpo", "dpo", None))
        # Preference accuracy (issue 13): the compared stages on the held-out preference pairs.
        found += [(f"pair_accuracy_{stage}", "pair_accuracy", stage) for stage in PAIR_ACCURACY_STAGES]
    found += [(f"generate_{stage}", "generate", stage) for stage in model_stages(recipe)]
    if judge_enabled(recipe):
        found += [(f"judge_{stage}", "judge", stage) for stage in model_stages(recipe)]
        found += [("judge_reference", "judge", "reference")] if recipe["judge"]["reference_grades"] else []
    found.append(("evaluate", "evaluate", None))
    found.append(("submit", "submit", None))
    return found


# The stages that make a recipe's data; a seed replicate (`repeats`) shares them with its recipe.
DATA_STAGES = ("fetch", "tokenizer", "ingest", "curate", "unpair")


def steps(recipe: dict, data_of: dict | None = None) -> dict[str, Step]:
    """Every stage of a validated recipe, in build order, by step name. With `data_of` (the recipe a
    seed replicate was made from), the data stages are that recipe's: curation reads `seed` too (its
    split and samples), and a replicate must train on the same rows."""
    plan: dict[str, Step] = {}
    shared = steps(data_of) if data_of is not None else {}
    for name, stage, instance in _instances(recipe):
        if name in shared and stage in DATA_STAGES:
            plan[name] = shared[name]
            continue
        row = STAGES[stage]
        reads = tuple(row.reads(recipe, instance))
        upstream = {consumed: plan[step].key for consumed, step in row.consumes(recipe, instance).items()}
        files = row.files(recipe, instance) if row.files else tuple(
            value for value in (recipe["tasks"]["path"], recipe["tasks"]["references"],
                                recipe["judge"]["prompt_template"], recipe["judge"]["reference_grades"])
            if value and any(dotted.startswith(("tasks.", "judge.")) and lookup(recipe, dotted) == value
                             for dotted in reads))
        settings = row.shape(recipe, instance) if row.shape else pick(recipe, reads)
        # Ingest and fetch steps are named by their stage alone: two recipes (or a base that also
        # judges) naming the same source or model share its step.
        unkeyed = tuple(row.unkeyed(recipe, instance)) if row.unkeyed else ()
        plan[name] = Step(stage if stage in ("ingest", "fetch") else name, settings, upstream, files, reads, unkeyed)
    return plan


def stage_of(step: Step) -> str:
    """The stage-table row a step is an instance of (`generate_dpo` -> `generate`)."""
    return next(name for name in STAGES if step.name == name or step.name.startswith(f"{name}_"))


def folder_of(step: Step) -> str:
    """results/<folder>/<key>: where a keyed step's artifacts live."""
    stage = stage_of(step)
    if not STAGES[stage].folder:
        raise ValueError(f"{step.name} is not stored under a key")
    return f"results/{STAGES[stage].folder}/{step.key}"
