rule train_cpt:
    input:
        base_model_input,
        texts=step_sources,
    output:
        adapter=report(
            directory("results/cpt/{key}/adapter"),
            patterns=["training_{name}.png", "training_{name}.csv"],
            category="Training curves",
            subcategory="cpt",
            caption="../report/curves.rst",
        ),
    log:
        "logs/train_cpt/{key}.log",
    params:
        base_path=base_model_path,
        base_model=setting("base_model"),
        seed=setting("seed"),
        continued_pretraining=setting("continued_pretraining"),
        distributed=setting("distributed"),
        sources=setting("sources"),
    wildcard_constraints:
        key=KEY,
    threads: workflow.cores
    resources:
        gpu=processes,
    script:
        "../scripts/train_cpt.py"


rule train_sft:
    input:
        base_model_input,
        dataset=curated,
        base_adapters=base_adapters,
    output:
        adapter=report(
            directory("results/sft/{key}/adapter"),
            patterns=["training_{name}.png", "training_{name}.csv"],
            category="Training curves",
            subcategory="sft",
            caption="../report/curves.rst",
        ),
    log:
        "logs/train_sft/{key}.log",
    params:
        base_path=base_model_path,
        base_model=setting("base_model"),
        template=setting("template"),
        seed=setting("seed"),
        sft=setting("sft"),
        distributed=setting("distributed"),
    wildcard_constraints:
        key=KEY,
    threads: workflow.cores
    resources:
        gpu=processes,
    script:
        "../scripts/train_sft.py"


rule train_dpo:
    input:
        base_model_input,
        dataset=curated,
        sft_adapter=sft_adapter,
        base_adapters=base_adapters,
    output:
        adapter=report(
            directory("results/dpo/{key}/adapter"),
            patterns=["training_{name}.png", "training_{name}.csv"],
            category="Training curves",
            subcategory="dpo",
            caption="../report/curves.rst",
        ),
    log:
        "logs/train_dpo/{key}.log",
    params:
        base_path=base_model_path,
        base_model=setting("base_model"),
        template=setting("template"),
        seed=setting("seed"),
        dpo=setting("dpo"),
        distributed=setting("distributed"),
    wildcard_constraints:
        key=KEY,
    threads: workflow.cores
    resources:
        gpu=processes,
    script:
        "../scripts/train_dpo.py"


# A standalone merged model of the recipe's SFT or DPO stage: `snakemake results/export/dpo`. The merge
# runs on the CPU in the recipe's dtype (exact; a 13B model never has to fit a GPU).
rule export_model:
    input:
        base_model_input,
        adapter=adapter_chain,
    output:
        model=directory("results/export/{stage}"),
    log:
        "logs/export_model/{stage}.log",
    params:
        base_path=base_model_path,
        base_model=lambda wildcards: PLANS[""]["sft"].settings["base_model"],
        template=lambda wildcards: PLANS[""]["sft"].settings["template"],
    wildcard_constraints:
        stage="sft|dpo",
    threads: workflow.cores
    script:
        "../scripts/export_model.py"
