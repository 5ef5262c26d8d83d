"""Training on several processes: a train function re-launches itself under `accelerate launch`.

When the recipe's `distributed.processes` is above 1, `train_cpt`, `train_sft` and `train_dpo` do not
train in the calling process. `launch` writes the call's arguments to a JSON spec and runs
`python -m accelerate.commands.launch ... -m tunesmith.distributed SPEC`; every process it starts
calls the same function with the same arguments. Rank 0 alone writes the adapter (atomically, as a
single process does) and the function's result, which the caller gets back: the outputs are those of
a single-process run. The processes' output (log lines tagged with their rank) goes to the caller's stderr,
which is the job's log.

The processes are always started by accelerate's torchrun launcher. Its `--cpu` launcher starts a
single process unless mpirun is set up, so on a machine without CUDA the same launcher is used and
each process trains with `use_cpu`, which makes the process group use gloo.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from tunesmith.atomic import atomic_path, write_json

log = logging.getLogger(__name__)

WORKER = "TUNESMITH_DISTRIBUTED_WORKER"  # set in the launched processes, so they train instead of launching
LAUNCHABLE = ("train_cpt", "train_sft", "train_dpo")


class DistributedError(RuntimeError):
    """A multi-process run that cannot start or did not finish; the message names the recipe key."""


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def should_launch(section: dict | None) -> bool:
    """True in the caller of a run the recipe wants on several processes; False inside those processes."""
    return bool(section) and section["processes"] > 1 and os.environ.get(WORKER) != "1"


def processes(section: dict | None) -> int:
    return section["processes"] if section else 1


def _free_port() -> int:
    # Not torchrun's fixed 29500: two jobs (or two tests) launching at once would collide.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_arguments(section: dict, port: int) -> list[str]:
    """`accelerate launch` options for the recipe's `distributed` section."""
    count = section["processes"]
    common = ["--num_processes", str(count), "--num_machines", "1", "--main_process_port", str(port),
              # Precision comes from the training arguments (bf16 on a GPU that has it), not from here.
              "--mixed_precision", "no", "--dynamo_backend", "no"]
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
    if section["strategy"] == "fsdp" and base_section["quantization"] != "none":
        raise DistributedError(
            f"distributed.strategy is 'fsdp' with base_model.quantization '{base_section['quantization']}': "
            "sharding a bitsandbytes-quantised base is not supported here; use distributed.strategy: ddp "
            "(each process holds the 4-bit base) or base_model.quantization: none"
        )


def launch(function: str, arguments: dict, section: dict) -> dict:
    """Run `tunesmith.train.<function>(**arguments)` on `section['processes']` processes and return
    rank 0's result. Raises DistributedError with the processes' last output when any of them fails."""
    if function not in LAUNCHABLE:
        raise ValueError(f"{function} cannot be launched on several processes")
    count = section["processes"]
    options = launch_arguments(section, _free_port())
    check_strategy(section, arguments["base_section"])
    # The job's threads are shared out among its processes.
    arguments = {**arguments, "threads": max(1, arguments.get("threads", 1) // count)}
    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as folder:
        spec, result = os.path.join(folder, "spec.json"), os.path.join(folder, "result.json")
        write_json(spec, {"function": function, "arguments": arguments, "result": result, "errors": folder})
        command = [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "tunesmith.distributed", spec]
        environment = {**os.environ, WORKER: "1", "OMP_NUM_THREADS": str(arguments["threads"])}
        log.info("%s on %d processes (%s): %s", function, count, section["strategy"], " ".join(command))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=environment)
        tail: deque[str] = deque(maxlen=30)
        for line in process.stdout:
            sys.stderr.write(line)
            tail.append(line)
        if process.wait() != 0 or not os.path.isfile(result):
            errors = [path.read_text(encoding="utf-8") for path in sorted(Path(folder).glob("error.rank*"))]
            raise DistributedError(
                f"{function} on {count} processes (distributed.processes) failed with exit status "
                f"{process.returncode}:\n" + "\n".join(errors) + "\nthe processes' last output:\n" + "".join(tail)
            )
        with open(result, encoding="utf-8") as handle:
            return json.load(handle)


@contextmanager
def main_process_first():
    """Rank 0 prepares (and caches) the data before the others read it; nothing on one process."""
    if world_size() == 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


@contextmanager
def output_folder(out_dir: str):
    """Where a run writes its output: on rank 0 the atomic temporary folder, moved onto `out_dir` on
    success; on other ranks a throwaway folder (they must still call save_model, which gathers
    sharded weights, but write nothing that stays)."""
    if is_main_process():
        with atomic_path(out_dir, directory=True) as tmp:
            yield str(tmp)
    else:
        with tempfile.TemporaryDirectory(prefix=f"tunesmith-rank{rank()}-") as tmp:
            yield tmp


def main(argv: list[str] | None = None) -> None:
    """Entry point of each launched process: `python -m tunesmith.distributed SPEC`."""
    # torchrun stops the other processes with SIGTERM when one fails; turn it into an exception so
    # the atomic output's temporary folder is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, force=True,
        format=f"%(asctime)s [rank {rank()}/{world_size()}] %(name)s %(levelname)s %(message)s",
    )
    (spec_path,) = argv if argv is not None else sys.argv[1:]
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    if spec["function"] not in LAUNCHABLE:
        raise SystemExit(f"{spec['function']} cannot be launched on several processes")
    from tunesmith import train

    try:
        result = getattr(train, spec["function"])(**spec["arguments"])
    except BaseException as error:
        # The launcher's own report buries the cause under its traceback; the caller shows this first.
        with open(os.path.join(spec["errors"], f"error.rank{rank()}"), "w", encoding="utf-8") as handle:
            handle.write(f"rank {rank()}: {type(error).__name__}: {error}")
        raise
    if is_main_process():
        write_json(spec["result"], result)


if __name__ == "__main__":
    main()
