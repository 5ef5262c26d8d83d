"""tunesmith's curation against a straightforward pandas implementation of the same steps, on 1M rows.

    python bench/curate.py              # options: --rows --threads --keep (keep the corpus folder)

Generates a JSONL corpus of `--rows` SFT records (seeded): Japanese template questions and answers,
about 20% duplicates after normalisation (10% exact copies, 10% copies differing in full-width
characters, spaces or letter case), some near duplicates (one character changed), and a little dirt
(invalid JSON, English prompts, degenerate answers, overlong prompts, empty answers).

Both sides read the JSONL and write kept rows and quarantined rows (with reasons) to Parquet, doing:
parse, normalise (tunesmith.normalize), missing/empty/length checks, share of Japanese characters in
the prompt (>= 0.3), repetition of the answer (character share <= 0.5, 5-gram coverage <= 0.6, answers
of 20+ characters), exact dedup on match keys keeping the first, a content-hash id and a split.
Ours is `ingest_source` + `curate` (near-dup pass and decontamination off, as the pandas side has
neither) with DuckDB on `--threads` threads; pandas is pandas (one thread). Each runs in its own
subprocess, so peak RSS (from wait4) is its own. The kept and quarantined counts of both are printed
so a difference in the rules would show. Ends with one line:
RESULT curate ratio=<pandas seconds / ours> mem_ratio=<our peak RSS / pandas peak RSS>
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


def run_ours(corpus_path: str, out: str, threads: int) -> dict:
    from tunesmith.curate import curate
    from tunesmith.ingest import ingest_source

    source = {"id": "bench", "path": corpus_path, "format": "jsonl", "role": "sft"}
    ingest_source(source, f"{out}/ingested.parquet")
    card = curate([source], "sft", "none", SETTINGS, f"{out}/ours.parquet", f"{out}/ours.quarantine.parquet",
                  f"{out}/ours.card.json", ingested=[f"{out}/ingested.parquet"], seed=SEED, threads=threads)
    return {"kept": card["totals"]["kept"], "quarantined": card["totals"]["quarantined"]}


def _repetitive(text: str) -> bool:
    from collections import Counter

    chars = "".join(text.split())
    if len(chars) < 20:
        return False
    if Counter(chars).most_common(1)[0][1] / len(chars) > 0.5:
        return True
    count = Counter(chars[index:index + 5] for index in range(len(chars) - 4)).most_common(1)[0][1]
    return count > 1 and min(1, count * 5 / len(chars)) > 0.6


def run_pandas(corpus_path: str, out: str) -> dict:
    import hashlib

    import numpy
    import pandas

    from tunesmith.normalize import match_key, normalize_text

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
    letters = frame["prompt"].str.count(r"[^\W\d_]")
    conditions = [records.isna(), frame["instruction"].isna() | frame["output"].isna(),
                  (frame["instruction"] == "") | (frame["output"] == ""),
                  (frame["prompt"].str.len() > 2048) | (frame["output"].str.len() > 2048),
                  (letters > 0) & (japanese / letters.where(letters > 0) < 0.3),
                  frame["output"].map(lambda text: isinstance(text, str) and _repetitive(text))]
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


def child(arguments) -> int:
    start = time.perf_counter()
    if arguments.child == "ours":
        result = run_ours(arguments.corpus, arguments.out, arguments.threads)
    else:
        result = run_pandas(arguments.corpus, arguments.out)
    print(json.dumps({"seconds": time.perf_counter() - start, **result}))
    return 0


def measured(kind: str, corpus_path: Path, out: str, threads: int) -> dict:
    """Run one side in its own process; its result, wall seconds and peak RSS (MiB)."""
    command = [sys.executable, __file__, "--child", kind, "--corpus", str(corpus_path), "--out", out,
               "--threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} failed with status {status}")
    return {**json.loads(output.strip().splitlines()[-1]), "rss_mib": usage.ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads for ours")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and outputs (printed folder)")
    parser.add_argument("--child", choices=["ours", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        return child(arguments)

    folder = tempfile.mkdtemp(prefix="bench-curate-")
    corpus_path = Path(folder) / "corpus.jsonl"
    start = time.perf_counter()
    corpus(corpus_path, arguments.rows)
    print(f"corpus: {arguments.rows:,} rows, {corpus_path.stat().st_size / 2**20:.0f} MiB, "
          f"generated in {time.perf_counter() - start:.1f} s")
    ours = measured("ours", corpus_path, folder, arguments.threads)
    theirs = measured("pandas", corpus_path, folder, arguments.threads)
    print_table(["implementation", "wall s", "rows/s", "peak RSS MiB", "kept", "quarantined"], [
        [name, f"{side['seconds']:.1f}", f"{arguments.rows / side['seconds']:,.0f}", f"{side['rss_mib']:,.0f}",
         f"{side['kept']:,}", ", ".join(f"{reason} {count:,}" for reason, count in sorted(side["quarantined"].items()))]
        for name, side in ((f"tunesmith (ingest_source + curate, {arguments.threads} DuckDB threads)", ours),
                           ("pandas (same steps, one thread)", theirs))])
    print(f"same kept count: {ours['kept'] == theirs['kept']}")
    if arguments.keep:
        print(f"kept: {folder}")
    else:
        import shutil

        shutil.rmtree(folder)
    print(f"RESULT curate ratio={theirs['seconds'] / ours['seconds']:.2f} "
          f"mem_ratio={ours['rss_mib'] / theirs['rss_mib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
