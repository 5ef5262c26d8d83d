rule write_submission:
    input:
        generations=expand(rules.generate_answers.output.generations, stage=submitted_stage()),
        tasks=config["tasks"]["path"],
    output:
        submission="submission.jsonl",
    log:
        "logs/write_submission.log",
    script:
        "../scripts/write_submission.py"


rule evaluate_stages:
    input:
        generations=expand(rules.generate_answers.output.generations, stage=stages()),
        references=config["tasks"]["references"] or [],
    output:
        scores="results/eval.json",
        table="results/eval.md",
    log:
        "logs/evaluate_stages.log",
    params:
        stages=stages(),
    script:
        "../scripts/evaluate_stages.py"
