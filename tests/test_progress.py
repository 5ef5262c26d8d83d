"""Progress lines of long jobs: in the log as lines `cat` shows, and a few on the console."""

import logging
import os
import re
import subprocess
import sys
import textwrap

from tunesmith.jobs.progress import Heartbeat, Progress, duration, last_line, progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_loop_logs_a_line_every_n_items_with_the_time_left(caplog):
    clock = Clock()
    tracker = Progress("generating", 6, "batches", every=2, clock=clock)
    with caplog.at_level(logging.INFO, logger="tunesmith.jobs.progress"):
        for _ in range(6):
            clock.now += 5
            tracker.update()
        tracker.close()
    assert [record.getMessage() for record in caplog.records] == [
        "generating: 2/6 batches (33%), 10 s in, about 20 s left",
        "generating: 4/6 batches (67%), 20 s in, about 10 s left",
        "generating: 6/6 batches (100%), 30 s in",
        "generating: 6 batches in 30 s",
    ]


def test_a_slow_loop_logs_at_least_every_thirty_seconds_and_metrics_always(caplog):
    clock = Clock()
    tracker = Progress("training", 1000, "steps", every=100, clock=clock)
    with caplog.at_level(logging.INFO, logger="tunesmith.jobs.progress"):
        clock.now = 29
        tracker.update(2)  # neither 100 steps nor 30 s since the last line
        clock.now = 31
        tracker.update(3)
        tracker.update(4, loss=2.345678, learning_rate=0.003)
    assert [record.getMessage() for record in caplog.records] == [
        "training: 3/1000 steps (0%), 31 s in, about 2 h 51 min left",
        "training: 4/1000 steps (0%), 31 s in, about 2 h 8 min left, loss 2.346, learning_rate 0.003",
    ]


def test_progress_wraps_an_iterable_like_tqdm(caplog):
    with caplog.at_level(logging.INFO, logger="tunesmith.jobs.progress"):
        assert list(progress(range(3), "judge", "answers")) == [0, 1, 2]
    assert caplog.records[0].getMessage().startswith("judge: 1/3 answers (33%)")
    assert caplog.records[-1].getMessage().startswith("judge: 3 answers in")


