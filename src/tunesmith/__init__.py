"""tunesmith: a declarative build system for fine-tuning language models for leaderboard tasks.

Subpackages by job, imports pointing one way: a subpackage uses its own modules and the layers
below it in the diagram, never one above (tests/test_layers.py checks it with import-linter's
`lint-imports`, configured in pyproject.toml [tool.importlinter]). The order is today's imports, not a
wish: `jobs` (atomic writes, logs, progress, manifests) is used by every stage and uses nothing; the
recipe (`config`) is read by every stage's code; data and models are built from the recipe; generation
uses a model and the task files; the judge grades generated answers (its local backend generates);
training sits above the judge and generation so that preference pairs made from the policy's own answers
may use both; evaluation scores what those produced; the hub packages and publishes the results and is
how a named model arrives (`fetch`); the command line, `tunesmith explain`, the stage registry and
lineage (which reads the task files and on-policy pairs along a chain of manifests) sit on top.
The submission file belongs to generation (the judge and evaluation read it); the task and reference
files to data (curation decontaminates against them, generation answers them). The few imports that
still point up are listed by name in pyproject.toml's contract (`ignore_imports`), each the work of
issue 21: the validator calling each job's own early checks, the manifest's template hash.

tunesmith/      (imports point down: a layer uses only the layers below it)
  (top)        cli explain workflow lineage
  hub/         fetch hub export
  evaluation/  evaluate significance paired choice compare replicated summary answers replicates
               leaderboard pages stage_chart preference_accuracy
  training/    train train_data preference checkpoints curves tracking launcher distributed
               on_policy
  judge/       judge judge_backends judge_cache judge_stats rubric
  generation/  generate guards submission
  model/       model template adapters base_model
  data/        sources records ingest_csv ingest styles normalize measures curate curate_checks curate_pipeline
               ngrams near_dup card export_data unpaired tasks
  config/      recipe_file schema recipe plan trl_fields
  jobs/        atomic logs progress reads manifest
"""

__version__ = "0.1.0"
