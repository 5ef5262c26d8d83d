# One job per source (re-read only when that source or its entry changes), then one per role.


rule ingest_source:
    input:
        files=step_sources,
    output:
        ingested="results/ingested/{key}.parquet",
    log:
        "logs/ingest_source/{key}.log",
    params:
        sources=setting("sources"),
        curate=setting("curate"),
    wildcard_constraints:
        key=KEY,
    script:
        "../scripts/ingest_source.py"


rule curate_data:
    input:
        ingested=ingested,
        tasks=task_file,
    output:
        kept="results/curated/{key}/{role}.parquet",
        quarantine="results/curated/{key}/{role}.quarantine.parquet",
        card="results/curated/{key}/{role}.card.json",
        card_markdown=report(
            "results/curated/{key}/{role}.card.md",
            category="Data cards",
            subcategory="{role}",
            caption="../report/card.rst",
        ),
        lengths_plot=report(
            "results/curated/{key}/{role}.lengths.png",
            category="Data cards",
            subcategory="{role}",
            caption="../report/card.rst",
        ),
    log:
        "logs/curate_data/{key}/{role}.log",
    params:
        sources=curation_sources,
        curate=setting("curate"),
        seed=setting("seed"),
        lengths=asked(lambda wildcards: WORKFLOW.curation_lengths(wildcards.key, wildcards.role)),
    wildcard_constraints:
        key=KEY,
        role="sft|preference",
    threads: workflow.cores
    script:
        "../scripts/curate_data.py"


# KTO (dpo.method: kto) trains on single answers labelled desirable or undesirable: the curated pairs,
# unpaired (tunesmith.data.unpaired). Every answer is kept or quarantined with its reason.
rule unpair_preferences:
    input:
        pairs=curated_pairs,
    output:
        kept="results/curated/{key}/unpaired.parquet",
        quarantine="results/curated/{key}/unpaired.quarantine.parquet",
        card="results/curated/{key}/unpaired.card.json",
    log:
        "logs/unpair_preferences/{key}.log",
    params:
        seed=setting("seed"),
    wildcard_constraints:
        key=KEY,
    script:
        "../scripts/unpair_preferences.py"