def test_durations_read_as_words():
    assert [duration(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 5 s", "1 h 2 min"]


def test_the_latest_line_skips_warnings_and_library_noise(tmp_path):
    """Seen during SFT on real data (issue 21): a FutureWarning's second line, `warnings.warn(`, was shown."""
    log = tmp_path / "train_sft.log"
    log.write_text(
        "2026-12-01 23:41:09,964 tunesmith.jobs.progress INFO training: 3/10 steps (30%), loss 1.92\n"
        "/venv/lib/python3.11/site-packages/trl/trainer/sft_trainer.py:401: FutureWarning: `tokenizer` is "
        "deprecated\n  warnings.warn(\n"
        "/venv/lib/python3.11/site-packages/torch/utils/checkpoint.py:87: UserWarning: None of the inputs\n"
        "  return fn(*args)\n"
        "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'\n",
        encoding="utf-8")
    assert last_line(log) == "training: 3/10 steps (30%), loss 1.92"
    log.write_text("x.py:1: FutureWarning: old\n  warnings.warn(\n", encoding="utf-8")
    assert last_line(log) == ""  # nothing worth showing: the heartbeat says the job is running


def test_the_heartbeat_shows_the_latest_log_line_and_how_to_follow_the_log(tmp_path):
    log = tmp_path / "train_sft.log"
    log.write_text("==== tunesmith attempt 1 ====\n2026-12-01 23:41:09,964 tunesmith.jobs.progress INFO training: "
                   "3/10 steps (30%)\nMap:  10%|#         | 1/10\rMap:  20%|##        | 2/10\r", encoding="utf-8")
    assert last_line(log) == "Map:  20%|##        | 2/10"
    shown = []
    clock = Clock()
    beat = Heartbeat(log, "train_sft (key=abc)", shown.append, interval=30, clock=clock)
    clock.now = 65
    beat.beat()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("2026-12-01 23:42:09,964 tunesmith.jobs.progress INFO training: 9/10 steps (90%)\n")
    clock.now = 95
    beat.beat()
    assert shown == [
        f"tunesmith: [1 min 5 s] train_sft (key=abc): Map:  20%|##        | 2/10 (follow: tail -f {log})\n",
        "tunesmith: [1 min 35 s] train_sft (key=abc): training: 9/10 steps (90%)\n",
    ]


def test_a_job_log_holds_lines_not_carriage_return_bars_and_the_console_hears_of_a_long_job(tmp_path):
    """A job as a Snakemake script runs it: heavy libraries imported before log_to, then a datasets
    map (which draws a bar by default) and a progress loop that takes longer than the console interval."""
    script = tmp_path / "job.py"
    log = tmp_path / "logs" / "job.log"
    script.write_text(textwrap.dedent(f"""
        import time
        import datasets
        from tunesmith.jobs.logs import log_to
        from tunesmith.jobs.progress import progress

        log_to({str(log)!r})
        datasets.Dataset.from_dict({{"x": list(range(2000))}}).map(lambda row: {{"y": row["x"] * 2}})
        for _ in progress(range(4), "generating", "batches"):
            time.sleep(0.4)
    """))
    environment = {**os.environ, "TUNESMITH_CONSOLE_SECONDS": "0.5"}
    environment.pop("TQDM_DISABLE", None)
    environment.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env=environment)
    assert result.returncode == 0, result.stderr
    text = log.read_text(encoding="utf-8")
    assert "\r" not in text, text
    assert "Map" not in text
    assert "generating: 4/4 batches (100%)" in text and "generating: 4 batches in" in text
    console = [line for line in result.stderr.splitlines() if line.startswith("tunesmith: ")]
    assert console and f"(follow: tail -f {log})" in console[0], result.stderr
    assert "generating: " in console[-1]


def test_ingest_and_curation_of_a_corpus_log_where_they_are(tmp_path, caplog, monkeypatch):
    """Ingest logs the records read (a line per PROGRESS_RECORDS, and a closing count); curation logs the
    records checked (a line every LOG_SECONDS), when classification is done and what it kept and quarantined."""
    import json

    import tunesmith.data.curate_checks as curate_checks
    import tunesmith.data.ingest as ingest
    import tunesmith.jobs.progress as progress
    from tunesmith.data.curate import curate

    monkeypatch.setattr(ingest, "PROGRESS_RECORDS", 2)
    monkeypatch.setattr(curate_checks, "TEXT_BATCH_ROWS", 2)  # three batches of texts
    monkeypatch.setattr(progress, "LOG_SECONDS", 0)
    rows = [{"instruction": f"質問{i}はどうですか。", "output": f"答え{i}です。"} for i in range(5)] + [{"instruction": "x"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    (tmp_path / "tasks.jsonl").write_text('{"task_id": 0, "input": "関係ない"}\n', encoding="utf-8")
    source = {"id": "a", "path": str(tmp_path / "a.jsonl"), "format": "jsonl", "role": "sft"}
    with caplog.at_level(logging.INFO):
        card = curate([source], "sft", str(tmp_path / "tasks.jsonl"), {"validation_fraction": 0, "min_kept_share": 0},
                      str(tmp_path / "kept.parquet"), str(tmp_path / "quarantine.parquet"), str(tmp_path / "card.json"))
    lines = [record.getMessage() for record in caplog.records]
    assert re.fullmatch(r"ingest a: 6 records read, \d+ s in", lines[0]), lines  # the line per PROGRESS_RECORDS
    assert re.fullmatch(r"ingest a: 6 records read in \d+ s", lines[1]), lines
    kept, quarantined = card["totals"]["kept"], sum(card["totals"]["quarantined"].values())
    assert quarantined >= 1 and kept + quarantined == 6
    checked = [line for line in lines if " records checked " in line]
    assert [line.split(",")[0] for line in checked] == ["curation: 2/6 records checked (33%)",
                                                        "curation: 4/6 records checked (67%)",
                                                        "curation: 6/6 records checked (100%)"], lines
    assert any(line.startswith("curation of sft: 1 sources read, every record classified") for line in lines), lines
    assert any(line.startswith(f"curation of sft: {kept} records kept, {quarantined} quarantined, ") for line in lines)
