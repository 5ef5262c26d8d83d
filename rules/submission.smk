# Every recipe's submission and scores live under its key (results/submissions/<key>/,
# results/evaluated/<key>/), so two recipes' results coexist and switching back rebuilds nothing;
# submission.jsonl and results/eval.{json,md} are copies of the current recipe's, the sweep's
# results/sweep/<variant>/ copies of each variant's. A named stage's submission waits for nothing but
# that stage's answers; `submission.stage: best` waits for the evaluation (tunesmith.evaluation.choice).
rule write_submission:
    input:
        unpack(submission_inputs),
    output:
        submission="results/submissions/{key}/submission.jsonl",
        choice="results/submissions/{key}/choice.json",
    log:
        "logs/write_submission/{key}.log",
    params:
        submission=setting("submission"),
        dpo=setting("dpo"),
        tasks=setting("tasks"),
        stages=submission_stages,
    wildcard_constraints:
        key=KEY,
    script:
        "../scripts/write_submission.py"


rule evaluate_stages:
    input:
        unpack(evaluation_inputs),
    output:
        scores="results/evaluated/{key}/eval.json",
        table="results/evaluated/{key}/eval.md",
    log:
        "logs/evaluate_stages/{key}.log",
    params:
        stages=stages,
        judge=setting("judge"),
        seed=setting("seed"),
        evaluate=setting("evaluate"),
        preference_stages=lambda wildcards: list(WORKFLOW.preference_scores(variant(wildcards))),
    wildcard_constraints:
        key=KEY,
    script:
        "../scripts/evaluate_stages.py"


rule current_submission:
    input:
        submission=lambda wildcards: keyed_result(wildcards, "submit", "submission"),
        choice=lambda wildcards: keyed_result(wildcards, "submit", "choice"),
    output:
        submission="submission.jsonl",
        choice="results/submission_choice.json",
    log:
        "logs/current_submission.log",
    localrule: True
    script:
        "../scripts/copy_current.py"


# Registered in the report only when results/eval.json scored this recipe's answers (tunesmith.evaluation.summary).
EVALUATED = summary.holds_inputs("results/eval.json", WORKFLOW.scored_files())


rule current_evaluation:
    input:
        scores=lambda wildcards: keyed_result(wildcards, "evaluate", "scores"),
        table=lambda wildcards: keyed_result(wildcards, "evaluate", "table"),
    output:
        scores=reported("results/eval.json", EVALUATED, category="Evaluation", caption="../report/eval.rst"),
        table=reported("results/eval.md", EVALUATED, category="Evaluation", caption="../report/eval.rst"),
    log:
        "logs/current_evaluation.log",
    localrule: True
    script:
        "../scripts/copy_current.py"


# A sweep: every variant's submission and scores, then one leaderboard of them all.
use rule current_submission as variant_submission with:
    output:
        submission="results/sweep/{variant}/submission.jsonl",
        choice="results/sweep/{variant}/submission_choice.json",
    log:
        "logs/sweep/{variant}/current_submission.log",


use rule current_evaluation as variant_evaluation with:
    output:
        scores="results/sweep/{variant}/eval.json",
        table="results/sweep/{variant}/eval.md",
    log:
        "logs/sweep/{variant}/current_evaluation.log",


# Seed replicates (`repeats`): each stage's spread over the keyed evaluations of the recipe's seeds.
# Registered only when results/replicates.json is this recipe's (made from its seeds' evaluations).
REPLICATED = bool(WORKFLOW.replicates) and summary.holds_inputs(
    "results/replicates.json", list(WORKFLOW.replicate_evaluations().values())
)


rule summarise_replicates:
    input:
        scores=list(WORKFLOW.replicate_evaluations().values()),
    output:
        scores=reported(
            "results/replicates.json", REPLICATED, category="Evaluation", caption="../report/replicates.rst"
        ),
        table=reported("results/replicates.md", REPLICATED, category="Evaluation", caption="../report/replicates.rst"),
    log:
        "logs/summarise_replicates.log",
    params:
        seeds=list(WORKFLOW.replicate_evaluations()),
    script:
        "../scripts/summarise_replicates.py"


rule rank_variants:
    input:
        scores=expand(rules.variant_evaluation.output.scores, variant=WORKFLOW.variants),
        submissions=expand(rules.variant_submission.output.submission, variant=WORKFLOW.variants),
        choices=expand(rules.variant_submission.output.choice, variant=WORKFLOW.variants),
        baseline=rules.current_evaluation.output.scores,
        baseline_choice=rules.current_submission.output.choice,
        # `repeats`: the recipe under its further seeds, whose spread each variant is checked against.
        baseline_seeds=list(WORKFLOW.replicate_evaluations().values()) if WORKFLOW.replicates else [],
    output:
        table=report("results/sweep/leaderboard.md", category="Sweep", caption="../report/leaderboard.rst"),
        scores="results/sweep/leaderboard.json",
    log:
        "logs/rank_variants.log",
    params:
        overrides=WORKFLOW.variant_overrides(),
        seeds=list(WORKFLOW.replicate_evaluations()) if WORKFLOW.replicates else [],
    script:
        "../scripts/rank_variants.py"


# For the report: the submission's chain of jobs and every manifest along it.
rule trace_lineage:
    input:
        submission=rules.current_submission.output.submission,
    output:
        lineage=reported("results/lineage.txt", category="Manifests", caption="../report/lineage.rst"),
        manifests=reported("results/manifests.json", category="Manifests", caption="../report/manifests.rst"),
    log:
        "logs/trace_lineage.log",
    script:
        "../scripts/trace_lineage.py"


# For the user: what the run's summary says, as the report's first page (report/workflow.rst reads
# summary.rst) and every task's answers beside the reference. Registered once it is this recipe's.
SUMMARISED = summary.holds_inputs("results/report/summary.json", summary.summary_inputs(run_files()))


rule summarise_run:
    input:
        unpack(summarise_inputs),
    output:
        summary="results/report/summary.json",
        start_page="results/report/summary.rst",
        answers=reported(
            "results/report/answers.html", SUMMARISED, category="Evaluation", caption="../report/answers.rst"
        ),
        # The data cards and the evaluation as pages to read inside the report (the raw files stay downloads).
        cards=reported(
            directory("results/report/cards"),
            SUMMARISED,
            patterns=["{role}.html"],
            category="Data cards",
            caption="../report/card_page.rst",
        ),
        evaluation=reported(
            "results/report/evaluation.html", SUMMARISED, category="Evaluation", caption="../report/evaluation.rst"
        ),
    log:
        "logs/summarise_run.log",
    params:
        files=run_files(),
        submitted=WORKFLOW.submitted(),
        recipe=WORKFLOW.recipe_facts(),
    script:
        "../scripts/summarise_run.py"
