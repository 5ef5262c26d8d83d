# The submission waits for nothing but its own stage's answers: scores are built beside it.
rule write_submission:
    input:
        unpack(submission_inputs),
    output:
        submission="submission.jsonl",
    log:
        "logs/write_submission.log",
    script:
        "../scripts/write_submission.py"


# Registered in the report only when results/eval.json scored this recipe's answers (tunesmith.summary).
EVALUATED = summary.holds_inputs("results/eval.json", scored_files())


rule evaluate_stages:
    input:
        unpack(evaluation_inputs),
    output:
        scores=reported("results/eval.json", EVALUATED, category="Evaluation", caption="../report/eval.rst"),
        table=reported("results/eval.md", EVALUATED, category="Evaluation", caption="../report/eval.rst"),
    log:
        "logs/evaluate_stages.log",
    params:
        stages=stages,
        judge=evaluation_setting("judge"),
        seed=evaluation_setting("seed"),
        preference_stages=lambda wildcards: list(preference_scores(variant_name(wildcards))),
    script:
        "../scripts/evaluate_stages.py"


# A sweep: every variant's submission and scores, then one leaderboard of them all.
use rule write_submission as write_variant_submission with:
    output:
        submission="results/sweep/{variant}/submission.jsonl",
    log:
        "logs/sweep/{variant}/write_submission.log",


use rule evaluate_stages as evaluate_variant with:
    output:
        scores="results/sweep/{variant}/eval.json",
        table="results/sweep/{variant}/eval.md",
    log:
        "logs/sweep/{variant}/evaluate_stages.log",


# Seed replicates (`repeats`): the recipe's scores under each further seed, then each stage's spread.
use rule evaluate_stages as evaluate_replicate with:
    output:
        scores="results/replicates/{variant}/eval.json",
        table="results/replicates/{variant}/eval.md",
    log:
        "logs/replicates/{variant}/evaluate_stages.log",


rule summarise_replicates:
    input:
        scores=list(replicate_evaluations().values()),
    output:
        scores=reported("results/replicates.json", category="Evaluation", caption="../report/replicates.rst"),
        table=reported("results/replicates.md", category="Evaluation", caption="../report/replicates.rst"),
    log:
        "logs/summarise_replicates.log",
    params:
        seeds=list(replicate_evaluations()),
    script:
        "../scripts/summarise_replicates.py"


rule rank_variants:
    input:
        scores=expand(rules.evaluate_variant.output.scores, variant=VARIANTS),
        submissions=expand(rules.write_variant_submission.output.submission, variant=VARIANTS),
    output:
        table=report("results/sweep/leaderboard.md", category="Sweep", caption="../report/leaderboard.rst"),
        scores="results/sweep/leaderboard.json",
    log:
        "logs/rank_variants.log",
    params:
        overrides=variant_overrides(),
        submitted={name: plan.submitted_stage(recipe) for name, recipe in VARIANTS.items()},
    script:
        "../scripts/rank_variants.py"


# For the report: the submission's chain of jobs and every manifest along it.
rule trace_lineage:
    input:
        submission=rules.write_submission.output.submission,
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
        submitted=submitted(),
        recipe=recipe_facts(),
    script:
        "../scripts/summarise_run.py"
