"""Running a training function on several processes: `run_distributed(function, distributed, **arguments)`.

With the recipe's `distributed.processes` and `nodes` at 1 the function runs here. Otherwise the arguments
go to a JSON spec and `python -m accelerate.commands.launch ... -m tunesmith.training.launcher SPEC` starts
`processes` processes per node; each imports the function by its module and name and calls it with the
same arguments. Rank 0 writes the function's result, which the caller gets back: the outputs are those of
a single-process run. The processes' output (log lines tagged with their rank) goes to the caller's
stderr, which is the job's log. The training functions know nothing of this: they train, and ask
`tunesmith.training.distributed` for their rank.

On several nodes (`distributed.nodes`, inside a Slurm allocation of that many nodes) one process group
spans them: `srun` starts one `python -m tunesmith.training.launcher --node SPEC` per node, which runs `accelerate
launch` with that node's `--machine_rank` (SLURM_NODEID) and the address of the node this function was
called on (SLURM_LAUNCH_NODE_IPADDR), where torchrun's static rendezvous listens. The spec lies beside the
output, on the file system every node shares. `job_resources` is what the training rules ask Slurm for.

The processes are always started by accelerate's torchrun launcher. Its `--cpu` launcher starts a
single process unless mpirun is set up, so on a machine without CUDA the same launcher is used and
each process trains with `use_cpu`, which makes the process group use gloo.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

from tunesmith.jobs.atomic import write_json
from tunesmith.training.distributed import is_main_process, rank, world_size

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """A multi-process run that cannot start or did not finish; the message names the recipe key."""


def _free_port() -> int:
    # Not torchrun's fixed 29500: two jobs (or two tests) launching at once would collide.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_arguments(section: dict, port: int, machine_rank: int = 0, main_address: str = "127.0.0.1") -> list[str]:
    """`accelerate launch` options for the recipe's `distributed` section (on one of its nodes)."""
    nodes = section["nodes"]
    common = ["--num_processes", str(section["processes"] * nodes), "--num_machines", str(nodes),
              "--main_process_port", str(port),
              # Precision comes from the training arguments (bf16 on a GPU that has it), not from here.
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    if nodes > 1:
        common += ["--machine_rank", str(machine_rank), "--main_process_ip", main_address]
    strategy = section["strategy"]
    if strategy == "ddp":
        return ["--multi_gpu", *common]
    if strategy == "fsdp":
        # FSDP2 shards each decoder layer; a full state dict on rank 0 is what save_pretrained writes.
        return ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_cpu_ram_efficient_loading", "false", *common]
    if importlib.util.find_spec("deepspeed") is None:
        raise DistributedError(
            "distributed.strategy is 'deepspeed', but the deepspeed package is not installed; "
            "install it (pip install deepspeed) or set distributed.strategy: ddp (or fsdp)"
        )
    return ["--use_deepspeed", "--zero_stage", str(section["zero_stage"]), *common]


def check_strategy(section: dict, base_section: dict) -> None:
    """Combinations refused before anything starts."""
    import torch

    if section["strategy"] != "ddp" and not torch.cuda.is_available():
        # accelerate turns FSDP (and ZeRO) on only for GPU process groups: on CPU the run would quietly
        # be plain data parallel.
        raise DistributedError(
            f"distributed.strategy is '{section['strategy']}', which needs CUDA GPUs, and none is present; "
            "set distributed.strategy: ddp to train on several CPU processes"
        )
    problem = sharding_problem(section, base_section)
    if problem:
        raise DistributedError(problem)


def sharding_problem(section: dict, base_section: dict) -> str | None:
    """FSDP with a quantised base, refused by the recipe's validation and again by the launcher (which also
    runs functions given sections directly)."""
    if section["strategy"] == "fsdp" and base_section["quantization"] != "none":
        return (f"distributed.strategy: fsdp cannot shard a quantised base (base_model.quantization: "
                f"{base_section['quantization']}, bitsandbytes); use distributed.strategy: ddp (each process holds "
                "the 4-bit base) or base_model.quantization: none")
    return None


def _name_of(function) -> str:
    name = f"{function.__module__}:{function.__qualname__}"
    try:
        found = _resolve(name)
    except (ImportError, AttributeError):
        found = None
    if found is not function:
        raise ValueError(f"{name} cannot be launched on several processes: it is not importable by that name")
    return name


def _resolve(name: str):
    module, _, qualname = name.partition(":")
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def job_resources(section: dict) -> dict:
    """The Snakemake resources of a training job (a rule's `resources:`; a missing one is None). One node: a GPU
    per process. Several: what snakemake-executor-plugin-slurm turns into `sbatch --nodes=N --ntasks=N
    --gres=gpu:P` (one task per node, P GPUs on each); `mpi` makes its jobstep run the job's command in the
    batch step instead of inside `srun -n1`, so that the launcher's own srun can span every node, and
    tasks_per_gpu 0 keeps the plugin from also asking for `--ntasks-per-gpu`."""
    nodes, per_node = section["nodes"], section["processes"]
    if nodes == 1:
        return {"gpu": per_node}
    return {"nodes": nodes, "tasks": nodes, "tasks_per_gpu": 0, "gres": f"gpu:{per_node}", "mpi": "srun"}


def srun_command(section: dict, spec: str, threads: int) -> list[str]:
    """One `python -m tunesmith.training.launcher --node SPEC` per node of the job's allocation. Refused outside one."""
    nodes = section["nodes"]
    if not os.environ.get("SLURM_JOB_ID") or shutil.which("srun") is None:
        raise DistributedError(
            f"distributed.nodes is {nodes}: training across nodes runs inside a Slurm allocation of {nodes} nodes "
            "(snakemake --profile profiles/slurm), and this job is not in one (no SLURM_JOB_ID or no srun); "
            "set distributed.nodes: 1 to train on this machine"
        )
    import torch

    gpus = [f"--gpus-per-node={section['processes']}"] if torch.cuda.is_available() else []
    # --overlap: the job's own step (where this runs) keeps its resources, and the per-node launchers share them.
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={threads}",
            "--kill-on-bad-exit=1", "--overlap", *gpus, sys.executable, "-m", "tunesmith.training.launcher", "--node", spec]


