"""Upload a staged folder (artifact and card) to its hub repository as one commit; write the receipt."""

from tunesmith.hub.hub import push
from tunesmith.jobs.logs import log_to

log_to(snakemake.log[0])
kind = snakemake.wildcards.get("kind", "dataset")
push(
    folder=snakemake.input.folder,
    repo_id=snakemake.params.repo,
    repo_type="dataset" if kind == "dataset" else "model",
    private=snakemake.params.private,
    what=f"{kind} {snakemake.wildcards.get('stage') or snakemake.wildcards.get('role')}",
    receipt_path=snakemake.output.receipt,
)
