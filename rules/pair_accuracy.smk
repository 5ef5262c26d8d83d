# Preference accuracy of the SFT and DPO models on the held-out preference pairs (what DPO teaches).


rule score_pair_accuracy:
    input:
        base_model_input,
        adapters=adapter_chain,
        dataset=curated,
    output:
        scores="results/pair_accuracy/{key}/{stage}.json",
    log:
        "logs/score_pair_accuracy/{key}/{stage}.log",
    params:
        base_path=base_model_path,
        base_model=setting("base_model"),
        template=setting("template"),
    wildcard_constraints:
        key=KEY,
        stage="sft|dpo",
    threads: workflow.cores
    resources:
        gpu=1,
    script:
        "../scripts/score_pair_accuracy.py"
