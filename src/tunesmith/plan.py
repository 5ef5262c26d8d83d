"""The build plan of a recipe: what each stage reads, the content key it is stored under, and sweeps.

Every stage's artifact lives under a key that hashes the stage's name, the recipe settings it reads
and the keys of the artifacts it consumes (a Merkle chain). Two recipes, or two sweep variants, that
agree on everything upstream of a stage therefore name the same upstream paths, and Snakemake builds
those once; changing a setting changes the key of its stage and of everything downstream only.
"""

from __future__ import annotations

import copy
import glob
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.recipe import RecipeError, section_hash, validate_recipe

MODEL_STAGES = ("base", "sft", "dpo")
PREFERENCE_STAGES = ("sft", "dpo")  # the stages whose preference accuracy is compared
INGEST_KEYS = ("id", "path", "format", "role", "split")
SHARD_SUFFIXES = {"jsonl": (".jsonl", ".ndjson"), "json": (".json",), "csv": (".csv", ".tsv"),
                  "parquet": (".parquet",)}


@dataclass(frozen=True)
class Step:
    """One stage of one recipe: the settings its rule gets as params, and the keys it consumes."""
    stage: str
    settings: dict
    upstream: dict = field(default_factory=dict)  # name -> key of a consumed artifact
    files: tuple = ()  # files outside the workflow (sources, task file) it reads

    @property
    def key(self) -> str:
        return section_hash({"stage": self.stage, "settings": self.settings, "upstream": self.upstream,
                             "files": list(self.files)})[:12]


def source_files(path: str, format: str) -> list[str]:
    """The files a path names: itself, a directory's shards of that format (recursively, hidden
    files skipped), or a glob's matches (`**` recursive). Sorted, so line order is reproducible."""
    if format == "hf":
        return [path]
    if any(character in path for character in "*?["):
        return sorted(match for match in glob.glob(path, recursive=True) if Path(match).is_file())
    folder = Path(path)
    if folder.is_dir():
        suffixes = SHARD_SUFFIXES.get(format, ())
        return sorted(str(file) for file in folder.rglob("*")
                      if file.is_file() and file.suffix.lower() in suffixes
                      and not any(part.startswith(".") for part in file.relative_to(folder).parts))
    return [path] if folder.is_file() else []


def sources_of(recipe: dict, role: str) -> list[dict]:
    return [source for source in recipe["sources"] if source["role"] == role]


def model_stages(recipe: dict) -> list[str]:
    """Stages whose answers are generated and scored."""
    return list(MODEL_STAGES) if recipe["dpo"]["enabled"] else ["base", "sft"]


def submitted_stage(recipe: dict) -> str:
    stage = recipe["submission"]["stage"]
    return "sft" if stage == "dpo" and not recipe["dpo"]["enabled"] else stage


def adapter_stages(recipe: dict, stage: str) -> list[str]:
    """The adapters merged, in order, onto the base model to make a stage's model."""
    cpt = ["cpt"] if recipe["continued_pretraining"]["enabled"] else []
    dpo_chain = ["dpo"] if recipe["dpo"]["start"] == "continue_sft" else ["sft", "dpo"]
    return {"base": [], "sft": cpt + ["sft"], "dpo": cpt + dpo_chain}[stage]


