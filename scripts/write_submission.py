"""Write submission.jsonl from the submitted stage's answers; it is validated before it lands."""

from tunesmith.logs import log_to
from tunesmith.manifest import recorded
from tunesmith.submission import write_submission

log_to(snakemake.log[0])
with recorded(snakemake, "submission"):
    write_submission(
        generations_path=snakemake.input.generations[0],
        tasks_path=snakemake.input.tasks,
        out_path=snakemake.output.submission,
        allow_empty=snakemake.params.submission["allow_empty"],
    )
