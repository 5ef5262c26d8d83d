# The LLM judge (issue 10): one job per scored stage grades its answers; `reference` grades the
# answers of judge.reference_grades, for the agreement table. Grades are cached outside the keyed
# artifacts (JUDGE_CACHE), so a rerun asks the judge only about answers it has not graded.
JUDGE_CACHE = "results/judge_cache"


rule judge_answers:
    input:
        answers=judge_answers_input,
        tasks=task_file,
        references=references,
        template=judge_template,
        judge_model=judge_model_record,
    output:
        grades="results/judged/{key}/{stage}.jsonl",
    log:
        "logs/judge_answers/{key}/{stage}.log",
    params:
        judge=judge_settings,
        seed=setting("seed"),
        answers_kind=lambda wildcards: "reference_grades" if wildcards.stage == "reference" else "generations",
        cache=JUDGE_CACHE,
    wildcard_constraints:
        key=KEY,
        stage="base|sft|dpo|reference",
    # A local judge model holds the GPU and the cores; an endpoint needs neither.
    threads: lambda wildcards: 1 if judge_is_remote(wildcards) else workflow.cores
    resources:
        gpu=lambda wildcards: 0 if judge_is_remote(wildcards) else 1,
    script:
        "../scripts/judge_answers.py"
