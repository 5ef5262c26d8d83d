"""The GPU acceptance run's CPU dry run: the same flow (SFT, DPO on the stacked SFT adapter, nf4 loading and
generation of every stage), so the script cannot rot between the sessions that have a GPU."""

import re
import subprocess
import sys

from conftest import REPO


def test_gpu_smoke_dry_cpu_runs_the_whole_flow_and_passes_its_checks():
    result = subprocess.run([sys.executable, str(REPO / "bench/gpu_smoke.py"), "--dry-cpu"], capture_output=True,
                            text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT gpu_smoke ")]
    figures = dict(part.split("=") for part in line.split()[2:])
    assert figures["mode"] == "dry-cpu" and float(figures["effect_kept"]) >= 0.9
    assert float(figures["sft_tokens_per_s"]) > 0 and float(figures["dpo_pairs_per_s"]) > 0
    changed = re.search(r"base→sft (\d+), sft→dpo (\d+)", result.stdout)
    assert changed and int(changed.group(1)) > 0 and int(changed.group(2)) > 0
    for stage in ("sft", "dpo", "generate base", "generate sft", "generate dpo"):
        assert f"| {stage} " in result.stdout