def _launch_folder(arguments: dict, nodes: int):
    """Where the spec and result live: a private temporary folder, or beside the output for several nodes."""
    if nodes == 1 or "out_dir" not in arguments:
        return tempfile.TemporaryDirectory(prefix="tunesmith-launch-")
    shared = os.path.dirname(os.path.abspath(arguments["out_dir"]))
    os.makedirs(shared, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".tunesmith-launch-", dir=shared)


def run_distributed(function, distributed: dict | None, **arguments):
    """`function(**arguments)`, here when `distributed` asks for one process on one node (or is None), else on
    `processes` processes on each of `nodes` nodes, returning rank 0's result. `arguments` must be JSON data; a
    `threads` argument is shared out among a node's processes, and `base_section` is checked against the
    strategy. Raises DistributedError with the processes' last output when any of them fails."""
    if not distributed or distributed["processes"] * distributed["nodes"] == 1:
        return function(**arguments)
    per_node, nodes = distributed["processes"], distributed["nodes"]
    count = per_node * nodes
    name = _name_of(function)
    check_strategy(distributed, arguments.get("base_section") or {"quantization": "none"})
    job_threads = arguments.get("threads", 1)
    if "threads" in arguments:  # the job's threads, shared out among its processes
        arguments = {**arguments, "threads": max(1, arguments["threads"] // per_node)}
    with _launch_folder(arguments, nodes) as folder:
        spec, result = os.path.join(folder, "spec.json"), os.path.join(folder, "result.json")
        port = _free_port()
        write_json(spec, {"function": name, "arguments": arguments, "result": result, "errors": folder,
                          "distributed": distributed, "port": port})
        if nodes == 1:
            command = [sys.executable, "-m", "accelerate.commands.launch", *launch_arguments(distributed, port),
                       "-m", "tunesmith.training.launcher", spec]
        else:
            command = srun_command(distributed, spec, job_threads)
        environment = {**os.environ, "OMP_NUM_THREADS": str(arguments.get("threads", 1))}
        log.info("%s on %d processes (%d per node on %d node%s, %s): %s", name, count, per_node, nodes,
                 "s" if nodes > 1 else "", distributed["strategy"], " ".join(command))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=environment)
        tail: deque[str] = deque(maxlen=30)
        for line in process.stdout:
            sys.stderr.write(line)
            tail.append(line)
        if process.wait() != 0 or not os.path.isfile(result):
            errors = [path.read_text(encoding="utf-8") for path in sorted(Path(folder).glob("error.*"))]
            raise DistributedError(
                f"{name} on {count} processes (distributed.processes x distributed.nodes) failed with exit status "
                f"{process.returncode}:\n" + "\n".join(errors) + "\nthe processes' last output:\n" + "".join(tail)
            )
        with open(result, encoding="utf-8") as handle:
            return json.load(handle)


def _is_local_address(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def node_main(spec_path: str) -> None:
    """One node's launcher (`python -m tunesmith.training.launcher --node SPEC`, one per node by srun): `accelerate launch`
    of this node's processes, with its machine rank. Rank 0's node hosts the rendezvous at the address of the
    node that called run_distributed; the port was free there."""
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    machine_rank = int(os.environ["SLURM_NODEID"])
    address = os.environ.get("SLURM_LAUNCH_NODE_IPADDR") or socket.gethostbyname(socket.gethostname())
    if machine_rank == 0 and not _is_local_address(address):
        message = (f"node 0 of this step ({socket.gethostname()}) is not the node the job runs on ({address}), where "
                   "the rendezvous was set up; distributed.nodes needs the job's own node first in its allocation")
        Path(spec["errors"], "error.node0").write_text(message, encoding="utf-8")
        raise DistributedError(message)
    options = launch_arguments(spec["distributed"], spec["port"], machine_rank=machine_rank, main_address=address)
    command = [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "tunesmith.training.launcher", spec_path]
    os.execv(sys.executable, command)


def main(argv: list[str] | None = None) -> None:
    """Entry point of each launched process: `python -m tunesmith.training.launcher SPEC` (or `--node SPEC`, see
    node_main)."""
    # torchrun stops the other processes with SIGTERM when one fails; turn it into an exception so
    # the atomic output's temporary folder is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, force=True,
        format=f"%(asctime)s [rank {rank()}/{world_size()}] %(name)s %(levelname)s %(message)s",
    )
    arguments = argv if argv is not None else sys.argv[1:]
    if arguments[:1] == ["--node"]:
        node_main(arguments[1])
        return
    (spec_path,) = arguments
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    try:
        result = _resolve(spec["function"])(**spec["arguments"])
    except BaseException as error:
        # The launcher's own report buries the cause under its traceback; the caller shows this first.
        with open(os.path.join(spec["errors"], f"error.rank{rank()}"), "w", encoding="utf-8") as handle:
            handle.write(f"rank {rank()}: {type(error).__name__}: {error}")
        raise
    if is_main_process():
        write_json(spec["result"], result)


if __name__ == "__main__":
    main()
