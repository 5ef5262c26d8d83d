"""The current recipe's (or sweep variant's) keyed result at its fixed path: submission.jsonl,
results/eval.json and eval.md are copies, so every recipe's own results stay under its key."""

from tunesmith.jobs.atomic import copy_files
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    copy_files(sources=list(snakemake.input), targets=list(snakemake.output))
