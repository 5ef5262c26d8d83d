rule generate_answers:
    input:
        base_model_input(),
        adapters=adapter_chain,
        tasks=config["tasks"]["path"],
    output:
        generations="results/generations/{stage}.jsonl",
    log:
        "logs/generate_answers/{stage}.log",
    params:
        base_path=base_model_path(),
        model=model_sections(),
        generate=config["generate"],
    wildcard_constraints:
        stage="base|sft|dpo",
    threads: workflow.cores
    resources:
        gpu=1,
    script:
        "../scripts/generate_answers.py"
