"""What the Slurm profile submits for a training job on one node and on two: the resources the real workflow gives
the job (a dry run of the 13B recipe through profiles/slurm, no cluster needed), turned into sbatch arguments by
snakemake-executor-plugin-slurm's own functions. .ci/slurm.sh's one-node cluster cannot run a two-node job."""

import inspect

import pytest
import yaml

from test_profiles import COMPETITION, PROFILE, dry_run, planned_resources, work  # noqa: F401

# The 13B recipe names a hub model: offline, validation wants it in the (fake) cache, as in test_profiles.
pytestmark = pytest.mark.usefixtures("cached_hub_models")


class Resources(dict):
    """A job's resources as the plugin reads them: `.get(name)` and `.name`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def planned_training_job(work, tmp_path, distributed: str) -> tuple[Resources, int]:
    """train_sft's resources and threads in a dry run of the 13B recipe with `distributed` (YAML lines)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(COMPETITION.read_text() + f"\ndistributed:\n{distributed}\n")
    job = dict(planned_resources(dry_run(work, recipe=recipe))["train_sft"])
    threads = job.pop("threads")
    return Resources({name: value for name, value in job.items() if value != "<TBD>"}), threads


def sbatch_arguments(resources: Resources, threads: int) -> list[str]:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = type("Job", (), {"resources": resources, "threads": threads})()
    params = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": "rule_train_sft", "account": "",
              "partition": f"-p {resources['slurm_partition']}", "workdir": "/work"}
    return (get_submit_command(job, params) + set_gres_string(job)).split()


@pytest.fixture(scope="module")
def two_nodes(work, tmp_path_factory, cached_hub_models):  # noqa: F811
    return planned_training_job(work, tmp_path_factory.mktemp("two"), "  processes: 4\n  nodes: 2")


def test_a_two_node_training_job_asks_slurm_for_both_nodes_with_one_task_and_their_gpus_each(two_nodes):
    resources, threads = two_nodes
    sbatch = sbatch_arguments(resources, threads)
    sized = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]["train_sft"]
    assert "--nodes=2" in sbatch and "--ntasks=2" in sbatch, "one task (one launcher) per node"
    assert "--gres=gpu:4" in sbatch, "four GPUs on each node (--gpus would be a total Slurm may split unevenly)"
    assert f"--cpus-per-task={threads}" in sbatch and sbatch[sbatch.index("--mem") + 1] == str(sized["mem_mb"])
    assert sbatch[sbatch.index("-t") + 1] == str(sized["runtime"])
    assert not [argument for argument in sbatch if argument.startswith(("--gpus", "--ntasks-per-gpu"))]


def test_the_jobstep_runs_a_multi_node_job_in_the_batch_step_where_its_srun_can_span_the_nodes(two_nodes):
    """With an `mpi` resource the plugin's jobstep runs the job's command as it is; without, inside `srun -n1`, one
    task on one node, from which the launcher's srun could not reach the other node's resources."""
    from snakemake_executor_plugin_slurm_jobstep import Executor

    resources, _ = two_nodes
    assert resources["mpi"] == "srun"
    source = inspect.getsource(Executor.run_job)
    assert '"mpi" in job.resources.keys()' in source and "call = self.format_job_exec(job)" in source


def test_a_one_node_training_job_still_asks_for_its_gpus_only(work, tmp_path):  # noqa: F811
    resources, threads = planned_training_job(work, tmp_path, "  processes: 2")
    assert "mpi" not in resources and "nodes" not in resources
    sbatch = sbatch_arguments(resources, threads)
    assert "--gpus=2" in sbatch and not [argument for argument in sbatch if argument.startswith(("--nodes", "--gres"))]
