"""The stage registry the workflow asks: which recipe (and sweep variants, seed replicates) a run builds,
every step's content key, the rule that builds each stage, and the files a job waits for.

`rules/common.smk` builds one `Workflow` when Snakemake parses the workflow and keeps only thin
functions that turn wildcards into calls of it. Where a path is a rule's output, the workflow is
handed `locate(rule, output, **wildcards)` (common.smk's `expand` of `rules.<rule>.output.<output>`),
so paths stay written once, in the rules, and rule names are written once, here. Everything here is
plain Python: tests build a Workflow from a recipe without Snakemake.

Over 350 lines because it is what rules/common.smk computed (one short method per question a rule asks:
the files a job waits for, its settings, the targets of a run), moved here to be read and tested as Python.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.config import plan
from tunesmith.config.recipe import (RecipeError, combinations, load_recipe_and_variants, replicate_seeds, replicates,
                              workflow_recipe)
from tunesmith.data.sources import source_files

KEY_LENGTH = 12  # hex digits of a step's content key (plan.Step.key)
KEY = f"[0-9a-f]{{{KEY_LENGTH}}}"  # the wildcard constraint of `{key}` and what `tunesmith explain` matches
KEYED_PATH = re.compile(rf"^(?P<head>results/[^/]+/)(?P<key>{KEY})(?P<tail>/.*)$")

# The rule that builds each stage of plan.STAGES (results/<Stage.folder>/<key>/...).
RULES = {
    "fetch": "fetch_model", "tokenizer": "train_tokenizer", "base_model": "pretrain_base",
    "ingest": "ingest_source", "curate": "curate_data", "unpair": "unpair_preferences",
    "cpt": "train_cpt", "sft": "train_sft", "dpo": "train_preference_method",
    "generate": "generate_answers", "pair_accuracy": "score_pair_accuracy", "judge": "judge_answers",
    "evaluate": "evaluate_stages", "submit": "write_submission",
    "pairs_sample": "sample_answers", "pairs_grade": "grade_answers", "pairs_build": "build_pairs",
}
TRAINING_STAGES = ("cpt", "sft", "dpo")  # stages that train an adapter (rules/train.smk)
# What the manifests of rules outside the stage table say they made.
UNKEYED_RULES = {
    "current_submission": "current", "current_evaluation": "current", "variant_submission": "current",
    "variant_evaluation": "current", "summarise_replicates": "replicates", "rank_variants": "leaderboard",
    "trace_lineage": "lineage", "summarise_run": "summary", "export_dataset": "export", "export_model": "export",
    "stage_model": "stage_model", "stage_dataset": "stage_dataset", "push_model": "push", "push_dataset": "push",
}


def stage_of_rule(rule: str) -> str:
    """The stage-table name of what a rule makes (`ingest_source` -> `ingest`), for its manifest."""
    found = [stage for stage, name in RULES.items() if name == rule]
    if found:
        return found[0]
    if rule in UNKEYED_RULES:
        return UNKEYED_RULES[rule]
    raise KeyError(f"rule {rule} is in no stage of tunesmith.workflow.RULES or UNKEYED_RULES")


def job_label(job) -> str:
    """What a job's manifest calls its stage (`recorded(snakemake, job_label(snakemake))`): the registry's
    stage of its rule, with the role or stage it is for (`curate_sft`, `generate_dpo`, `ingest`)."""
    stage, names = stage_of_rule(job.rule), dict(job.wildcards.items())
    instance = names.get("role") or names.get("stage") or names.get("kind")
    return f"{stage}_{instance}" if instance else stage


class WorkflowError(RuntimeError):
    """A target or key the recipe does not make; common.smk re-raises it as Snakemake's WorkflowError."""


def source_paths(sources: list[dict]) -> list[str]:
    """The files behind sources (globs and folders expanded); a hub dataset id has none."""
    files = []
    for source in sources:
        if source["format"] == "hf" and not Path(source["path"]).exists():
            continue
        files += source_files(source["path"], source["format"])
    return files