def steps(recipe: dict) -> dict[str, Step]:
    """Every stage of a validated recipe, in build order, by name."""
    plan: dict[str, Step] = {}
    model = {"base_model": recipe["base_model"], "template": recipe["template"], "seed": recipe["seed"]}
    tasks = recipe["tasks"]["path"]
    base = {}
    if recipe["base_model"]["path"] is None:
        pretrain = sources_of(recipe, "pretrain")
        plan["tokenizer"] = Step("tokenizer", {"vocab_size": recipe["base_model"]["build"]["vocab_size"],
                                               "sources": pretrain})
        plan["base_model"] = Step("base_model", {"build": recipe["base_model"]["build"], "seed": recipe["seed"],
                                                 "sources": pretrain}, {"tokenizer": plan["tokenizer"].key})
        base = {"base_model": plan["base_model"].key}
    below = dict(base)  # what SFT and DPO train on top of: the base, and the CPT adapter if any
    if recipe["continued_pretraining"]["enabled"]:
        # No template: raw text, so a template edit does not rerun continued pretraining.
        plan["cpt"] = Step("cpt", {"base_model": recipe["base_model"], "seed": recipe["seed"],
                                   "continued_pretraining": recipe["continued_pretraining"],
                                   "distributed": recipe["distributed"], "sources": sources_of(recipe, "pretrain")},
                           base)
        below["cpt"] = plan["cpt"].key
    roles = ["sft", "preference"] if recipe["dpo"]["enabled"] else ["sft"]
    for role in roles:
        # One ingest step per source, keyed on its entry alone: editing or adding one source
        # re-reads that source only.
        ingested = {}
        for source in sources_of(recipe, role):
            name = f"ingest_{source['id']}"
            # What reading needs; style, columns, weight and caps are curation's business.
            plan[name] = Step("ingest", {"source": {key: source[key] for key in INGEST_KEYS}})
            ingested[name] = plan[name].key
        plan[f"curate_{role}"] = Step(f"curate_{role}", {"sources": sources_of(recipe, role),
                                                         "settings": recipe["curate"], "seed": recipe["seed"]},
                                      ingested, files=(tasks,))
    distributed = recipe["distributed"]
    plan["sft"] = Step("sft", {"model": model, "sft": recipe["sft"], "distributed": distributed},
                       {**below, "dataset": plan["curate_sft"].key})
    if recipe["dpo"]["enabled"]:
        plan["dpo"] = Step("dpo", {"model": model, "dpo": recipe["dpo"], "distributed": distributed},
                           {**below, "dataset": plan["curate_preference"].key, "sft": plan["sft"].key})
    # ---- preference accuracy (issue 13): one step per compared stage, on the held-out preference pairs.
    # It reads the model and template only (not the seed, nor generation settings).
    if recipe["dpo"]["enabled"]:
        scoring = {"model": {"base_model": recipe["base_model"], "template": recipe["template"]}}
        for stage in PREFERENCE_STAGES:
            adapters = {name: plan[name].key for name in adapter_stages(recipe, stage)}
            plan[f"preference_{stage}"] = Step(f"preference_{stage}", scoring,
                                               {**base, **adapters, "dataset": plan["curate_preference"].key})
    # ---- end of preference accuracy
    for stage in model_stages(recipe):
        adapters = {name: plan[name].key for name in adapter_stages(recipe, stage)}
        plan[f"generate_{stage}"] = Step(f"generate_{stage}", {"model": model, "generate": recipe["generate"]},
                                         {**base, **adapters}, files=(tasks,))
    return plan


def _set(recipe: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = recipe
    for name in parents:
        if not isinstance(node.get(name), dict):
            raise RecipeError(f"sweep.matrix: '{dotted}' does not name a recipe key ('{name}' is not a section)")
        node = node[name]
    node[last] = copy.deepcopy(value)


def variant_name(overrides: dict) -> str:
    """`dpo.beta=0.2,generate.max_new_tokens=24`: readable, and a safe folder name."""
    parts = [f"{key}={json.dumps(value, ensure_ascii=False, separators=(',', ':'))}" for key, value in overrides.items()]
    return ",".join(parts).replace("/", "_").replace('"', "")


def combinations(recipe: dict) -> dict[str, dict]:
    """The sweep's variants as overrides ({dotted key: value}), by variant name."""
    matrix = recipe["sweep"]["matrix"]
    found = {}
    if not matrix:  # the product of no lists is one empty combination, not none
        return found
    for values in itertools.product(*matrix.values()):
        overrides = dict(zip(matrix, values))
        found[variant_name(overrides)] = overrides
    return found


def variants(recipe: dict, origin: str = "recipe") -> dict[str, dict]:
    """The sweep's variants, by name: the recipe with each combination of `sweep.matrix` values,
    validated (a misspelt key is an error naming the variant); empty when there is no sweep."""
    found = {}
    for name, overrides in combinations(recipe).items():
        if not recipe["tasks"]["references"]:
            raise RecipeError(f"{origin}: sweep.matrix ranks variants by their scores, which needs tasks.references")
        variant = copy.deepcopy(recipe)
        variant["sweep"] = {"matrix": {}}
        for dotted, value in overrides.items():
            _set(variant, dotted, value)
        validate_recipe(variant, origin=f"{origin}, sweep variant {name}")
        found[name] = variant
    return found
