"""Read one recipe source (sft or preference) into the Parquet file of raw records curation reads."""

from tunesmith.data.ingest import ingest_source
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    ingest_source(
        source=snakemake.params.sources[0],
        out_path=snakemake.output.ingested,
        max_line_bytes=snakemake.params.curate["max_line_bytes"],
    )
