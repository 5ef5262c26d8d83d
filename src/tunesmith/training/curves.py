"""Training curves beside each adapter: the trainer's log history as CSV, and a PNG a reader can judge.

Every stage plots loss and eval loss with the learning rate; DPO adds what its loss alone hides:
the reward margin (chosen minus rejected implicit reward) and the share of pairs whose chosen answer
wins, for the training batches and the validation pairs.
"""

from __future__ import annotations

import csv

LOSSES = ("loss", "eval_loss")
PREFERENCE = (("rewards/margins", "eval_rewards/margins", "reward margin"),
              ("rewards/accuracies", "eval_rewards/accuracies", "reward accuracy\n(vs SFT reference)"))


def write_log(history: list[dict], path: str) -> None:
    fields = sorted({key for entry in history for key in entry})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def _series(history: list[dict], key: str) -> tuple[list, list]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry]
    return [step for step, _ in points], [value for _, value in points]


def plot_curves(history: list[dict], path: str, title: str) -> list[str]:
    """Loss (and eval loss) against step with the learning rate on a second axis; below it, when the
    history holds DPO rewards, reward margin and accuracy (train and eval). Returns the keys plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [pair for pair in PREFERENCE if any(key in entry for entry in history for key in pair[:2])]
    figure, axes = plt.subplots(1 + len(panels), 1, figsize=(6.5, 3.2 * (1 + len(panels))), squeeze=False)
    plotted = []
    loss_axis = axes[0][0]
    for key in LOSSES:
        steps, values = _series(history, key)
        if steps:
            loss_axis.plot(steps, values, marker="." if key.startswith("eval") else None, label=key)
            plotted.append(key)
    loss_axis.set_ylabel("loss")
    loss_axis.set_title(title)
    rate_axis = loss_axis.twinx()
    steps, values = _series(history, "learning_rate")
    if steps:
        rate_axis.plot(steps, values, color="grey", linestyle=":", label="learning rate")
        plotted.append("learning_rate")
    rate_axis.set_ylabel("learning rate")
    handles = loss_axis.get_legend_handles_labels()[0] + rate_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles=handles, loc="upper right", fontsize="small")
    for (train_key, eval_key, label), (axis,) in zip(panels, axes[1:]):
        for key in (train_key, eval_key):
            steps, values = _series(history, key)
            if steps:
                axis.plot(steps, values, marker="." if key.startswith("eval") else None, label=key)
                plotted.append(key)
        if "accurac" in train_key:
            axis.set_ylim(-0.05, 1.05)
            axis.axhline(0.5, color="grey", linewidth=0.5)  # a coin flip
        else:
            axis.axhline(0.0, color="grey", linewidth=0.5)
        axis.set_ylabel(label)
        axis.legend(loc="best", fontsize="small")
    axes[-1][0].set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return plotted


def read_events(folder: str) -> dict:
    """The scalars (`{tag: [(step, value)]}`) and text summaries (`{tag: [text]}`) of a folder of TensorBoard
    event files. Of a resumed run, the steps the killed attempt logged after its last checkpoint are those
    of the attempt that redid them (TensorBoard's purge of orphaned data)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    scalars = {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in tags["scalars"]}
    texts = {tag: [b"".join(event.tensor_proto.string_val).decode("utf-8") for event in events.Tensors(tag)]
             for tag in tags["tensors"] if tag.endswith("/text_summary")}
    return {"scalars": scalars, "text": texts}


def plot_events(folder: str, path: str, title: str) -> list[str]:
    """Every scalar the TensorBoard events in `folder` hold, one small panel each; returns the tags plotted."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = read_events(folder)["scalars"]
    tags = sorted(tag for tag, points in scalars.items() if points)
    columns = 3
    rows = max(1, math.ceil(len(tags) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for axis, tag in zip(axes.flat, tags):
        steps, values = zip(*scalars[tag])
        axis.plot(steps, values, marker="." if len(steps) < 20 else None)
        axis.set_title(tag, fontsize="small")
        axis.tick_params(labelsize="x-small")
    for axis in list(axes.flat)[len(tags):]:
        axis.axis("off")
    figure.suptitle(f"{title}: TensorBoard scalars")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return tags
