"""What the cluster profile asks Slurm for, per stage, read from Snakemake's own plan of the 13B recipe
(a dry run through profiles/slurm: the resources it would hand sbatch), and which rules stay local."""

import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, snakemake

PROFILE = REPO / "profiles" / "slurm"
COMPETITION = REPO / "recipes" / "llm-jp-3-13b-qlora.yaml"
pytestmark = pytest.mark.usefixtures("cached_hub_models")  # offline, its hub model must be in the cache


def dry_run(work: Path, *targets, recipe: Path = COMPETITION, profile: Path = PROFILE) -> str:
    result = snakemake("--directory", work, *targets, "-n", "--profile", profile, "--config", f"recipe={recipe}",
                       timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def planned_resources(output: str) -> dict[str, dict]:
    """rule -> {threads, and each resource} of the first job of each rule in a dry-run printout."""
    jobs, current = {}, None
    for line in output.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line)
        if match:
            current = jobs.setdefault(match[1], {}) if match[1] not in jobs else None
        elif current is not None and line.strip().startswith(("threads:", "resources:")):
            key, _, value = line.strip().partition(": ")
            if key == "threads":
                current["threads"] = int(value)
            else:
                for item in value.split(", "):
                    name, _, amount = item.partition("=")
                    current[name] = int(amount) if amount.isdigit() else amount
    return jobs


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile")
    (folder / "data").symlink_to(REPO / "data")
    return folder


@pytest.fixture(scope="module")
def competition_jobs(work):
    jobs = planned_resources(dry_run(work))
    jobs.update(planned_resources(dry_run(work, "results/export/dpo")))
    return jobs


def test_every_job_of_the_13b_recipe_is_sized_for_it(competition_jobs):
    jobs = competition_jobs
    for rule in ("train_sft", "train_preference_method"):
        assert jobs[rule]["gpu"] == 1 and jobs[rule]["threads"] == 8
        assert jobs[rule]["mem_mb"] >= 48000, "13B shards are quantised through host memory"
        assert jobs[rule]["runtime"] >= 480, "an epoch of QLoRA on 13B takes hours"
    assert jobs["generate_answers"]["gpu"] == 1 and jobs["generate_answers"]["mem_mb"] >= 32000
    assert jobs["generate_answers"]["runtime"] >= 120
    # Export merges the unquantised bf16 model (26 GB) on the CPU: not the plugin's 2 GB / 30 min.
    assert jobs["export_model"]["mem_mb"] >= 64000
    assert jobs["export_model"]["runtime"] >= 120
    assert "gpu" not in jobs["curate_data"] and jobs["curate_data"]["mem_mb"] >= 8000


def test_training_holds_one_gpu_per_process_from_the_recipe(work, tmp_path):
    recipe = tmp_path / "two.yaml"
    recipe.write_text(COMPETITION.read_text() + "\ndistributed:\n  processes: 2\n")
    jobs = planned_resources(dry_run(work, recipe=recipe))
    assert jobs["train_sft"]["gpu"] == jobs["train_preference_method"]["gpu"] == 2
    assert jobs["generate_answers"]["gpu"] == 1


def test_every_gpu_rule_has_its_own_size_in_the_profile(competition_jobs):
    """A GPU job left on the default resources would get 4 GB for an hour."""
    sized = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]
    gpu_rules = set(re.findall(r"^rule (\w+):(?:(?!^rule ).)*?\n\s+gpu=", "\n".join(
        path.read_text() for path in (REPO / "rules").glob("*.smk")), flags=re.M | re.S))
    assert {"train_sft", "train_preference_method", "train_cpt", "generate_answers", "judge_answers"} <= gpu_rules
    assert gpu_rules <= set(sized), f"no set-resources entry for {sorted(gpu_rules - set(sized))}"
    for rule in gpu_rules:
        assert {"mem_mb", "runtime"} <= set(sized[rule]), rule


def test_fetch_and_publish_rules_run_on_the_submitting_node(work):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(snakefile=REPO / "Snakefile", workdir=work,
                                config_settings=ConfigSettings(config={"recipe": str(COMPETITION)}),
                                resource_settings=ResourceSettings(cores=1))._workflow
        local = set(workflow._localrules)
    assert {"fetch_model", "fetch_models"} <= local
    assert not local & {"train_sft", "train_preference_method", "generate_answers", "export_model", "curate_data"}


def test_the_13b_on_policy_variant_shards_sampling_over_gpu_jobs(work, tmp_path):
    """The commented `pairs:` block of the 13B recipe, switched on: 4 sampling jobs of one GPU each, and the
    endpoint judge's grading jobs with none."""
    text = COMPETITION.read_text()
    block = re.search(r"# pairs:\n((?:#   .*\n)+)", text)
    assert block, "the 13B recipe's commented on-policy variant is missing"
    recipe = tmp_path / "on-policy.yaml"
    recipe.write_text(text.replace(block[0], "pairs:\n" + block[1].replace("#   ", "  ")))
    output = dry_run(work, recipe=recipe)
    jobs = planned_resources(output)
    assert len(re.findall(r"^rule sample_answers:$", output, flags=re.M)) == 4
    assert len(re.findall(r"^rule grade_answers:$", output, flags=re.M)) == 4
    assert jobs["sample_answers"]["gpu"] == 1 and jobs["sample_answers"]["mem_mb"] >= 32000
    assert jobs["grade_answers"].get("gpu", 0) == 0
