"""The default recipe's DAG through a real two-node Slurm cluster on this host (.ci/slurm.sh), then SFT and DPO
trained across both nodes: root, apt, ~6 minutes."""

import os
import subprocess

import pytest

from conftest import REPO


@pytest.mark.slurm
@pytest.mark.skipif(os.environ.get("TUNESMITH_SLURM") != "1",
                    reason="starts a Slurm cluster as root with apt-get: set TUNESMITH_SLURM=1 to run it")
def test_default_recipe_builds_through_slurm():
    result = subprocess.run(["bash", str(REPO / ".ci/slurm.sh")], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]
