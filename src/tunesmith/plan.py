"""The build plan of a recipe: what each stage reads, the content key it is stored under, and sweeps.

Every stage's artifact lives under a key that hashes the stage's name, the recipe settings it reads
and the keys of the artifacts it consumes (a Merkle chain). Two recipes, or two sweep variants, that
agree on everything upstream of a stage therefore name the same upstream paths, and Snakemake builds
those once; changing a setting changes the key of its stage and of everything downstream only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.fetch import is_local_folder, local_files
from tunesmith.recipe import section_hash
from tunesmith.sources import source_files  # noqa: F401 (the workflow lists a source's files through plan)

MODEL_STAGES = ("base", "sft", "dpo")
INGEST_KEYS = ("id", "path", "format", "role", "split")


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


def sources_of(recipe: dict, role: str) -> list[dict]:
    return [source for source in recipe["sources"] if source["role"] == role]


def model_stages(recipe: dict) -> list[str]:
    """Stages whose answers are generated and scored: `evaluate.stages` and the submitted one, in
    build order (dpo only when DPO is enabled)."""
    wanted = {*recipe["evaluate"]["stages"], submitted_stage(recipe)}
    return [stage for stage in MODEL_STAGES if stage in wanted and (stage != "dpo" or recipe["dpo"]["enabled"])]


def submitted_stage(recipe: dict) -> str:
    stage = recipe["submission"]["stage"]
    return "sft" if stage == "dpo" and not recipe["dpo"]["enabled"] else stage


# ---- judge (issue 10) -------------------------------------------------------------------------
# One judge step per scored stage, keyed on its generations and the judge settings that decide a
# grade; the evaluation-only keys (bootstrap, reference grades) stay out, so changing them regrades
# nothing. A `reference` step grades the answers of judge.reference_grades for the agreement table.
JUDGE_EVALUATION_KEYS = ("bootstrap_samples", "confidence", "reference_grades")


def judge_enabled(recipe: dict) -> bool:
    return recipe["judge"]["backend"] != "none"


def judge_settings(recipe: dict) -> dict:
    return {key: value for key, value in recipe["judge"].items() if key not in JUDGE_EVALUATION_KEYS}


def judge_steps(recipe: dict, plan: dict[str, Step]) -> dict[str, Step]:
    if not judge_enabled(recipe):
        return {}
    judge = recipe["judge"]
    files = tuple(path for path in (recipe["tasks"]["path"], recipe["tasks"]["references"],
                                    judge["prompt_template"]) if path)
    settings = {"judge": judge_settings(recipe), "seed": recipe["seed"]}
    fetched = {"fetch_judge": plan["fetch_judge"].key} if "fetch_judge" in plan else {}  # a local judge model
    steps = {f"judge_{stage}": Step(f"judge_{stage}", settings,
                                    {"generations": plan[f"generate_{stage}"].key, **fetched}, files)
             for stage in model_stages(recipe)}
    if judge["reference_grades"]:
        steps["judge_reference"] = Step("judge_reference", settings, fetched, (*files, judge["reference_grades"]))
    return steps
# ---- end judge --------------------------------------------------------------------------------


def adapter_stages(recipe: dict, stage: str) -> list[str]:
    """The adapters a stage's model is made of, in training order; the last one's folder holds them
    all as one standalone adapter (tunesmith.adapters), which is what generation and export load."""
    cpt = ["cpt"] if recipe["continued_pretraining"]["enabled"] else []
    dpo_chain = ["dpo"] if recipe["dpo"]["start"] == "continue_sft" else ["sft", "dpo"]
    return {"base": [], "sft": cpt + ["sft"], "dpo": cpt + dpo_chain}[stage]


def fetched_models(recipe: dict) -> dict[str, tuple[str, str | None]]:
    """The models the fetch_model stage snapshots, by role: (path, revision)."""
    models = {}
    if recipe["base_model"]["path"] is not None:
        models["base"] = (recipe["base_model"]["path"], recipe["base_model"]["revision"])
    # A local judge model (judge.backend transformers or vllm) is fetched the same way.
    judge = recipe["judge"]
    if judge["backend"] in ("transformers", "vllm") and judge["local"]["path"]:
        models["judge"] = (judge["local"]["path"], judge["local"]["revision"])
    return models


def steps(recipe: dict) -> dict[str, Step]:
    """Every stage of a validated recipe, in build order, by name."""
    plan: dict[str, Step] = {}
    model = {"base_model": recipe["base_model"], "template": recipe["template"], "seed": recipe["seed"]}
    tasks = recipe["tasks"]["path"]
    base = {}
    # ---- fetch (issue 14) ------------------------------------------------------------------------
    # A named model (hub id or local folder) is snapshotted once by the fetch_model localrule, where
    # the network is; every model step consumes that snapshot, never the hub. The key hashes the id
    # (or folder and its file list) and the revision, so pinning another revision rebuilds everything
    # downstream. Same model, same key: a base that also judges is fetched once.
    for role, (path, revision) in fetched_models(recipe).items():
        plan[f"fetch_{role}"] = Step("fetch", {"path": path, "revision": revision},
                                     files=tuple(local_files(path)) if is_local_folder(path) else ())
    if "fetch_base" in plan:
        base = {"fetch_base": plan["fetch_base"].key}
    # ---- end fetch ------------------------------------------------------------------------------
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
        # What the card measures against: the training stage's max_length, and the tokenizer that
        # counts tokens when curate.tokens.count asks for the base model's.
        counted = recipe["curate"]["tokens"]["count"] == "base_model" and recipe["base_model"]["path"] is not None
        lengths = {"max_length": recipe["sft" if role == "sft" else "dpo"]["max_length"],
                   "tokenizer": recipe["base_model"]["path"] if counted else None,
                   "trust_remote_code": recipe["base_model"]["trust_remote_code"] if counted else False}
        plan[f"curate_{role}"] = Step(f"curate_{role}", {"sources": sources_of(recipe, role),
                                                         "settings": recipe["curate"], "seed": recipe["seed"],
                                                         "lengths": lengths},
                                      ingested, files=(tasks,))
    distributed = recipe["distributed"]
    plan["sft"] = Step("sft", {"model": model, "sft": recipe["sft"], "distributed": distributed},
                       {**below, "dataset": plan["curate_sft"].key})
    if recipe["dpo"]["enabled"]:
        plan["dpo"] = Step("dpo", {"model": model, "dpo": recipe["dpo"], "distributed": distributed},
                           {**below, "dataset": plan["curate_preference"].key, "sft": plan["sft"].key})
    for stage in model_stages(recipe):
        adapters = {name: plan[name].key for name in adapter_stages(recipe, stage)}
        plan[f"generate_{stage}"] = Step(f"generate_{stage}", {"model": model, "generate": recipe["generate"]},
                                         {**base, **adapters}, files=(tasks,))
    plan.update(judge_steps(recipe, plan))  # judge (issue 10)
    return plan
