rule curate_data:
    input:
        sources=lambda wildcards: source_paths(wildcards.role),
        tasks=config["tasks"]["path"],
    output:
        kept="results/curated/{role}.parquet",
        quarantine="results/curated/{role}.quarantine.parquet",
        card="results/curated/{role}.card.json",
    log:
        "logs/curate_data/{role}.log",
    params:
        sources=lambda wildcards: sources_of(wildcards.role),
        settings=config["curate"],
    wildcard_constraints:
        role="sft|preference",
    script:
        "../scripts/curate_data.py"
