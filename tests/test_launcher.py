"""The launcher: accelerate options per strategy, refusals before starting, and a package without an
import cycle (the training functions know nothing of launching)."""

import ast
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "tunesmith"


def test_launch_options_per_strategy(monkeypatch):
    import importlib.util

    import torch

    from tunesmith.launcher import DistributedError, check_strategy, launch_arguments

    section = {"processes": 4, "strategy": "ddp", "zero_stage": 2}
    ddp = launch_arguments(section, 29123)
    assert ddp[0] == "--multi_gpu" and ddp[ddp.index("--num_processes") + 1] == "4"
    assert ddp[ddp.index("--main_process_port") + 1] == "29123"
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
    from tunesmith.launcher import run_distributed

    assert run_distributed(lambda **arguments: arguments, None, a=1) == {"a": 1}
    assert run_distributed(dict, {"processes": 1, "strategy": "ddp", "zero_stage": 2}, b=2) == {"b": 2}


def test_only_importable_functions_are_launched():
    from tunesmith.launcher import run_distributed

    with pytest.raises(ValueError, match="not importable"):
        run_distributed(lambda: None, {"processes": 2, "strategy": "ddp", "zero_stage": 2})


def _package_imports(module: str) -> set[str]:
    """The tunesmith modules `module` imports, at its top or inside functions."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunesmith"):
            found |= {node.module.removeprefix("tunesmith.")} if node.module != "tunesmith" else {
                alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("tunesmith.") for alias in node.names if alias.name.startswith("tunesmith.")}
    return found


def test_the_package_has_no_import_cycle():
    modules = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    graph = {module: _package_imports(module) & set(modules) for module in modules}
    assert "train" not in graph.get("launcher", set()) | graph["distributed"], "launching must not know the train functions"

    def cycle_from(start, path):
        for name in graph[start]:
            if name in path:
                return path[path.index(name):] + [name]
            found = cycle_from(name, path + [name])
            if found:
                return found
        return None

    cycles = [cycle for module in modules if (cycle := cycle_from(module, [module]))]
    assert not cycles, cycles


@pytest.mark.parametrize("module", ["launcher", "distributed", "train", "model", "adapters", "generate"])
def test_each_module_imports_alone(module):
    result = subprocess.run([sys.executable, "-c", f"import tunesmith.{module}"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
