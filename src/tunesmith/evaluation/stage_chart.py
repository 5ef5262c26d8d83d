"""The report's stage comparison chart: each scored stage's exact match with its interval over the tasks
(Wilson's, as eval.json gives it: tunesmith.evaluation.significance), and the judge's mean grade with its bootstrap
interval when a judge graded; with seed replicates (`repeats`), every seed's figure as a dot beside the
bar, so task sampling and training noise are both in sight. A PNG for the report's first page."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def panels(stages: dict, replicates: dict | None) -> list[dict]:
    """What each panel plots: a label, a value and interval per stage, the seeds' values per stage."""
    seeds = (replicates or {}).get("stages", {})
    found = []
    exact = {stage: result["exact_match"] for stage, result in stages.items() if result.get("exact_match") is not None}
    if exact:
        found.append({"title": "exact match (%)", "scale": 100, "values": exact,
                      "intervals": {stage: stages[stage].get("exact_match_interval") for stage in exact},
                      "seeds": {stage: list(seeds.get(stage, {}).get("exact_match", {}).get("per_seed", {}).values())
                                for stage in exact}})
    judged = {stage: result["judge"]["mean"] for stage, result in stages.items()
              if (result.get("judge") or {}).get("mean") is not None}
    if judged:
        found.append({"title": "judge mean grade (1–5)", "scale": 1, "values": judged,
                      "intervals": {stage: stages[stage]["judge"].get("interval") for stage in judged},
                      "seeds": {stage: list(seeds.get(stage, {}).get("judge_mean", {}).get("per_seed", {}).values())
                                for stage in judged}})
    return found


def stage_chart(stages: dict, confidence: float, submitted: str, replicates: dict | None = None) -> bytes | None:
    """The chart as PNG bytes (eval.json's stages and their intervals at `confidence`); None when no stage
    has a score to draw."""
    drawn = panels(stages, replicates)
    if not drawn:
        return None
    figure, axes = plt.subplots(1, len(drawn), figsize=(4.2 * len(drawn), 3.0), squeeze=False)
    for axis, panel in zip(axes[0], drawn):
        names = list(panel["values"])
        scale = panel["scale"]
        values = [panel["values"][name] * scale for name in names]
        colours = ["#059669" if name == submitted else "#94a3b8" for name in names]
        axis.bar(range(len(names)), values, color=colours, width=0.6)
        for index, name in enumerate(names):
            interval = panel["intervals"].get(name)
            if interval:
                low, high = interval[0] * scale, interval[1] * scale
                axis.errorbar(index, values[index], yerr=[[values[index] - low], [high - values[index]]],
                              color="#1f2937", capsize=5, linewidth=1.2)
            spread = [value * scale for value in panel["seeds"].get(name, [])]
            if len(spread) > 1:
                axis.scatter([index + 0.22] * len(spread), spread, color="#b45309", s=14, zorder=3,
                             label="each seed" if index == 0 else None)
        axis.set_xticks(range(len(names)), [name + (" (submitted)" if name == submitted else "") for name in names])
        axis.set_title(panel["title"], fontsize=10)
        axis.set_ylim(0, 100 if scale == 100 else 5)
        axis.grid(axis="y", alpha=0.3)
        if any(len(seeds) > 1 for seeds in panel["seeds"].values()):
            axis.legend(fontsize=8, loc="upper left")
    figure.suptitle(f"Bars: this run; whiskers: {confidence:.0%} interval over the tasks", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
