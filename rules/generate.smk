rule generate_answers:
    input:
        base_model_input,
        adapters=adapter_chain,
        tasks=task_file,
    output:
        generations="results/generations/{key}/{stage}.jsonl",
    log:
        "logs/generate_answers/{key}/{stage}.log",
    params:
        base_path=base_model_path,
        base_model=setting("base_model"),
        template=setting("template"),
        seed=setting("seed"),
        generate=setting("generate"),
        curate=setting("curate"),
    wildcard_constraints:
        key=KEY,
        stage="base|sft|dpo",
    threads: workflow.cores
    resources:
        gpu=1,
    script:
        "../scripts/generate_answers.py"
