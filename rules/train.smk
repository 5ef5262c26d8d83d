rule train_sft:
    input:
        base_model_input(),
        dataset="results/curated/sft.parquet",
    output:
        adapter=directory("results/sft/adapter"),
    log:
        "logs/train_sft.log",
    params:
        base_path=base_model_path(),
        model=model_sections(),
        sft=config["sft"],
    threads: workflow.cores
    resources:
        gpu=1,
    script:
        "../scripts/train_sft.py"


rule train_dpo:
    input:
        base_model_input(),
        dataset="results/curated/preference.parquet",
        sft_adapter=rules.train_sft.output.adapter,
    output:
        adapter=directory("results/dpo/adapter"),
    log:
        "logs/train_dpo.log",
    params:
        base_path=base_model_path(),
        model=model_sections(),
        dpo=config["dpo"],
    threads: workflow.cores
    resources:
        gpu=1,
    script:
        "../scripts/train_dpo.py"


rule export_model:
    input:
        base_model_input(),
        adapters=lambda wildcards: adapter_chain(wildcards),
    output:
        model=directory("results/export/{stage}"),
    log:
        "logs/export_model/{stage}.log",
    params:
        base_path=base_model_path(),
        model=model_sections(),
    wildcard_constraints:
        stage="sft|dpo",
    threads: workflow.cores
    resources:
        gpu=1,
    script:
        "../scripts/export_model.py"
