"""What the Slurm profile submits for a training job on one node and on two: the resources the real workflow gives
the job (a dry run with profiles/slurm, no cluster needed), turned into sbatch arguments by
snakemake-executor-plugin-slurm's own functions. A two-node job cannot run on .ci/slurm.sh's one-node cluster."""

import inspect
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO


class Resources(dict):
    """A job's resources as the plugin reads them: `.get(name)` and `.name`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _value(text: str):
    return int(text) if text.isdigit() else text


def planned_training_job(tmp_path, distributed: dict) -> tuple[Resources, int]:
    """train_sft's resources and threads in a dry run of the default recipe with `distributed` and profiles/slurm."""
    with open(REPO / "recipes" / "default.yaml", encoding="utf-8") as handle:
        recipe = yaml.safe_load(handle)
    recipe["distributed"] = distributed
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    (tmp_path / "data").symlink_to(REPO / "data")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--profile", str(REPO / "profiles/slurm"),
         "--config", f"recipe={tmp_path / 'recipe.yaml'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job = result.stdout.split("rule train_sft:", 1)[1].split("\n\n", 1)[0]
    resources = re.search(r"^\s*resources: (.*)$", job, re.MULTILINE).group(1)
    threads = int(re.search(r"^\s*threads: (\d+)$", job, re.MULTILINE).group(1))
    pairs = (item.split("=", 1) for item in resources.split(", "))
    return Resources({name: _value(value) for name, value in pairs if value != "<TBD>"}), threads


def sbatch_arguments(resources: Resources, threads: int) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = type("Job", (), {"resources": resources, "threads": threads})()
    params = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": "rule_train_sft", "account": "",
              "partition": f"-p {resources['slurm_partition']}", "workdir": "/work"}
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    return planned_training_job(tmp_path_factory.mktemp("two"), {"processes": 4, "nodes": 2})


def test_a_two_node_training_job_asks_slurm_for_both_nodes_with_one_task_and_their_gpus_each(two_nodes):
    resources, threads = two_nodes
    sbatch = sbatch_arguments(resources, threads).split()
    assert "--nodes=2" in sbatch and "--ntasks=2" in sbatch, "one task (one launcher) per node"
    assert "--gres=gpu:4" in sbatch, "four GPUs on each node (--gpus would be a total Slurm may split unevenly)"
    assert f"--cpus-per-task={threads}" in sbatch and sbatch[sbatch.index("--mem") + 1] == "16000"
    assert sbatch[sbatch.index("-t") + 1] == "240"
    assert not [argument for argument in sbatch if argument.startswith(("--gpus", "--ntasks-per-gpu"))]


def test_the_jobstep_runs_a_multi_node_job_in_the_batch_step_where_its_srun_can_span_the_nodes(two_nodes):
    """With an `mpi` resource the plugin's jobstep runs the job's command as it is; without, inside `srun -n1`, one
    task on one node, from which the launcher's srun could not reach the other node's resources."""
    from snakemake_executor_plugin_slurm_jobstep import Executor

    resources, _ = two_nodes
    assert resources["mpi"] == "srun"
    source = inspect.getsource(Executor.run_job)
    assert '"mpi" in job.resources.keys()' in source and "call = self.format_job_exec(job)" in source


def test_a_one_node_training_job_still_asks_for_its_gpus_only(tmp_path):
    resources, threads = planned_training_job(tmp_path, {"processes": 2})
    assert "mpi" not in resources and "nodes" not in resources
    sbatch = sbatch_arguments(resources, threads).split()
    assert "--gpus=2" in sbatch and not [argument for argument in sbatch if argument.startswith(("--nodes", "--gres"))]
