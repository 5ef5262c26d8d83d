"""Running a training function on several processes: `run_distributed(function, distributed, **arguments)`.

With the recipe's `distributed.processes` at 1 the function runs here. Above 1, the arguments go to a
JSON spec and `python -m accelerate.commands.launch ... -m tunesmith.launcher SPEC` starts that many
processes; each imports the function by its module and name and calls it with the same arguments.
Rank 0 writes the function's result, which the caller gets back: the outputs are those of a
single-process run. The processes' output (log lines tagged with their rank) goes to the caller's
stderr, which is the job's log. The training functions know nothing of this: they train, and ask
`tunesmith.distributed` for their rank.

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
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

from tunesmith.atomic import write_json
from tunesmith.distributed import is_main_process, rank, world_size

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """A multi-process run that cannot start or did not finish; the message names the recipe key."""


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


def run_distributed(function, distributed: dict | None, **arguments):
    """`function(**arguments)`, here when `distributed` asks for one process (or is None), else on
    `distributed['processes']` processes, returning rank 0's result. `arguments` must be JSON data; a
    `threads` argument is shared out among the processes, and `base_section` is checked against the
    strategy. Raises DistributedError with the processes' last output when any of them fails."""
    if not distributed or distributed["processes"] == 1:
        return function(**arguments)
    count = distributed["processes"]
    name = _name_of(function)
    options = launch_arguments(distributed, _free_port())
    check_strategy(distributed, arguments.get("base_section") or {"quantization": "none"})
    if "threads" in arguments:  # the job's threads, shared out among its processes
        arguments = {**arguments, "threads": max(1, arguments["threads"] // count)}
    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as folder:
        spec, result = os.path.join(folder, "spec.json"), os.path.join(folder, "result.json")
        write_json(spec, {"function": name, "arguments": arguments, "result": result, "errors": folder})
        command = [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "tunesmith.launcher", spec]
        environment = {**os.environ, "OMP_NUM_THREADS": str(arguments.get("threads", 1))}
        log.info("%s on %d processes (%s): %s", name, count, distributed["strategy"], " ".join(command))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=environment)
        tail: deque[str] = deque(maxlen=30)
        for line in process.stdout:
            sys.stderr.write(line)
            tail.append(line)
        if process.wait() != 0 or not os.path.isfile(result):
            errors = [path.read_text(encoding="utf-8") for path in sorted(Path(folder).glob("error.rank*"))]
            raise DistributedError(
                f"{name} on {count} processes (distributed.processes) failed with exit status "
                f"{process.returncode}:\n" + "\n".join(errors) + "\nthe processes' last output:\n" + "".join(tail)
            )
        with open(result, encoding="utf-8") as handle:
            return json.load(handle)


def main(argv: list[str] | None = None) -> None:
    """Entry point of each launched process: `python -m tunesmith.launcher SPEC`."""
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
