# tunesmith: raw corpora -> curated data -> (tiny) base model -> LoRA SFT -> DPO -> submission.jsonl
#   snakemake submission.jsonl --cores 1 --resources gpu=1                  # the embedded default recipe
#   snakemake submission.jsonl --cores 1 --resources gpu=1 --config recipe=recipes/llm-jp-3-13b-qlora.yaml
#   snakemake --cores 1 --resources gpu=1 --config recipe=recipes/sweep.yaml  # every variant + leaderboard
import gc

from snakemake.utils import min_version

min_version("9.0")
# Snakemake's start-up objects are never garbage; the cyclic collector's full passes over them were
# ~0.3 s of every `snakemake` call (bench/dag.py). Frozen, only what is made after them is scanned.
gc.freeze()


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/curate.smk"
include: "rules/fetch.smk"
include: "rules/base_model.smk"
include: "rules/train.smk"
include: "rules/pairs.smk"
include: "rules/generate.smk"
include: "rules/pair_accuracy.smk"
include: "rules/judge.smk"
include: "rules/submission.smk"
include: "rules/publish.smk"


rule all:
    default_target: True
    input:
        rules.current_submission.output,
        evaluation_targets(),
        rules.trace_lineage.output,
        rules.summarise_run.output,
        sweep_targets(),
        replicate_targets(),
        dataset_targets(),