def scored_by(recipe: dict) -> str | None:
    """What scores a recipe, in words (None: nothing does)."""
    parts = []
    if plan.judge_enabled(recipe):
        judge = recipe["judge"]
        parts.append(f"judge {judge['openai']['model'] if judge['backend'] == 'openai' else judge['local']['path']}")
    if recipe["tasks"]["references"]:
        parts.append(f"references {recipe['tasks']['references']}")
    return "; ".join(parts) or None


def _unset_locate(rule, output, **wildcards):
    raise WorkflowError("Workflow.locate is not set: rules/common.smk sets it to the rules' outputs")


class Workflow:
    """The recipe a run builds ("" below), its sweep variants and seed replicates, and their steps."""

    def __init__(self, path: str, recipe: dict, sweep: dict[str, dict], locate=_unset_locate):
        self.path, self.recipe, self.variants = path, recipe, sweep
        self.replicates = replicates(recipe)  # `repeats`: the recipe under further seeds, named seed=N
        self.recipes = {"": recipe, **sweep, **self.replicates}
        self.plans = {name: plan.steps(each, data_of=recipe if name in self.replicates else None)
                      for name, each in self.recipes.items()}
        self.steps = {step.key: step for steps in self.plans.values() for step in steps.values()}
        self.variant_of = {step.key: name for name, steps in self.plans.items() for step in steps.values()}
        self.locate = locate  # (rule, output, **wildcards) -> the output's path

    # ---- steps and variants ----
    def step(self, key: str) -> plan.Step:
        try:
            return self.steps[key]
        except KeyError:
            raise WorkflowError(f"no stage of this recipe is stored under key {key}") from None

    def variant(self, key: str | None = None, variant: str = "") -> str:
        """The variant behind a job ("" for the recipe): the one that made its key, else the one it names."""
        return self.variant_of[key] if key is not None else variant

    def _output(self, row: str, output: str, key: str, /, **wildcards) -> str:
        """`output` of the rule that builds the stage-table row `row`, under `key`."""
        return self.locate(RULES[row], output, key=key, **wildcards)

    def step_output(self, variant: str, name: str, output: str, /, **wildcards) -> str:
        """An output of the step `name` (`evaluate`, `submit`...) of a variant."""
        step = self.plans[variant][name]
        return self._output(plan.stage_of(step), output, step.key, **wildcards)

    # ---- data ----
    def step_sources(self, key: str) -> list[str]:
        return source_paths(self.step(key).settings["sources"])

    def ingested(self, key: str) -> list[str]:
        """The per-source Parquet files of a curation step, in the order of its sources."""
        step = self.step(key)
        pairs = [self._output("pairs_build", "ingested", step.upstream["pairs"])] if "pairs" in step.upstream else []
        return [self._output("ingest", "ingested", step.upstream[f"ingest_{source['id']}"])
                for source in step.settings.get("sources", [])] + pairs

    def curation_sources(self, key: str) -> list[dict]:
        """A curation step's sources; the preference role's add the on-policy pairs (pairs.enabled)."""
        from tunesmith.training.on_policy import pairs_source

        step = self.step(key)
        pairs = step.upstream.get("pairs")
        return step.settings.get("sources", []) + (
            [pairs_source(self._output("pairs_build", "pairs", pairs))] if pairs else [])

    def curated(self, key: str) -> str:
        """The dataset a training step consumes: a curated role's Parquet, or KTO's unpaired answers."""
        dataset = self.step(self.step(key).upstream["dataset"])
        if dataset.name == "unpair_preference":
            return self._output("unpair", "kept", dataset.key)
        return self._output("curate", "kept", dataset.key, role=dataset.name.removeprefix("curate_"))

    def curated_pairs(self, key: str) -> str:
        return self._output("curate", "kept", self.step(key).upstream["pairs"], role="preference")

    def curated_roles(self) -> list[str]:
        return [role for role in plan.ROLES if f"curate_{role}" in self.plans[""]]

    def data_cards(self) -> dict[str, str]:
        """The recipe's data cards by role."""
        return {role: self.step_output("", f"curate_{role}", "card", role=role) for role in self.curated_roles()}

    def curation_lengths(self, key: str, role: str) -> dict:
        """What a curation job's card measures against (plan.curation_lengths)."""
        return plan.curation_lengths(self.step(key).settings, role)

    def exported_dataset(self, role: str) -> str:
        """The recipe's curated `role` data in trl's layouts (rule export_dataset)."""
        return self.locate("export_dataset", "dataset", key=self.plans[""][f"curate_{role}"].key, role=role)

    def exported_datasets(self) -> list[str]:
        """The recipe's curated datasets in the layouts trl and `datasets` load (built with every run)."""
        return [self.exported_dataset(role) for role in self.curated_roles()]

    def dataset_card_inputs(self, role: str) -> dict[str, str]:
        """What a dataset card's staging waits for: the exported dataset and the data card."""
        card = self.step_output("", f"curate_{role}", "card", role=role)
        return {"dataset": self.exported_dataset(role), "card": card}

    def curation_settings(self, role: str) -> dict:
        """The recipe's curation step's settings for `role` (what a dataset card shows)."""
        return self.plans[""][f"curate_{role}"].settings

    def dataset_sources(self, role: str) -> list[dict]:
        """The recipe's curated `role` data's sources, the on-policy pairs included (what a dataset card names)."""
        return self.curation_sources(self.plans[""][f"curate_{role}"].key)

    # ---- on-policy pairs (tunesmith.training.on_policy, rules/pairs.smk): shard counts are in paths, not keys ----
    def pairs_shards(self, key: str, name: str, output: str) -> list[str]:
        """The files of the pairs step `name` upstream of `key`, one per shard."""
        upstream = self.step(self.step(key).upstream[name])
        shards = self.recipes[self.variant(key)]["pairs"]["shards"]
        return [self._output(plan.stage_of(upstream), output, upstream.key, shard=shard, shards=shards)
                for shard in range(shards)]

    def pairs_prompts(self, key: str) -> str:
        """What a sampling job draws its prompts from: the curated SFT rows, or the recipe's prompts file."""
        step = self.step(key)
        dataset = step.upstream.get("dataset")
        return self._output("curate", "kept", dataset, role="sft") if dataset else step.files[0]

    def pairs_samples(self, key: str, shard: str, shards: str) -> str:
        return self._output("pairs_sample", "samples", self.step(key).upstream["samples"], shard=shard, shards=shards)

    def pairs_graded(self, key: str) -> list[str]:
        return self.pairs_shards(key, "graded", "graded")

    def pairs_judge(self, key: str) -> dict | None:
        """The judge section a grading job gets (None: it grades against references)."""
        return self.judge_settings(key) if "judge" in self.step(key).settings else None

    def pairs_judge_is_local(self, key: str) -> bool:
        """Whether a grading job loads a judge model itself (it then holds a GPU)."""
        judge = self.step(key).settings.get("judge")
        return judge is not None and judge["backend"] != "openai"

    def pairs_judge_inputs(self, key: str, kind: str) -> list[str]:
        """The judge grader's rubric file (`template`) or fetched model record (`model`); none for references."""
        judge = self.step(key).settings.get("judge")
        if judge is None:
            return []
        if kind == "template":
            return [judge["prompt_template"]] if judge["prompt_template"] else []
        return self.fetched_record(self.variant(key), "judge")

    # ---- models ----
    def fetched_record(self, variant: str, role: str) -> list[str]:
        """[the snapshot record of a fetched model] (what jobs wait for); [] when the role fetches nothing."""
        step = self.plans[variant].get(f"fetch_{role}")
        return [self._output("fetch", "record", step.key)] if step else []

    def fetched_folder(self, variant: str, role: str) -> str | None:
        """The snapshot folder model jobs load for `role` ("base", or "judge" for a local judge), or None."""
        step = self.plans[variant].get(f"fetch_{role}")
        return self._output("fetch", "model", step.key) if step else None

    def fetch_targets(self) -> list[str]:
        """Every snapshot the recipe and its sweep variants need: `snakemake fetch_models` on a login node."""
        return sorted({record for variant in self.plans for role in ("base", "judge")
                       for record in self.fetched_record(variant, role)})

    def fetch_recipe_key(self, key: str) -> str:
        """The recipe section that named a fetched model, for its error messages."""
        bases = {steps["fetch_base"].key for steps in self.plans.values() if "fetch_base" in steps}
        return "base_model" if key in bases else "judge.local"

    def base_model_input(self, variant: str) -> list[str]:
        """What a model job waits for: the fetched snapshot's record, or the built tiny model."""
        steps = self.plans[variant]
        built = [self._output("base_model", "model", steps["base_model"].key)] if "base_model" in steps else []
        return self.fetched_record(variant, "base") or built

    def base_model_path(self, variant: str) -> str:
        """The folder model jobs load: the fetched snapshot, or the built tiny model."""
        return self.fetched_folder(variant, "base") or self.base_model_input(variant)[0]

    def adapter_chain(self, variant: str, stage: str) -> list[str]:
        """The stage's adapter folder (none for the base): the last of its chain, which holds the adapters
        beneath it (tunesmith.model.adapters)."""
        steps = self.plans[variant]
        return [self._output(name, "adapter", steps[name].key)
                for name in plan.adapter_stages(self.recipes[variant], stage)[-1:]]

    def adapters(self) -> dict[str, str]:
        """The recipe's trained adapter folders by stage."""
        return {name: self.step_output("", name, "adapter") for name in TRAINING_STAGES if name in self.plans[""]}

    def consumed(self, key: str, name: str, output: str) -> list[str]:
        """[`output` of the artifact a step consumes as `name`] (`sft`, `cpt`, `tokenizer`); [] for none."""
        upstream = self.step(key).upstream.get(name)
        return [self._output(plan.stage_of(self.step(upstream)), output, upstream)] if upstream else []

    def training_bases(self, jobs) -> dict[str, dict]:
        """`{"<rule> <key>": base_model section}` of the training jobs among (rule name, key) pairs: what the
        quantised-training guard checks when jobs are about to run."""
        rules = {RULES[stage] for stage in TRAINING_STAGES}
        return {f"{rule} {key}": self.steps[key].settings["base_model"] for rule, key in jobs if rule in rules}

    def export_settings(self, section: str) -> dict:
        """What an export of the recipe's model loads it with: the SFT step's `base_model` or `template` settings;
        `base_model` with its `path` (the model card names a local base by it; no training step's key reads it)."""
        settings = self.plans[""]["sft"].settings[section]
        return {**settings, "path": self.recipe["base_model"]["path"]} if section == "base_model" else settings

    # ---- answers and scores ----
    def task_file(self, variant: str) -> str:
        return self.recipes[variant]["tasks"]["path"]

    def references(self, variant: str) -> list[str]:
        return self.recipes[variant]["tasks"]["references"] or []

    def model_stages(self, variant: str) -> list[str]:
        return plan.model_stages(self.recipes[variant])

    def generations(self, variant: str, stage_names) -> list[str]:
        return [self.step_output(variant, f"generate_{name}", "generations", stage=name) for name in stage_names]

    def preference_scores(self, variant: str) -> dict[str, str]:
        """Stage -> its preference-accuracy file, for the stages a recipe compares (none without DPO)."""
        steps = self.plans[variant]
        return {stage: self.step_output(variant, f"pair_accuracy_{stage}", "scores", stage=stage)
                for stage in plan.PAIR_ACCURACY_STAGES if f"pair_accuracy_{stage}" in steps}

    def judged(self, variant: str, stage_names) -> dict[str, str]:
        """The judge's grades of each stage (and `reference`) for a variant; none without a judge."""
        steps = self.plans[variant]
        return {name: self.step_output(variant, f"judge_{name}", "grades", stage=name)
                for name in stage_names if f"judge_{name}" in steps}

    def judge_answers(self, key: str, stage: str) -> str:
        """What a judge job grades: a stage's generations, or the answers of judge.reference_grades."""
        if stage == "reference":
            return self.recipes[self.variant(key)]["judge"]["reference_grades"]
        return self._output("generate", "generations", self.step(key).upstream["generations"], stage=stage)

    def judge_settings(self, key: str) -> dict:
        """The judge section a judge job gets; a local judge model is loaded from its fetched snapshot."""
        judge = self.step(key).settings["judge"]
        folder = self.fetched_folder(self.variant(key), "judge")
        return {**judge, "local": {**judge["local"], "path": folder}} if folder else judge

    def evaluation_inputs(self, variant: str) -> dict:
        names = self.model_stages(variant)
        return {
            "generations": self.generations(variant, names),
            "references": self.references(variant),
            "tasks": self.task_file(variant),
            "judged": list(self.judged(variant, names).values()),
            "judged_reference": next(iter(self.judged(variant, ["reference"]).values()), []),
            "preferences": list(self.preference_scores(variant).values()),
        }

    def scored_files(self) -> list[str]:
        """The files the recipe's evaluation scores: what results/eval.json must name to be this run's."""
        found = self.evaluation_inputs("")
        return [*found["generations"], *found["judged"],
                *([found["judged_reference"]] if found["judged_reference"] else []), *found["preferences"]]

    def submission_stages(self, variant: str) -> list[str]:
        """The stages whose answers a submission job gets: the named one, or every scored one for `best`."""
        recipe = self.recipes[variant]
        best = recipe["submission"]["stage"] == "best"
        return plan.model_stages(recipe) if best else [plan.submitted_stage(recipe)]

    def submission_inputs(self, variant: str) -> dict:
        best = self.recipes[variant]["submission"]["stage"] == "best"
        return {
            "generations": self.generations(variant, self.submission_stages(variant)),
            "tasks": self.task_file(variant),
            "scores": [self.step_output(variant, "evaluate", "scores")] if best else [],
        }

    def replicate_evaluations(self) -> dict[int, str]:
        """Seed -> the keyed evaluation of the recipe trained under it (the recipe's own seed first): under their
        keys they outlive the next recipe, so results/replicates.json names files that stay (`tunesmith compare`)."""
        return {seed: self.step_output(name, "evaluate", "scores")
                for seed, name in zip(replicate_seeds(self.recipe), ["", *self.replicates])}

    def variant_overrides(self) -> dict:
        return combinations(self.recipe)

    # ---- what the end of a run tells its user ----
    def run_files(self, current: dict) -> dict:
        """The files the recipe's end-of-run summary and report pages read (tunesmith.evaluation.summary.collect): the
        scored stages' answers when something scores them, else the submitted stage's alone. `current`
        holds the fixed paths of the copies (submission, scores) and of the replicates' table."""
        found, recipe = self.evaluation_inputs(""), self.recipe
        names = plan.model_stages(recipe) if scored_by(recipe) else [plan.submitted_stage(recipe)]
        return {
            "submission": current["submission"],
            # The recipe's own (keyed) submission and its choice of stage: what submission.jsonl must copy.
            "submitted": self.step_output("", "submit", "submission"),
            "choice": self.step_output("", "submit", "choice"),
            "tasks": found["tasks"],
            "references": found["references"] or None,
            "scores": current["scores"],
            "scored": self.scored_files(),
            "configured": scored_by(recipe),
            "generations": dict(zip(names, self.generations("", names))),
            "judged": self.judged("", names),
            "cards": self.data_cards(),
            "adapters": self.adapters(),
            "replicates": ({"path": current["replicates"], "evaluations": list(self.replicate_evaluations().values())}
                           if self.replicates else None),
        }

    def summary_inputs(self, current: dict) -> dict:
        """What the summary job waits for: the files of `run_files`, the fixed copies only where the run makes
        them (scores when something scores the recipe, the replicates' table under `repeats`)."""
        files = self.run_files(current)
        return {
            "submission": files["submission"], "tasks": files["tasks"], "references": files["references"] or [],
            "scores": [files["scores"]] if files["configured"] else [],
            "generations": list(files["generations"].values()), "judged": list(files["judged"].values()),
            "cards": list(files["cards"].values()), "adapters": list(files["adapters"].values()),
            "replicates": [current["replicates"]] if self.replicates else [],
        }

    def submitted(self) -> tuple[str, str]:
        """The submitted stage and why (the summary's first line); for `best`, what the choice file says once the
        submission job wrote it (tunesmith.evaluation.summary.collect reads it again at job time)."""
        # scipy and more: kept out of the jobs that import the registry
        from tunesmith.evaluation.choice import submission_reason

        stage = plan.submitted_stage(self.recipe)
        return stage, submission_reason(stage, self.recipe["submission"]["stage"], self.recipe["dpo"]["enabled"])

    def recipe_facts(self) -> dict:
        """What the report's first page names of the recipe: its file and key settings."""
        from tunesmith.evaluation.summary import key_settings  # scipy, matplotlib: kept out of jobs, as above

        return {"path": str(self.path), "settings": key_settings(self.recipe)}

    # ---- publishing ----
    def publish_repo(self, kind: str) -> str:
        """The hub repository a push of `kind` ("model" or "dataset") goes to; refused when unset."""
        key = "dataset_repo" if kind == "dataset" else "model_repo"
        if not self.recipe["publish"][key]:
            raise WorkflowError(f"publish.{key} is null: name the hub repository (owner/name) to push to")
        return self.recipe["publish"][key]

    def model_sections(self) -> dict:
        """The recipe sections a model card shows (tunesmith.hub.hub.MODEL_SECTIONS)."""
        from tunesmith.hub.hub import MODEL_SECTIONS

        return {name: self.recipe[name] for name in MODEL_SECTIONS}

    def publish_settings(self) -> dict:
        return self.recipe["publish"]

    def published_model(self, stage: str) -> None:
        """Refuses to publish a stage the recipe does not train."""
        if stage == "dpo" and not self.recipe["dpo"]["enabled"]:
            raise WorkflowError("dpo.enabled is false: there is no dpo model to publish; use sft")

    def model_card_inputs(self, kind: str, stage: str, current: dict) -> dict:
        """What staging a model for the hub waits for: the adapter chain or the merged export, the data cards,
        the scores (when something scores the recipe) and the base model's snapshot record."""
        self.published_model(stage)
        sources = (self.adapter_chain("", stage) if kind == "adapter"
                   else [self.locate("export_model", "model", stage=stage)])
        return {"sources": sources, **self.data_cards(),
                "scores": [current["scores"]] if scored_by(self.recipe) else [],
                "record": self.fetched_record("", "base")}


def load(config: dict, configfiles, basedir, locate=_unset_locate) -> Workflow:
    """The Workflow of a Snakemake run: `--config recipe=PATH` (and `set=`), read and validated once, its
    sweep variants with it; a RecipeError says what is wrong."""
    path, (recipe, sweep) = workflow_recipe(config, configfiles, basedir, loader=load_recipe_and_variants)
    return Workflow(path, recipe, sweep, locate)

