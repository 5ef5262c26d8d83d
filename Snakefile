# tunesmith: raw corpora -> curated data -> (tiny) base model -> LoRA SFT -> DPO -> submission.jsonl
#   snakemake submission.jsonl --cores 1 --resources gpu=1                  # the embedded default recipe
#   snakemake submission.jsonl --cores 1 --resources gpu=1 --configfile recipes/llm-jp-3-13b-qlora.yaml
#   snakemake --cores 1 --resources gpu=1 --configfile recipes/sweep.yaml   # every variant + leaderboard
from snakemake.utils import min_version

min_version("9.0")


configfile: "recipes/default.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/curate.smk"
include: "rules/base_model.smk"
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/preference.smk"
include: "rules/submission.smk"


rule all:
    default_target: True
    input:
        rules.write_submission.output,
        evaluation_targets(),
        rules.trace_lineage.output,
        sweep_targets(),
