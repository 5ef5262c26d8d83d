"""Experiment tracking: a tracked SFT run read back from its TensorBoard events and from a local MLflow store (tags
that map it to its manifest, the logged losses), the same weights as an untracked run, and the settings the other
backends get."""

import csv
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from tiny_model import SEED, recipe, sft_adapter, tiny  # noqa: F401
from tunesmith.config.recipe import tracking_problems
from tunesmith.jobs.atomic import section_hash
from tunesmith.jobs.manifest import _git_commit
from tunesmith.model.model import read_metadata
from tunesmith.training.tracking import EVENTS_FOLDER, EVENTS_PLOT, TrackingError, environment, run_of, run_settings, tracked
from tunesmith.training.train import train_sft


def _losses(folder) -> dict[int, float]:
    with open(Path(folder) / "training_log.csv", newline="") as handle:
        return {int(float(row["step"])): float(row["loss"]) for row in csv.DictReader(handle) if row.get("loss")}


def _job(tmp_path, report_to, tracking_uri=None):
    """What a Snakemake training job hands tunesmith.training.tracking: the recipe as config, its key, params and output."""
    config = recipe()
    config["tracking"] |= {"report_to": report_to, "mlflow": {"tracking_uri": tracking_uri}}
    params = {"model": {"seed": SEED}, "sft": config["sft"], "distributed": config["distributed"]}
    return SimpleNamespace(config=config, wildcards=SimpleNamespace(key="0123456789ab"),
                           params=SimpleNamespace(items=lambda: params.items()),
                           output=[str(tmp_path / "results" / "sft" / "0123456789ab" / "adapter")]), params


