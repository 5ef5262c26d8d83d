"""The launcher: accelerate options per strategy, refusals before starting.
The package's import graph (no cycle; launching knows nothing of the train functions): tests/test_layers.py."""

import os
import subprocess
import sys

import pytest


def test_launch_options_per_strategy(monkeypatch):
    import importlib.util

    import torch

    from tunesmith.training.launcher import DistributedError, check_strategy, launch_arguments

    section = {"processes": 4, "nodes": 1, "strategy": "ddp", "zero_stage": 2}
    ddp = launch_arguments(section, 29123)
    assert ddp[0] == "--multi_gpu" and ddp[ddp.index("--num_processes") + 1] == "4"
    assert ddp[ddp.index("--main_process_port") + 1] == "29123"
    assert ddp[ddp.index("--num_machines") + 1] == "1" and "--machine_rank" not in ddp
    nodes = launch_arguments(section | {"nodes": 2}, 29123, machine_rank=1, main_address="10.0.0.7")
    # accelerate's num_processes counts every node's processes; torchrun gets num_processes / num_machines per node.
    assert nodes[nodes.index("--num_processes") + 1] == "8" and nodes[nodes.index("--num_machines") + 1] == "2"
    assert nodes[nodes.index("--machine_rank") + 1] == "1" and nodes[nodes.index("--main_process_ip") + 1] == "10.0.0.7"
    fsdp = launch_arguments(section | {"strategy": "fsdp"}, 29123)
    assert "--use_fsdp" in fsdp and fsdp[fsdp.index("--fsdp_version") + 1] == "2"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "deepspeed" else real_find_spec(name, *args))
    with pytest.raises(DistributedError, match="distributed.strategy is 'deepspeed'.*pip install deepspeed"):
        launch_arguments(section | {"strategy": "deepspeed"}, 29123)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    deepspeed = launch_arguments(section | {"strategy": "deepspeed", "zero_stage": 3}, 29123)
    assert deepspeed[deepspeed.index("--zero_stage") + 1] == "3"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for strategy in ("fsdp", "deepspeed"):
        with pytest.raises(DistributedError, match=f"distributed.strategy is '{strategy}'.*CUDA"):
            check_strategy(section | {"strategy": strategy}, {"quantization": "none"})
    check_strategy(section, {"quantization": "nf4"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(DistributedError, match="base_model.quantization"):
        check_strategy(section | {"strategy": "fsdp"}, {"quantization": "nf4"})


def test_one_process_runs_the_function_here():
    from tunesmith.training.launcher import run_distributed

    assert run_distributed(lambda **arguments: arguments, None, a=1) == {"a": 1}
    assert run_distributed(dict, {"processes": 1, "nodes": 1, "strategy": "ddp", "zero_stage": 2}, b=2) == {"b": 2}


def test_only_importable_functions_are_launched():
    from tunesmith.training.launcher import run_distributed

    with pytest.raises(ValueError, match="not importable"):
        run_distributed(lambda: None, {"processes": 2, "nodes": 1, "strategy": "ddp", "zero_stage": 2})


def test_several_nodes_are_refused_outside_a_slurm_allocation(monkeypatch, tmp_path):
    from tunesmith.training.launcher import DistributedError, run_distributed

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(DistributedError, match="distributed.nodes is 2: .*inside a Slurm allocation of 2 nodes"):
        run_distributed(dict, {"processes": 1, "nodes": 2, "strategy": "ddp", "zero_stage": 2},
                        out_dir=str(tmp_path / "sft"))
    assert not list(tmp_path.glob("**/.tunesmith-launch-*")), "the spec folder is removed"


def test_srun_starts_one_launcher_per_node(monkeypatch, tmp_path):
    from tunesmith.training.launcher import srun_command

    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    command = srun_command({"processes": 4, "nodes": 3, "strategy": "ddp", "zero_stage": 2}, "spec.json", threads=8)
    assert command[:7] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--cpus-per-task=8",
                           "--kill-on-bad-exit=1", "--overlap"]
    assert command[-4:] == ["-m", "tunesmith.training.launcher", "--node", "spec.json"]


def test_node_zero_must_be_the_node_the_job_runs_on(monkeypatch, tmp_path):
    import json

    from tunesmith.training.launcher import DistributedError, node_main

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"distributed": {"processes": 1, "nodes": 2, "strategy": "ddp", "zero_stage": 2},
                                "port": 29123, "errors": str(tmp_path)}))
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("SLURM_LAUNCH_NODE_IPADDR", "192.0.2.1")  # TEST-NET-1: never an address of this host
    with pytest.raises(DistributedError, match="not the node the job runs on"):
        node_main(str(spec))
    assert "192.0.2.1" in (tmp_path / "error.node0").read_text()


def test_training_jobs_ask_for_gpus_on_one_node_and_for_nodes_and_tasks_above():
    from tunesmith.training.launcher import job_resources

    assert job_resources({"processes": 2, "nodes": 1}) == {"gpu": 2}
    assert job_resources({"processes": 4, "nodes": 2}) == {"nodes": 2, "tasks": 2, "tasks_per_gpu": 0,
                                                           "gres": "gpu:4", "mpi": "srun"}


@pytest.mark.parametrize("module", ["training.launcher", "training.distributed", "training.train", "model.model", "model.adapters", "generation.generate"])
def test_each_module_imports_alone(module):
    result = subprocess.run([sys.executable, "-c", f"import tunesmith.{module}"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
