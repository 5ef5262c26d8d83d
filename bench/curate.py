"""tunesmith's curation against straightforward polars and pandas implementations of the same steps, on 1M rows.

    python bench/curate.py              # options: --rows --threads --sides --keep (keep the corpus folder)
    python bench/curate.py --rows 10000000 --sides ours --memory-limit 2GB   # DuckDB spills beside its outputs
    python bench/curate.py --scaling 1000000,3000000,10000000,30000000 --memory-limit 2GB   # the exponent
    python bench/curate.py --sides ours --near   # with the near-duplicate pass (the schema's default) on
    python bench/curate.py --sides ours --style conversational   # ours on the corpus as alpaca and as that style
    python bench/curate.py --sides ours --weight 1.5   # ours with the source weighted 1.5 as well
    python bench/curate.py --sides ours --style csv   # ours on the corpus as JSONL and as CSV

Generates a JSONL corpus of `--rows` SFT records (seeded): Japanese template questions and answers,
about 20% duplicates after normalisation (10% exact copies, 10% copies differing in full-width
characters, spaces or letter case), some near duplicates (one character changed), and a little dirt
(invalid JSON, English prompts, degenerate answers, overlong prompts, empty answers).

Every side reads the JSONL and writes kept rows and quarantined rows (with reasons) to Parquet, doing:
parse, normalise (NFKC, zero-width, `_x000D_`, CR, spaces), missing/empty/length checks, the Japanese
share of the prompt (>= 0.3; a Latin word counts as one letter unit), repetition of the answer (a unit
repeated 8+ times in a row covering half of an answer of 20+ characters; the baselines call the same
numpy measure, `tunesmith.data.measures.tandem_repeats`, which neither library has), exact dedup on match
keys keeping the first, a content-hash id and a split. Ours is `ingest_source` + `curate`
(near-duplicate pass and decontamination off, as the baselines have neither; it also writes the card)
with DuckDB on `--threads` threads; polars uses its own threads; pandas is one thread. Each runs in its
own subprocess, so peak RSS (from wait4) is its own. The run checks that every side keeps exactly the
same rows (by line) and prints the counts per reason, and each side's CPU seconds (user + system, in
the timed part). `--sides ours,polars,bound` adds two bounds, from warm runs in one process (`run_bound`): ours
with its per-text work (normalising, cleaning, measures, repetition, match keys) answered from an untimed first
run, i.e. what ours would take with a text kernel that cost nothing (`bound`), and with all of it answered but NFKC
and the repetition measure (`kernel`: the most a native kernel of the rest could give); each is ours' time less
what it saved against a warm run of ours. Ends with one line:
RESULT curate ratio=<pandas s / ours> polars_ratio=<polars s / ours> mem_ratio=<ours / polars peak RSS>
  [polars_cpu_s bound_polars_ratio=<polars s / bound> kernel_polars_ratio=<polars s / kernel bound>
  text_seconds=<the per-text work's seconds>] same_rows ours_seconds ours_rss_mib ours_cpu_s [near_dedup]
  [style style_seconds style_ratio=<ours s on alpaca / ours s on the style>]
  [weight weighted_seconds weighted_rss_mib]

`--style text_output|messages|chat|preference|conversational|implicit` (with `--sides ours`) also curates the same records
written in that style: text_output renames the instruction `text`; messages makes each record a user turn (the
prompt) and the assistant's answer; chat puts a system turn before them (its prompt the system text and the user's,
a blank line apart; the kept rows differ); preference makes each a pair (the prompt, the answer chosen, a fixed refusal
rejected) under the columns `question` and `good`, mapped in the source entry; conversational writes that pair
in TRL's conversational form (the prompt a list of one user turn, each answer one assistant turn); implicit
writes each answer as the whole conversation (the user's turn, then the answer), with no prompt column (TRL's
implicit prompt, Anthropic's HH pairs). The
baselines read alpaca alone, so this compares ours with ours: a record of another style costs about what an
alpaca record does when SQL reads it where it is (a renamed column, a two-turn conversation's contents, a
conversational pair's) or renders the prompt of a longer conversation, not a Python call per record. `--style csv` writes the alpaca records as a CSV file
(a line that is no JSON object as a row of its own text) and curates that: what reading CSV costs over JSONL.

`--weight W` (with `--sides ours`) also curates the same corpus with its source weighted W: above 1, each kept
train row is written floor(W) times, and once more where its mixing draw says so; what upsampling a source costs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table

SEED = 11
SETTINGS = {"decontaminate": False, "near_dedup": {"enabled": False}, "japanese": {"min_share": 0.3},
            "max_prompt_chars": 2048, "max_response_chars": 2048}
TOPICS = ("東京 大阪 京都 日本 学校 先生 電車 天気 公園 図書館 友だち 家族 仕事 会社 料理 音楽 映画 旅行 山 海 川 "
          "花 猫 犬 鳥 本 手紙 写真 駅 店 病院 野菜 果物 季節 漢字 言葉 時間 お金 健康").split()
QUESTIONS = ["{a}について簡単に説明してください。", "{a}と{b}の違いは何ですか？", "{a}で{b}をするにはどうすればいいですか？",
             "{a}に関する質問です。{b}はどこにありますか？", "次の言葉を使って文を作ってください。\n{a}、{b}"]
ANSWERS = ["{a}は{b}と関係があり、毎日の生活でよく使われます。", "{a}では{b}がとても大切です。",
           "まず{a}を確認して、次に{b}を準備しましょう。", "{a}と{b}はどちらも人気があります。"]


def corpus(path: Path, rows: int) -> None:
    rng = random.Random(SEED)
    clean = []
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(rows):
            draw = rng.random()
            if clean and draw < 0.10:
                line = rng.choice(clean)  # exact copy
            elif clean and draw < 0.20:
                row = json.loads(rng.choice(clean))  # the same under normalisation
                kind = rng.choice(["space", "width", "case"])
                if kind == "space":
                    row["instruction"] = "  " + row["instruction"].replace("。", " 。", 1) + "\t"
                elif kind == "width":
                    row["output"] = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in row["output"])
                    row["output"] += " ABC"
                    row["instruction"] += " ABC"
                else:
                    row["instruction"] = row["instruction"] + " Note"
                    row["output"] = row["output"] + " NOTE"
                line = json.dumps(row, ensure_ascii=False)
            elif draw < 0.205:
                line = '{"instruction": "壊れた行", "output": '
            elif draw < 0.21:
                line = json.dumps({"instruction": f"Please explain topic number {index}.", "output": "OK"})
            elif draw < 0.215:
                line = json.dumps({"instruction": f"{rng.choice(TOPICS)}について{index}", "output": "はい" * 20},
                                  ensure_ascii=False)
            elif draw < 0.217:
                line = json.dumps({"instruction": "長" * 2100, "output": "長い"}, ensure_ascii=False)
            elif draw < 0.22:
                line = json.dumps({"instruction": f"{rng.choice(TOPICS)}{index}", "output": " "}, ensure_ascii=False)
            else:
                a, b = rng.sample(TOPICS, 2)
                instruction, _, input_text = rng.choice(QUESTIONS).format(a=a, b=b).partition("\n")
                output = rng.choice(ANSWERS).format(a=a, b=b) + f"（{index}）"
                if draw > 0.99 and clean:  # a near duplicate: one character changed
                    previous = json.loads(rng.choice(clean))
                    instruction, input_text, output = previous["instruction"], previous["input"], previous["output"] + "ね"
                line = json.dumps({"instruction": instruction, "input": input_text, "output": output},
                                  ensure_ascii=False)
                if len(clean) < 200_000:
                    clean.append(line)
            handle.write(line + "\n")
        # On disk before any side is timed, so that no side pays for writing back a fresh corpus: run right
        # after its corpus was written, the 30M-row text step took 1.3 s a batch (most of it in the kernel,
        # on page faults); run again on the same file, 0.35-0.6 s.
        handle.flush()
        os.fsync(handle.fileno())


# --style: (role, tunesmith's style, the source's columns) and each record written that way (prompt, answer).
STYLES = {
    "text_output": ("sft", "text_output", {}, lambda prompt, answer: {"text": prompt, "output": answer}),
    "messages": ("sft", "messages", {}, lambda prompt, answer: {"messages": [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}),
    "chat": ("sft", "messages", {}, lambda prompt, answer: {"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer}]}),
    "preference": ("preference", "preference", {"prompt": "question", "chosen": "good"},
                   lambda prompt, answer: {"question": prompt, "good": answer, "rejected": REFUSAL}),
    "conversational": ("preference", "preference", {"prompt": "question", "chosen": "good"},
                       lambda prompt, answer: {"question": [{"role": "user", "content": prompt}],
                                               "good": [{"role": "assistant", "content": answer}],
                                               "rejected": [{"role": "assistant", "content": REFUSAL}]}),
    "implicit": ("preference", "preference", {}, lambda prompt, answer: {
        "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": REFUSAL}]}),
    "csv": ("sft", "alpaca", {}, None),  # alpaca records as CSV rows (restyled)
}
REFUSAL = "分かりません。"
SYSTEM = "あなたは誠実で優秀な日本人のアシスタントです。"


def restyled(path: Path, style: str) -> Path:
    """The corpus's records written in `style` (see the module's docstring); lines that are not JSON objects
    as they are."""
    if style == "csv":
        return _as_csv(path)
    styled = path.with_name(f"corpus.{style}.jsonl")
    with open(path, encoding="utf-8") as lines, open(styled, "w", encoding="utf-8") as handle:
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):  # text_output has no input column: its prompt is the instruction alone
                prompt = row.get("instruction") if style == "text_output" else "\n".join(
                    part for part in (row.get("instruction"), row.get("input")) if part)
                line = json.dumps(STYLES[style][3](prompt, row.get("output")), ensure_ascii=False) + "\n"
            handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    return styled


def _as_csv(path: Path) -> Path:
    """The corpus as a CSV file of instruction, input, output (quoted where the csv module's writer quotes);
    a line that is not a JSON object becomes a row of its text alone (a row of the wrong width)."""
    import csv

    styled = path.with_name("corpus.csv")
    with open(path, encoding="utf-8") as lines, open(styled, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["instruction", "input", "output"])
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            writer.writerow([row.get(key, "") for key in ("instruction", "input", "output")]
                            if isinstance(row, dict) else [line.rstrip("\n")])
        handle.flush()
        os.fsync(handle.fileno())
    return styled


def run_ours(corpus_path: str, out: str, threads: int, memory_limit: str | None = None, name: str = "ours",
             style: str = "alpaca", weight: float = 1.0) -> dict:
    from tunesmith.data.curate import curate
    from tunesmith.data.ingest import ingest_source

    role, tunesmith_style, columns, _ = STYLES.get(style, ("sft", "alpaca", {}, None))
    source = {"id": "bench", "path": corpus_path, "format": "csv" if style == "csv" else "jsonl", "role": role,
              "style": tunesmith_style, "columns": columns, "weight": weight}
    ingest_source(source, f"{out}/{name}.ingested.parquet")
    card = curate([source], role, "none", SETTINGS, f"{out}/{name}.parquet", f"{out}/{name}.quarantine.parquet",
                  f"{out}/{name}.card.json", ingested=[f"{out}/{name}.ingested.parquet"], seed=SEED, threads=threads,
                  memory_limit=memory_limit)
    return {"kept": card["totals"]["kept"], "quarantined": card["totals"]["quarantined"]}


# The rules of SETTINGS (the schema's defaults for the rest), written out for the baselines.
MIN_SHARE, MAX_CHARS = 0.3, 2048
REPETITION = {"min_chars": 20, "min_copies": 8, "min_share": 0.5, "max_unit_chars": 30}


def _repetitive(outputs: list[str]) -> list[bool]:
    """The repetition rule on answers with spaces removed (the same numpy measure ours uses, a slice of
    texts at a time as ours does)."""
    import pyarrow as pa

    from tunesmith.data.measures import SLICE_ROWS, code_points, repetitions

    found = []
    for start in range(0, len(outputs), SLICE_ROWS):
        points, lengths = code_points(pa.array(outputs[start:start + SLICE_ROWS], pa.string()))
        found += [detail is not None for detail in repetitions(points, lengths, **REPETITION).to_pylist()]
    return found


def run_pandas(corpus_path: str, out: str) -> dict:
    import hashlib
    import re

    import numpy
    import pandas

    from tunesmith.data.normalize import match_key, normalize_text

    def parse(line):
        try:
            value = json.loads(line)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    with open(corpus_path, encoding="utf-8") as handle:
        frame = pandas.DataFrame({"raw": handle.read().splitlines()})
    frame["line"] = numpy.arange(1, len(frame) + 1)
    records = frame["raw"].map(parse)
    for field in ("instruction", "input", "output"):
        frame[field] = records.map(lambda record: record.get(field) if record is not None else None)
        frame[field] = frame[field].map(lambda value: normalize_text(value) if isinstance(value, str) else None)
    frame["prompt"] = numpy.where(frame["input"].fillna("") == "", frame["instruction"],
                                  frame["instruction"] + "\n" + frame["input"].fillna(""))
    japanese = frame["prompt"].str.count(r"[\u3041-\u309f\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\u3005]")
    latin_words = frame["prompt"].str.count(r"[A-Za-z\u00c0-\u024f]+")
    other_letters = frame["prompt"].str.count(
        r"(?![A-Za-z\u00c0-\u024f\u3041-\u309f\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\u3005])[^\W\d_]")
    units = japanese + latin_words + other_letters
    compact = frame["output"].map(lambda text: re.sub(r"\s+", "", text) if isinstance(text, str) else "")
    conditions = [records.isna(), frame["instruction"].isna() | frame["output"].isna(),
                  (frame["instruction"] == "") | (frame["output"] == ""),
                  (frame["prompt"].str.len() > MAX_CHARS) | (frame["output"].str.len() > MAX_CHARS),
                  (units > 0) & (japanese / units.where(units > 0) < MIN_SHARE),
                  pandas.Series(_repetitive(compact.tolist()), index=frame.index)]
    reasons = ["invalid_json", "missing_field", "empty_field", "too_long", "not_japanese", "repetitive"]
    frame["reason"] = numpy.select(conditions, reasons, default="")
    passed = frame["reason"] == ""
    frame["key"] = None
    frame.loc[passed, "key"] = frame.loc[passed, "prompt"].map(match_key) + "\n" + frame.loc[passed, "output"].map(match_key)
    duplicated = passed & frame["key"].duplicated(keep="first") & frame["key"].notna()
    frame.loc[duplicated, "reason"] = "duplicate"
    kept = frame[frame["reason"] == ""].copy()
    kept["id"] = kept["key"].map(lambda key: hashlib.sha256(key.encode()).hexdigest())
    kept["split"] = numpy.where(kept["id"].map(lambda key: int(key[:8], 16) / 2**32) < 0.05, "validation", "train")
    kept[["id", "line", "prompt", "output", "split"]].to_parquet(f"{out}/pandas.parquet", index=False)
    frame.loc[frame["reason"] != "", ["line", "reason", "raw"]].to_parquet(f"{out}/pandas.quarantine.parquet",
                                                                           index=False)
    counts = frame.loc[frame["reason"] != "", "reason"].value_counts()
    return {"kept": len(kept), "quarantined": {reason: int(count) for reason, count in counts.items()}}


def run_polars(corpus_path: str, out: str) -> dict:
    import polars as pl

    def normalised(column: str):
        text = pl.col(column).str.normalize("NFKC")
        for pattern, replacement in [("[\u200b\u200c\u200d\u2060\ufeff]", ""), ("(?i)_x000D_", ""),
                                     ("\r\n?", "\n"), ("[^\\S\n]+", " "), (" ?\n ?", "\n"), ("\n{3,}", "\n\n")]:
            text = text.str.replace_all(pattern, replacement)
        return text.str.strip_chars()

    def match_key(column: str):
        return pl.col(column).str.to_lowercase().str.replace_all("\\s+", "")

    frame = pl.read_lines(corpus_path, name="raw").with_row_index("line", offset=1)
    valid = frame["raw"].str.json_path_match("$").is_not_null() & frame["raw"].str.starts_with("{")
    fields = pl.Struct({"instruction": pl.String, "input": pl.String, "output": pl.String})
    parsed = (frame.filter(valid).with_columns(record=pl.col("raw").str.json_decode(fields)).unnest("record")
              .with_columns(normalised("instruction"), normalised("input"), normalised("output")))
    parsed = parsed.with_columns(prompt=pl.when(pl.col("input").fill_null("") == "").then(pl.col("instruction"))
                                 .otherwise(pl.col("instruction") + "\n" + pl.col("input")))
    japanese = pl.col("prompt").str.count_matches(r"[\p{Hiragana}\p{Katakana}\p{Han}\x{30FC}]")
    units = (japanese + pl.col("prompt").str.count_matches(r"\p{Latin}+")
             + pl.col("prompt").str.count_matches(r"[\p{L}--[\p{Latin}\p{Hiragana}\p{Katakana}\p{Han}\x{30FC}]]"))
    parsed = parsed.with_columns(japanese=japanese, units=units,
                                 compact=pl.col("output").fill_null("").str.replace_all(r"\s+", ""))
    parsed = parsed.with_columns(repetitive=pl.Series(_repetitive(parsed["compact"].to_list())))
    reason = (pl.when(pl.col("instruction").is_null() | pl.col("output").is_null()).then(pl.lit("missing_field"))
              .when((pl.col("instruction") == "") | (pl.col("output") == "")).then(pl.lit("empty_field"))
              .when((pl.col("prompt").str.len_chars() > MAX_CHARS) | (pl.col("output").str.len_chars() > MAX_CHARS))
              .then(pl.lit("too_long"))
              .when((pl.col("units") > 0) & (pl.col("japanese") / pl.col("units") < MIN_SHARE)).then(pl.lit("not_japanese"))
              .when(pl.col("repetitive")).then(pl.lit("repetitive")).otherwise(pl.lit("")))
    parsed = parsed.with_columns(reason=reason)
    parsed = parsed.with_columns(key=pl.when(pl.col("reason") == "").then(
        pl.concat_str([match_key("prompt"), match_key("output")], separator="\n")))
    first = pl.col("line") == pl.col("line").min().over("key")
    parsed = parsed.with_columns(reason=pl.when((pl.col("reason") == "") & ~first).then(pl.lit("duplicate"))
                                 .otherwise(pl.col("reason")))
    kept = parsed.filter(pl.col("reason") == "").with_columns(
        id=pl.col("key").map_batches(lambda keys: pl.Series([hashlib.sha256(key.encode()).hexdigest()
                                                             for key in keys.to_list()]), return_dtype=pl.String))
    kept = kept.with_columns(split=pl.when(pl.col("id").str.slice(0, 8).str.to_integer(base=16) / 2**32 < 0.05)
                             .then(pl.lit("validation")).otherwise(pl.lit("train")))
    kept.select("id", "line", "prompt", "output", "split").write_parquet(f"{out}/polars.parquet")
    quarantined = pl.concat([frame.filter(~valid).select("line", pl.lit("invalid_json").alias("reason"), "raw"),
                             parsed.filter(pl.col("reason") != "").select("line", "reason", "raw")]).sort("line")
    quarantined.write_parquet(f"{out}/polars.quarantine.parquet")
    counts = dict(quarantined.group_by("reason").len().iter_rows())
    return {"kept": kept.height, "quarantined": {reason: int(count) for reason, count in counts.items()}}


def scaling(sizes: list[int], threads: int, memory_limit: str | None, near: bool = False) -> int:
    """Ours alone at each size (corpus generated, curated, deleted); the exponent b of seconds ~ rows^b."""
    import math

    rows_seconds = []
    for rows in sizes:
        folder = tempfile.mkdtemp(prefix="bench-curate-scaling-")
        try:
            corpus_path = Path(folder) / "corpus.jsonl"
            corpus(corpus_path, rows)
            side = measured("ours", corpus_path, folder, threads, memory_limit, near)
        finally:
            import shutil

            shutil.rmtree(folder)
        rows_seconds.append((rows, side["seconds"]))
        print(f"{rows:>12,} rows: {side['seconds']:8.1f} s, {rows / side['seconds']:9,.0f} rows/s, peak RSS "
              f"{side['rss_mib']:8,.0f} MiB, kept {side['kept']:,} (load average {os.getloadavg()[0]:.1f})", flush=True)
    x = [math.log(rows) for rows, _ in rows_seconds]
    y = [math.log(seconds) for _, seconds in rows_seconds]
    mean_x, mean_y = sum(x) / len(x), sum(y) / len(y)
    exponent = (sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / sum((a - mean_x) ** 2 for a in x)
                if len(x) > 1 else float("nan"))
    print(f"RESULT curate_scaling exponent={exponent:.2f} sizes={','.join(str(rows) for rows in sizes)} "
          f"memory_limit={memory_limit or 'default'} near_dedup={str(near).lower()}")
    return 0


def run_bound(corpus_path: str, out: str, threads: int, memory_limit: str | None = None) -> dict:
    """Ours as if its per-text work were free (`bound`: what no faster text kernel can beat), and as if all of it
    were free but NFKC and the repetition measure (`kernel`: what a native kernel of the rest, case folding, cleaning,
    the measures, the match keys and the plain-text test, could give at most; NFKC needs Unicode's tables, and the
    repetition measure is the baselines' too, so a faster one speeds them as much). Ours runs once untimed, keeping
    every field's computed columns (`curate_checks._field_columns`); then, timed, in turn BOUND_ROUNDS times, ours
    again as it is (`warm`), the kernel bound (each call answered from those columns after computing NFKC and the
    repetition for real) and the bound (answered alone); medians kept. The rest (reading and parsing the records,
    distinct texts, the SQL, inserts, dedup, the files, the card) is done as ours does it. The timed runs are warm
    (imports done, pools grown), unlike ours' own side, a fresh process: `main` takes their differences from ours'
    time. A wrong answer would change the kept rows, which the bench compares (the bound's and the kernel bound's)."""
    import pyarrow.compute as pc

    from tunesmith.data import curate_checks, measures

    computed, field_columns = {}, curate_checks._field_columns

    def key(field, text):  # cheap: a batch's field is known by its size and its first and last texts
        return field, len(text), text[0].as_py() if len(text) else None, text[-1].as_py() if len(text) else None

    def recorded(field, text, *rest):
        columns = computed[key(field, text)] = field_columns(field, text, *rest)
        return columns

    def answered(field, text, *rest):
        return computed[key(field, text)]

    def kernel(field, text, shape, repetition, *rest):
        normalised = pc.utf8_normalize(text, form="NFKC")
        for start in range(0, len(text), measures.SLICE_ROWS) if field == shape.taught else ():  # as measure_slices
            points, lengths = measures.code_points(normalised.slice(start, measures.SLICE_ROWS))
            measures.repetitions(points, lengths, **{name: repetition[name] for name in measures.REPETITION_KEYS})
        return computed[key(field, text)]

    def timed(name: str, answer) -> dict:
        curate_checks._field_columns = answer
        start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        result = run_ours(corpus_path, out, threads, memory_limit, name)
        return {**result, "seconds": time.perf_counter() - start, "cpu_s": cpu_seconds_since(usage)}

    curate_checks._field_columns = recorded
    run_ours(corpus_path, out, threads, memory_limit, "bound")
    # The bound runs last in each round: the files the bench compares under its name are its own, not the warm run's.
    answers = {"warm": ("bound", field_columns), "kernel": ("kernel", kernel), "bound": ("bound", answered)}
    runs = {kind: [] for kind in answers}
    for _ in range(BOUND_ROUNDS):  # one warm run moves by ~10%: rounds alternate, medians compared
        for kind, (name, answer) in answers.items():
            runs[kind].append(timed(name, answer))
    found = {kind: {**done[-1], **{name: statistics.median(run[name] for run in done) for name in ("seconds", "cpu_s")}}
             for kind, done in runs.items()}
    return {**found["bound"], "warm": found["warm"], "kernel": found["kernel"]}


BOUND_ROUNDS = 3


def cpu_seconds_since(usage) -> float:
    """User + system CPU seconds of this process since `usage` (a getrusage result)."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return now.ru_utime + now.ru_stime - usage.ru_utime - usage.ru_stime


SIDES = {"ours": run_ours, "polars": run_polars, "pandas": run_pandas, "bound": run_bound}
NAMES = {"ours": "tunesmith (ingest_source + curate, {threads} DuckDB threads)",
         "polars": "polars (same steps, its own threads)", "pandas": "pandas (same steps, one thread)",
         "bound": "tunesmith with its per-text work free (a bound, not a result)",
         "kernel": "tunesmith with its per-text work free but NFKC and the repetition measure (a bound)"}


def child(arguments) -> int:
    if arguments.near:
        SETTINGS["near_dedup"] = {"enabled": True}
    start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    if arguments.style:
        result = run_ours(arguments.corpus, arguments.out, arguments.threads, arguments.memory_limit, arguments.style,
                          arguments.style)
    elif arguments.weight:
        result = run_ours(arguments.corpus, arguments.out, arguments.threads, arguments.memory_limit, "weighted",
                          weight=arguments.weight)
    elif arguments.child in ("ours", "bound"):
        result = SIDES[arguments.child](arguments.corpus, arguments.out, arguments.threads, arguments.memory_limit)
    else:
        result = SIDES[arguments.child](arguments.corpus, arguments.out)
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_s": cpu_seconds_since(usage), **result}))
    return 0


def measured(kind: str, corpus_path: Path, out: str, threads: int, memory_limit: str | None = None,
             near: bool = False, style: str | None = None, weight: float | None = None) -> dict:
    """Run one side in its own process (ours with records of `style`, or its source weighted `weight`); its result,
    wall seconds and peak RSS (MiB)."""
    command = [sys.executable, __file__, "--child", kind, "--corpus", str(corpus_path), "--out", out,
               "--threads", str(threads)] + (["--memory-limit", memory_limit] if memory_limit else []) + (
               ["--near"] if near else []) + (["--style", style] if style else []) + (
               ["--weight", str(weight)] if weight else [])
    environment = {**os.environ, "POLARS_MAX_THREADS": str(threads)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} failed with status {status}")
    return {**json.loads(output.strip().splitlines()[-1]), "rss_mib": usage.ru_maxrss / 1024}


BOUNDS = ("bound", "kernel")


def bounded(results: dict) -> tuple[dict, float]:
    """Turn the bound side's warm runs into the bounds' rows (`results` "bound" and "kernel", in place): ours' fresh
    seconds and CPU seconds less what each saved against ours' warm run in the bound's process. Returns ours' warm
    run and its per-text work's seconds (warm ours less the bound)."""
    ours, side = results["ours"], results["bound"]
    warm, kernel = side.pop("warm"), side.pop("kernel")
    results["kernel"] = {**kernel, "rss_mib": side["rss_mib"]}
    for kind in BOUNDS:
        found = results[kind]
        found["warm_seconds"] = found["seconds"]
        for name in ("seconds", "cpu_s"):
            found[name] = ours[name] - (warm[name] - found[name])
    return warm, warm["seconds"] - results["bound"]["warm_seconds"]


def kept_lines(folder: str, kind: str) -> list[int]:
    import pyarrow.parquet as pq

    return sorted(set(pq.read_table(f"{folder}/{kind}.parquet", columns=["line"])["line"].to_pylist()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2, help="threads for ours (DuckDB) and polars")
    parser.add_argument("--sides", default="ours,polars,pandas",
                        help="comma-separated: ours, polars, pandas, bound (with ours: ours with its per-text work "
                             "free, the most a faster text kernel could give, and free but NFKC and the repetition "
                             "measure)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and outputs (printed folder)")
    parser.add_argument("--memory-limit", help="curate.memory_limit for ours (default: the schema's)")
    parser.add_argument("--scaling", help="comma-separated row counts (e.g. 1000000,3000000,10000000,30000000): "
                        "ours alone at each, corpora generated one at a time and deleted; fits the wall-time exponent")
    parser.add_argument("--near", action="store_true", help="ours with curate.near_dedup on (the schema's default; "
                        "the baselines have no such pass, so only with --sides ours or --scaling)")
    parser.add_argument("--style", choices=sorted(STYLES), help="with --sides ours: ours also on the same records "
                        "written in this style (see the docstring)")
    parser.add_argument("--weight", type=float, help="with --sides ours: ours also with the source weighted so (above 1, "
                        "train rows are written again: curate's kept file with copies)")
    parser.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        return child(arguments)

    if arguments.scaling:
        return scaling([int(rows) for rows in arguments.scaling.split(",")], arguments.threads, arguments.memory_limit,
                       arguments.near)
    sides = arguments.sides.split(",")
    if arguments.near and sides != ["ours"]:
        parser.error("--near: only ours has a near-duplicate pass; use --sides ours (or --scaling)")
    if arguments.style and sides != ["ours"]:
        parser.error("--style: the baselines read alpaca alone; use --sides ours")
    if arguments.weight and (sides != ["ours"] or arguments.style):
        parser.error("--weight: the baselines have no mixing; use --sides ours, without --style")
    if "bound" in sides and "ours" not in sides:
        parser.error("--sides bound: the bounds are ours less warm differences; add ours")
    folder = tempfile.mkdtemp(prefix="bench-curate-")
    corpus_path = Path(folder) / "corpus.jsonl"
    start = time.perf_counter()
    corpus(corpus_path, arguments.rows)
    print(f"corpus: {arguments.rows:,} rows, {corpus_path.stat().st_size / 2**20:.0f} MiB, "
          f"generated in {time.perf_counter() - start:.1f} s")
    results = {kind: measured(kind, corpus_path, folder, arguments.threads,
                              arguments.memory_limit if kind in ("ours", "bound") else None, arguments.near)
               for kind in sides}
    if arguments.style:
        results[arguments.style] = measured("ours", restyled(corpus_path, arguments.style), folder, arguments.threads,
                                            arguments.memory_limit, arguments.near, arguments.style)
        NAMES[arguments.style] = f"tunesmith, the same records as {arguments.style}"
    if arguments.weight:
        results["weighted"] = measured("ours", corpus_path, folder, arguments.threads, arguments.memory_limit,
                                       arguments.near, weight=arguments.weight)
        NAMES["weighted"] = f"tunesmith, the source weighted {arguments.weight:g}"
    if "bound" in results:
        warm, text_seconds = bounded(results)
        print(f"warm runs in one process: ours {warm['seconds']:.2f} s, with its per-text work free "
              f"{results['bound']['warm_seconds']:.2f} s, free but NFKC and the repetition measure "
              f"{results['kernel']['warm_seconds']:.2f} s (bounds below: ours' fresh time less these differences)")
    print_table(["implementation", "wall s", "CPU s", "rows/s", "peak RSS MiB", "kept", "quarantined"], [
        [NAMES[kind].format(threads=arguments.threads), f"{side['seconds']:.1f}", f"{side['cpu_s']:.1f}",
         f"{arguments.rows / side['seconds']:,.0f}", f"{side['rss_mib']:,.0f}" if kind not in BOUNDS else "-",
         f"{side['kept']:,}",
         ", ".join(f"{reason} {count:,}" for reason, count in sorted(side["quarantined"].items()))]
        for kind, side in results.items()])
    style = results.get(arguments.style)
    lines = {kind: kept_lines(folder, kind) for kind in [*results] if kind not in STYLES}
    same = all(found == lines[sides[0]] for found in lines.values())
    print(f"same kept rows (by line) on every side: {same}")
    if arguments.keep:
        print(f"kept: {folder}")
    else:
        import shutil

        shutil.rmtree(folder)
    ours = results["ours"]
    ratios = [f"{name}={results[kind]['seconds'] / ours['seconds']:.2f}"
              for name, kind in (("ratio", "pandas"), ("polars_ratio", "polars")) if kind in results]
    if "polars" in results:
        ratios.append(f"mem_ratio={ours['rss_mib'] / results['polars']['rss_mib']:.2f}")
        ratios.append(f"polars_cpu_s={results['polars']['cpu_s']:.1f}")
        if "bound" in results:
            ratios += [f"{kind}_polars_ratio={results['polars']['seconds'] / results[kind]['seconds']:.2f}"
                       for kind in BOUNDS]
    if "bound" in results:
        ratios.append(f"text_seconds={text_seconds:.2f}")
    targets = {"ratio": ("pandas", 5.0, "at least 5x pandas' speed"),
               "polars_ratio": ("polars", 1.5, "at least 1.5x polars' speed")}
    for name, (kind, bound, words) in targets.items():
        if kind in results:
            print(f"target {words}: {'met' if results[kind]['seconds'] / ours['seconds'] >= bound else 'NOT met'}")
    if "polars" in results:
        print(f"target peak memory <= polars': {'met' if ours['rss_mib'] <= results['polars']['rss_mib'] else 'NOT met'}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores: figures above ~2 are shared)")
    print(f"RESULT curate {' '.join(ratios + [''])}same_rows={str(same).lower()} ours_seconds={ours['seconds']:.1f} "
          f"ours_rss_mib={ours['rss_mib']:.0f} ours_cpu_s={ours['cpu_s']:.1f}" + (" near_dedup=true" if arguments.near else "")
          + (f" style={arguments.style} style_seconds={style['seconds']:.1f} "
             f"style_ratio={ours['seconds'] / style['seconds']:.2f}" if style else "")
          + (f" weight={arguments.weight:g} weighted_seconds={results['weighted']['seconds']:.1f} "
             f"weighted_rss_mib={results['weighted']['rss_mib']:.0f}" if arguments.weight else ""))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