def test_a_tracked_run_is_read_back_from_tensorboard_and_mlflow_and_trains_the_same_weights(tiny, sft_adapter,
                                                                                           tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    job, params = _job(tmp_path, ["tensorboard", "mlflow"], uri)
    run = run_of(job, "sft")
    out = tmp_path / "adapter"
    train_sft(tiny.base_dir, tiny.section("base_model"), tiny.section("template"), tiny.section("sft"), tiny.sft_data,
              SEED, str(out), tracking=run)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "TENSORBOARD_LOGGING_DIR" not in os.environ

    # Tracking changes nothing that trains: the weights are those of the fixture's untracked run.
    tracked_weights = load_file(out / "adapter_model.safetensors")
    untracked = load_file(Path(sft_adapter.path) / "adapter_model.safetensors")
    assert tracked_weights.keys() == untracked.keys()
    assert all((tracked_weights[key] == untracked[key]).all() for key in untracked)

    tags = {"tunesmith.stage": "sft", "tunesmith.stage_key": "0123456789ab",
            "tunesmith.settings_hash": section_hash(params),  # what the job's manifest records as settings_hash
            "tunesmith.recipe_hash": section_hash(job.config), "tunesmith.git_commit": _git_commit(),
            "tunesmith.output": job.output[0]}
    assert run["tags"] == tags and run["run_name"] == "sft-0123456789ab"
    assert read_metadata(out)["tracking"] == {"report_to": ["tensorboard", "mlflow"], "run_name": "sft-0123456789ab",
                                              "project": "tunesmith"}
    losses = _losses(out)
    assert sorted(losses) == list(range(1, tiny.recipe["sft"]["max_steps"] + 1))

    from tunesmith.training.curves import read_events

    events = read_events(str(out / EVENTS_FOLDER))
    assert {step: round(value, 4) for step, value in events["scalars"]["train/loss"]} == {
        step: round(value, 4) for step, value in losses.items()}
    assert "train/learning_rate" in events["scalars"]
    (table,) = events["text"]["tunesmith/tags/text_summary"]
    assert all(f"| {name} | {value} |" in table for name, value in tags.items())
    assert (out / EVENTS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tunesmith")
    (found,) = client.search_runs([experiment.experiment_id], filter_string="tags.`tunesmith.stage_key` = '0123456789ab'")
    assert found.info.run_name == "sft-0123456789ab" and found.info.status == "FINISHED"
    assert {name: found.data.tags[name] for name in tags} == tags
    history = {metric.step: metric.value for metric in client.get_metric_history(found.info.run_id, "loss")}
    assert {step: round(value, 4) for step, value in history.items()} == {
        step: round(value, 4) for step, value in losses.items()}


def test_no_tracking_reports_nowhere_and_writes_no_events(tiny, sft_adapter):
    assert not (Path(sft_adapter.path) / EVENTS_FOLDER).exists() and "tracking" not in read_metadata(sft_adapter.path)
    assert sft_adapter.trainer.args.report_to == []


def test_a_backend_that_is_not_installed_is_refused_naming_the_key(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "wandb" else real(name, *args))
    job, _ = _job(tmp_path, ["tensorboard", "wandb"])
    assert tracking_problems(job.config) == [
        "tracking.report_to: lists 'wandb', but the wandb package is not installed (pip install wandb, or remove it "
        "from tracking.report_to)"]
    with pytest.raises(TrackingError, match=r"tracking.report_to lists \['wandb'\]"):
        with tracked(run_of(job, "sft"), str(tmp_path)):
            pass
    assert tracking_problems(_job(tmp_path, ["tensorboard", "mlflow"])[0].config) == []


def test_weights_and_biases_and_trackio_get_the_run_through_their_own_settings(tmp_path):
    job, _ = _job(tmp_path, ["wandb", "trackio"])
    run = run_settings(job.config["tracking"], "dpo", "abcdefabcdef", job.config, {"dpo": {}}, "out",
                       results=str(tmp_path / "results"))
    variables = environment(run, str(tmp_path))
    assert variables["WANDB_MODE"] == "offline" and variables["WANDB_PROJECT"] == "tunesmith"
    assert variables["WANDB_DIR"] == str(tmp_path / "results") and (tmp_path / "results").is_dir()
    tags = variables["WANDB_TAGS"].split(",")
    assert "stage_key=abcdefabcdef" in tags and all(len(tag) <= 64 for tag in tags)
    assert not any(name.startswith(("MLFLOW_", "TENSORBOARD_")) for name in variables)
    with pytest.MonkeyPatch.context() as patch:
        import importlib.util

        real = importlib.util.find_spec
        patch.setattr(importlib.util, "find_spec", lambda name, *args: object() if name in ("wandb", "trackio")
                      else real(name, *args))
        with tracked(run, str(tmp_path)) as reporting:
            assert reporting == {"report_to": ["wandb", "trackio"], "run_name": "dpo-abcdefabcdef", "project": "tunesmith"}
            assert os.environ["WANDB_TAGS"] == variables["WANDB_TAGS"]
    assert "WANDB_TAGS" not in os.environ


def test_the_default_mlflow_store_is_a_local_sqlite_file_under_results(tmp_path):
    job, _ = _job(tmp_path, ["mlflow"])
    run = run_settings(job.config["tracking"], "sft", "k", job.config, {}, "out", results=str(tmp_path / "results"))
    assert run["mlflow_tracking_uri"] == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    assert environment(run, str(tmp_path))["MLFLOW_EXPERIMENT_NAME"] == "tunesmith"
    file_store = run | {"mlflow_tracking_uri": f"file:{tmp_path / 'mlruns'}"}
    assert environment(file_store, str(tmp_path))["MLFLOW_ALLOW_FILE_STORE"] == "true"


def test_a_job_reads_the_tracking_keys_its_stage_declares_and_refuses_a_missing_backend_before_any_job(tmp_path,
                                                                                                 monkeypatch):
    """run_of picks what the stage table declares: without mlflow in report_to, mlflow's URI is not read."""
    import importlib.util

    from tunesmith.config.recipe import file_problems

    job, _ = _job(tmp_path, ["tensorboard"], tracking_uri="sqlite:////elsewhere/mlflow.db")
    job.config["tracking"]["wandb"] = {"mode": "online"}
    run = run_of(job, "dpo")
    assert run["report_to"] == ["tensorboard"] and run["wandb_mode"] == "offline"
    assert run["mlflow_tracking_uri"] != "sqlite:////elsewhere/mlflow.db"
    assert run_of(_job(tmp_path, [])[0], "cpt") == {"report_to": []}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "wandb" else real(name, *args))
    problems = file_problems(_job(tmp_path, ["wandb"])[0].config)
    assert any(problem.startswith("tracking.report_to: lists 'wandb'") for problem in problems), problems
