rule write_submission:
    input:
        generations=expand(rules.generate_answers.output.generations, stage=submitted_stage()),
        tasks=config["tasks"]["path"],
        # Scored first, so building the submission also shows what each stage bought.
        scores=evaluation_targets(),
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
        scores=EVAL_SCORES,
        table="results/eval.md",
    log:
        "logs/evaluate_stages.log",
    params:
        stages=stages(),
    script:
        "../scripts/evaluate_stages.py"
