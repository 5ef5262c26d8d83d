"""Experiment tracking of training runs, through transformers' `report_to`: TensorBoard, MLflow, W&B, trackio.

The recipe's `tracking` section names the backends. Each run is named `<stage>-<key>` and tagged with its stage,
content key, settings hash (the `settings_hash` of its manifest), recipe hash and git commit, so a tracked run maps
back to `results/<stage>/<key>/adapter.manifest.json`. Tracking cannot change the trained weights (the tests train
with and without it and compare), so it is in no content key: changing it reruns nothing, and the scripts read it
from the workflow's config rather than from the rule's params, which Snakemake would take as a reason to rerun.

The backends are configured the way transformers' callbacks and the backends' own libraries read their settings,
set for the run and restored afterwards: TrainingArguments `report_to`, `run_name` and `project` (trackio), and the
environment (TENSORBOARD_LOGGING_DIR; MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, MLFLOW_TAGS; WANDB_PROJECT,
WANDB_TAGS, WANDB_MODE, WANDB_DIR). Where each writes:
- tensorboard: event files logged beside the checkpoints while training (a resumed run adds to the killed run's
  events), then kept in the adapter folder's `tensorboard/`, with `training_tensorboard.png`, every scalar they
  hold, beside the training curves (and in the report);
- mlflow: `tracking.mlflow.tracking_uri`; by default MLflow's own local default, a SQLite file, here
  `results/mlflow.db` (MLflow 3.17 refuses its old file store unless asked; a `file:` URI asks);
- wandb: offline runs in `results/wandb` unless `tracking.wandb.mode` is online;
- trackio: its own local store.
Tags reach MLflow through MLFLOW_TAGS and W&B through WANDB_TAGS; TensorBoard (a text summary) and trackio (its run
config) get them from a callback once their run has started.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from tunesmith.jobs.atomic import section_hash

EVENTS_FOLDER = "tensorboard"
EVENTS_PLOT = "training_tensorboard.png"
_WANDB_TAG_LENGTH = 64  # W&B's limit on one tag


class TrackingError(RuntimeError):
    """A tracking backend the recipe asks for that cannot report; the message names the recipe key."""


def missing_backends(report_to) -> list[str]:
    """The backends whose package (named as the backend) is not installed."""
    return [name for name in report_to if importlib.util.find_spec(name) is None]


def _git_commit() -> str | None:
    from tunesmith.jobs.manifest import _git_commit as commit  # the commit the job's manifest records

    return commit()


def run_settings(section: dict, stage: str, key: str, recipe: dict, settings: dict, output: str,
                 results: str = "results") -> dict:
    """What a training function needs to track its run (JSON data, so it travels to launched processes), from
    the `tracking` section (or the part of it the stage table declares: a backend's settings only with it)."""
    report_to = list(section["report_to"])
    if not report_to:
        return {"report_to": []}
    results = Path(results).resolve()
    tags = {
        "tunesmith.stage": stage,
        "tunesmith.stage_key": key,
        "tunesmith.settings_hash": section_hash(settings),
        "tunesmith.recipe_hash": section_hash(recipe),
        "tunesmith.git_commit": _git_commit() or "unknown",
        "tunesmith.output": str(output),
    }
    return {
        "report_to": report_to,
        "run_name": f"{stage}-{key}",
        "project": section["project"],
        "tags": tags,
        "mlflow_tracking_uri": section.get("mlflow", {}).get("tracking_uri") or f"sqlite:///{results / 'mlflow.db'}",
        "wandb_mode": section.get("wandb", {}).get("mode", "offline"),
        "wandb_dir": str(results),
    }


def run_of(job, stage: str) -> dict:
    """`run_settings` of a Snakemake training job: its key, params (as its manifest records them) and the recipe.
    The job reads the tracking keys the stage table declares for it (`Stage.unkeyed`), from the workflow's config."""
    from tunesmith.config import plan  # plan imports the modules that import this one

    recipe = dict(job.config)
    section = plan.pick(recipe, plan.STAGES[stage].unkeyed(recipe, None))["tracking"]
    return run_settings(section, stage, job.wildcards.key, recipe,
                        {name: value for name, value in job.params.items()}, job.output[0])


def _wandb_tags(tags: dict) -> str:
    short = (f"{name.removeprefix('tunesmith.')}={value}" for name, value in tags.items() if name != "tunesmith.output")
    return ",".join(tag[:_WANDB_TAG_LENGTH] for tag in short)


def environment(run: dict, logging_dir: str) -> dict[str, str]:
    """The environment variables through which the backends of `run` read their settings."""
    report_to = run["report_to"]
    variables = {}
    if "tensorboard" in report_to:
        variables["TENSORBOARD_LOGGING_DIR"] = os.path.join(logging_dir, EVENTS_FOLDER)
    if "mlflow" in report_to:
        uri = run["mlflow_tracking_uri"]
        variables |= {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": run["project"],
                      "MLFLOW_TAGS": json.dumps(run["tags"])}
        if uri.startswith("file:") or "://" not in uri:
            variables["MLFLOW_ALLOW_FILE_STORE"] = "true"  # asked for by name: MLflow 3.17 refuses it otherwise
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "wandb" in report_to:
        variables |= {"WANDB_PROJECT": run["project"], "WANDB_TAGS": _wandb_tags(run["tags"]),
                      "WANDB_MODE": run["wandb_mode"], "WANDB_DIR": run["wandb_dir"]}
        Path(run["wandb_dir"]).mkdir(parents=True, exist_ok=True)
    return variables


@contextmanager
def tracked(run: dict | None, logging_dir: str):
    """Around a trainer's construction and training: the backends' environment is set (and restored after), and
    the TrainingArguments that report the run are yielded (`report_to=[]` without tracking)."""
    if not run or not run["report_to"]:
        yield {"report_to": []}
        return
    missing = missing_backends(run["report_to"])
    if missing:
        raise TrackingError(f"tracking.report_to lists {missing}, whose packages are not installed here")
    variables = environment(run, logging_dir)
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield {"report_to": list(run["report_to"]), "run_name": run["run_name"], "project": run["project"]}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def tag_callback(trainer, run: dict | None):
    """A callback that writes the run's tags where no environment variable carries them: a text summary in the
    TensorBoard events and trackio's run config. It runs after the backends' own callbacks have started the run."""
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    class WriteTags(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            tags = run["tags"]
            table = "| tag | value |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in tags.items())
            for callback in trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    callback.tb_writer.add_text("tunesmith/tags", table, state.global_step)
                    callback.tb_writer.flush()
            if "trackio" in run["report_to"]:
                import trackio

                trackio.config.update(tags, allow_val_change=True)

    return WriteTags()


def track_trainer(trainer, run: dict | None) -> None:
    if run and run["report_to"]:
        trainer.add_callback(tag_callback(trainer, run))


def keep_events(logging_dir: str, folder: str, title: str) -> None:
    """Move the run's TensorBoard events (all attempts of a resumed run) into the adapter folder and plot them."""
    events = os.path.join(logging_dir, EVENTS_FOLDER)
    if not os.path.isdir(events):
        return
    kept = os.path.join(folder, EVENTS_FOLDER)
    shutil.copytree(events, kept)
    from tunesmith.training.curves import plot_events

    plot_events(kept, os.path.join(folder, EVENTS_PLOT), title)


def metadata(run: dict | None) -> dict:
    """What the adapter's tunesmith.json records of its tracked run."""
    if not run or not run["report_to"]:
        return {}
    return {"tracking": {"report_to": run["report_to"], "run_name": run["run_name"], "project": run["project"]}}
