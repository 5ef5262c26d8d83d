"""What a run's answers are worth: exact match and chrF with intervals, the paired tests
between stages, runs and variants, the submitted stage's choice, seed replicates, a sweep's leaderboard,
preference accuracy, the end-of-run summary and the report's pages. Reads generation's submissions and
the judge's grades; trains nothing.

Modules: evaluate, significance, paired, choice, compare, replicated, summary, answers, replicates, leaderboard, pages, stage_chart, preference_accuracy."""
