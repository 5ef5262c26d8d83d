# Artifacts other tools load (issue 14). The curated data in trl's layouts is built with every run;
# the cards and pushes only when asked for:
#   snakemake results/pushed/adapter/dpo.json --cores 1 --config recipe=...   # the DPO adapter chain
#   snakemake results/pushed/export/dpo.json ...                              # the merged DPO model
#   snakemake results/pushed/dataset/sft.json ...                             # the curated SFT data
# results/publish/<kind>/<name>/ is exactly what a push uploads (build it alone to read it first).


rule export_dataset:
    input:
        kept=rules.curate_data.output.kept,
        card=rules.curate_data.output.card,
    output:
        dataset=directory("results/curated/{key}/{role}.dataset"),
    log:
        "logs/export_dataset/{key}/{role}.log",
    params:
        sources=curation_sources,
        curate=setting("curate"),
    wildcard_constraints:
        key=KEY,
        role="sft|preference",
    script:
        "../scripts/export_dataset.py"


rule stage_model:
    input:
        unpack(model_card_inputs),
    output:
        folder=directory("results/publish/{kind}/{stage}"),
    log:
        "logs/stage_model/{kind}/{stage}.log",
    params:
        sections=WORKFLOW.model_sections(),
        publish=WORKFLOW.publish_settings(),
    wildcard_constraints:
        kind="adapter|export",
        stage="sft|dpo",
    localrule: True
    script:
        "../scripts/stage_model.py"


rule stage_dataset:
    input:
        unpack(exported_dataset),
    output:
        folder=directory("results/publish/dataset/{role}"),
    log:
        "logs/stage_dataset/{role}.log",
    params:
        sources=lambda wildcards: WORKFLOW.dataset_sources(wildcards.role),
        curate=lambda wildcards: WORKFLOW.curation_settings(wildcards.role)["curate"],
        publish=WORKFLOW.publish_settings(),
    wildcard_constraints:
        role="sft|preference",
    localrule: True
    script:
        "../scripts/stage_dataset.py"


# Pushes need the network and a token (`hf auth login` or HF_TOKEN): they run here, never on a node.
rule push_model:
    input:
        folder=rules.stage_model.output.folder,
    output:
        receipt="results/pushed/{kind}/{stage}.json",
    log:
        "logs/push_model/{kind}/{stage}.log",
    params:
        repo=publish_repo("model"),
        private=WORKFLOW.publish_settings()["private"],
    wildcard_constraints:
        kind="adapter|export",
        stage="sft|dpo",
    localrule: True
    script:
        "../scripts/push_artifact.py"


use rule push_model as push_dataset with:
    input:
        folder=rules.stage_dataset.output.folder,
    output:
        receipt="results/pushed/dataset/{role}.json",
    log:
        "logs/push_dataset/{role}.log",
    params:
        repo=publish_repo("dataset"),
        private=WORKFLOW.publish_settings()["private"],
    wildcard_constraints:
        role="sft|preference",
