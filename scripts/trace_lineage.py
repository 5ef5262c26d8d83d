"""Write the submission's lineage and the manifests along it, for the report."""

from tunesmith.jobs.logs import log_to
from tunesmith.lineage import write_lineage

log_to(snakemake.log[0])
write_lineage(
    target=snakemake.input.submission,
    text_path=snakemake.output.lineage,
    manifests_path=snakemake.output.manifests,
)
