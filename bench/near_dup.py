"""tunesmith's near-duplicate pass against datasketch's and rensa's MinHash LSH, on 100,000 rows.

    python bench/near_dup.py            # options: --rows --pairs --threads

All sides get the same texts (the normalised, case-folded, whitespace-free keys curation compares),
the same character 5-grams, 128 permutations, 16 bands of 8 rows and threshold 0.8 (the recipe
defaults). Ours is `tunesmith.data.near_dup.near_duplicates` on a DuckDB table of those keys (numpy
shingle hashes, rensa's batch signatures and band-collision flags, DuckDB bands over the flagged
rows, exact-Jaccard check, rows kept in order with no chains); datasketch 2.0 and rensa 0.5 (Rust)
on their own are the usual loop (one MinHash per row, `query` then `insert`, a candidate counting
when its MinHash Jaccard estimate reaches the threshold).

Ground truth: the corpus is random sentences from a word list, plus `--pairs` planted near duplicates
(a copy with one to three small edits). The truth set is the planted pairs whose exact 5-gram Jaccard
similarity is at least the threshold. Recall = share of those pairs each method reports: ours when
the copy is dropped as a near copy of the original (both end up in one cluster); the others when the
copy's query returns the original and their estimate reaches the threshold. Each side runs in its own
subprocess, so its wall time and peak RSS (wait4) are its own. Ends with one line:
RESULT near_dup ratio=<datasketch s / ours> rensa_ratio=<rensa s / ours> recall_delta=<ours - rensa, points>
  mem_ratio=<our peak RSS / rensa's>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

from _common import print_table
from tunesmith.config.recipe import load_schema
from tunesmith.data.normalize import match_keys_of_normalized, normalize_many

WORDS = ("東京 大阪 日本 学校 先生 電車 天気 今日 明日 昨日 公園 図書館 友だち 家族 仕事 会社 料理 音楽 映画 旅行 "
         "朝 夜 春 夏 秋 冬 山 海 川 花 猫 犬 鳥 本 手紙 写真 買い物 散歩 勉強 練習 試合 駅 店 病院").split()
PARTICLES = "は が を に で と も の へ から まで".split()
ENDINGS = ["です。", "でした。", "ます。", "ました。", "ません。", "でしょう。"]
SEED = 7


def sentence(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(6, 10)):
        words += [rng.choice(WORDS), rng.choice(PARTICLES)]
    return "".join(words) + rng.choice(ENDINGS)


def edited(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(len(chars))
        kind = rng.choice(["swap", "insert", "delete"])
        if kind == "swap":
            chars[where] = rng.choice("あいうえおかきくけこ")
        elif kind == "insert":
            chars.insert(where, rng.choice("、。ねよ"))
        elif len(chars) > 20:
            del chars[where]
    return "".join(chars)


def shingles(text: str, n: int) -> set[str]:
    return {text[index:index + n] for index in range(len(text) - n + 1)}


def corpus(rows: int, pairs: int) -> tuple[list[str], list[tuple[int, int]]]:
    rng = random.Random(SEED)
    texts = [sentence(rng) + sentence(rng) + sentence(rng) for _ in range(rows - pairs)]
    planted = []
    for index in rng.sample(range(len(texts)), pairs):
        planted.append((index, len(texts)))
        texts.append(edited(rng, texts[index]))
    return match_keys_of_normalized(normalize_many(texts)), planted


def ours(keys: list[str], settings: dict, threads: int) -> tuple[float, dict[int, int]]:
    """Seconds of the near-duplicate pass, and each clustered row's label (its kept row)."""
    import duckdb  # here, so that the other sides' processes do not carry DuckDB and Arrow
    import pyarrow as pa

    from tunesmith.data.measures import MACROS
    from tunesmith.data.near_dup import near_duplicates

    with duckdb.connect(config={"threads": threads}) as con:
        con.execute(MACROS)
        con.register("keys", pa.table({"dedup_key": keys}))
        con.execute("CREATE TABLE deduplicated AS SELECT row_number() OVER () - 1 AS pos, "
                    "NULL::STRUCT(reason VARCHAR, detail VARCHAR) AS verdict, dedup_key, dedup_key AS question_key, "
                    "'' AS context_key FROM keys")
        con.unregister("keys")  # curation's own table is DuckDB's: the Arrow copy goes
        pa.default_memory_pool().release_unused()
        start = time.perf_counter()
        near_duplicates(con, settings, SEED)
        seconds = time.perf_counter() - start
        return seconds, dict(con.execute("SELECT pos, label FROM clusters").fetchall())


def datasketch_pairs(keys: list[str], near: dict) -> tuple[float, set[tuple[int, int]]]:
    """Seconds of datasketch's MinHash + LSH, and the (earlier row, row) pairs its queries returned
    whose MinHash Jaccard estimate reaches the threshold."""
    from datasketch import MinHash, MinHashLSH

    n, permutations, bands = near["ngram"], near["permutations"], near["bands"]
    start = time.perf_counter()
    template = MinHash(num_perm=permutations, seed=SEED)
    lsh = MinHashLSH(threshold=near["threshold"], num_perm=permutations, params=(bands, permutations // bands))
    verified, signatures = set(), []
    for index, key in enumerate(keys):
        minhash = MinHash(num_perm=permutations, permutations=template.permutations, scheme=template.scheme)
        minhash.update_batch([gram.encode("utf-8") for gram in shingles(key, n)])
        for other in lsh.query(minhash):
            if signatures[other].jaccard(minhash) >= near["threshold"]:
                verified.add((other, index))
        lsh.insert(index, minhash)
        signatures.append(minhash)
    return time.perf_counter() - start, verified


def rensa_pairs(keys: list[str], near: dict) -> tuple[float, set[tuple[int, int]]]:
    """The same loop with rensa's RMinHash and RMinHashLSH."""
    from rensa import RMinHash, RMinHashLSH

    n, permutations = near["ngram"], near["permutations"]
    start = time.perf_counter()
    lsh = RMinHashLSH(threshold=near["threshold"], num_perm=permutations, num_bands=near["bands"])
    verified, signatures = set(), []
    for index, key in enumerate(keys):
        minhash = RMinHash(num_perm=permutations, seed=SEED)
        minhash.update(list(shingles(key, n)))
        for other in lsh.query(minhash):
            if signatures[other].jaccard(minhash) >= near["threshold"]:
                verified.add((other, index))
        lsh.insert(index, minhash)
        signatures.append(minhash)
    return time.perf_counter() - start, verified


def near_defaults() -> dict:
    """curate.near_dedup's defaults, from the schema."""
    properties = load_schema()["properties"]["curate"]["properties"]["near_dedup"]["properties"]
    return {name: prop["default"] for name, prop in properties.items()}


def child(kind: str, rows: int, pairs: int, threads: int) -> dict:
    near = near_defaults()
    keys, planted = corpus(rows, pairs)
    truth = [(a, b) for a, b in planted
             if len(shingles(keys[a], near["ngram"]) & shingles(keys[b], near["ngram"]))
             / len(shingles(keys[a], near["ngram"]) | shingles(keys[b], near["ngram"])) >= near["threshold"]]
    if kind == "ours":
        seconds, label_of = ours(keys, near, threads)
        found = sum(a in label_of and label_of.get(a) == label_of.get(b) for a, b in truth)
        flagged = sum(pos != label for pos, label in label_of.items())
    else:
        seconds, verified = (datasketch_pairs if kind == "datasketch" else rensa_pairs)(keys, near)
        found, flagged = sum(pair in verified for pair in truth), len({b for _, b in verified})
    return {"seconds": seconds, "recall": found / len(truth), "flagged": flagged, "rows": len(keys),
            "mean_chars": sum(map(len, keys)) / len(keys), "planted": len(planted), "truth": len(truth)}


def measured(kind: str, arguments) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--rows", str(arguments.rows), "--pairs",
               str(arguments.pairs), "--threads", str(arguments.threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} failed with status {status}")
    return {**json.loads(output.strip().splitlines()[-1]), "rss_mib": usage.ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=5_000, help="planted near duplicates")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads for ours")
    parser.add_argument("--child", choices=["ours", "datasketch", "rensa"], help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(child(arguments.child, arguments.rows, arguments.pairs, arguments.threads)))
        return 0
    near = near_defaults()
    import importlib.util

    missing = [kind for kind in ("rensa", "datasketch") if importlib.util.find_spec(kind) is None]
    if "rensa" in missing:
        raise SystemExit("rensa is not installed: our pass uses it (pip install -e '.[dev]')")
    if missing:
        print(f"not installed, left out: {', '.join(missing)}")
    results = {kind: measured(kind, arguments) for kind in ("ours", "rensa", "datasketch") if kind not in missing}
    ours_side = results["ours"]
    print(f"rows: {ours_side['rows']:,} keys of {ours_side['mean_chars']:.0f} characters on average; "
          f"{ours_side['planted']:,} planted near duplicates, {ours_side['truth']:,} of them with exact Jaccard >= "
          f"{near['threshold']}")
    print(f"settings: {near['ngram']}-grams, {near['permutations']} permutations, {near['bands']} bands, "
          f"threshold {near['threshold']}; ours on {arguments.threads} DuckDB threads, the others single-threaded")
    names = {"ours": "tunesmith (rensa signatures, DuckDB bands, exact Jaccard, kept rows)",
             "rensa": "rensa RMinHashLSH, candidates checked by RMinHash.jaccard",
             "datasketch": "datasketch MinHashLSH, candidates checked by MinHash.jaccard"}
    print_table(["method", "wall s", "rows/s", "peak RSS MiB", "recall", "rows flagged"], [
        [names[kind], f"{side['seconds']:.2f}", f"{side['rows'] / side['seconds']:,.0f}", f"{side['rss_mib']:,.0f}",
         f"{side['recall']:.4f}", f"{side['flagged']:,}"] for kind, side in results.items()])
    rensa = results["rensa"]
    datasketch = results["datasketch"]["seconds"] / ours_side["seconds"] if "datasketch" in results else float("nan")
    mem_ratio = ours_side["rss_mib"] / rensa["rss_mib"]
    speed_met = rensa["seconds"] >= ours_side["seconds"]
    recall_met = ours_side["recall"] >= rensa["recall"]
    print(f"targets: as fast as rensa {'met' if speed_met else 'NOT met'}, recall >= rensa's "
          f"{'met' if recall_met else 'NOT met'}, peak memory <= 2x rensa's {'met' if mem_ratio <= 2 else 'NOT met'}")
    print(f"RESULT near_dup ratio={datasketch:.2f} "
          f"rensa_ratio={rensa['seconds'] / ours_side['seconds']:.2f} "
          f"recall_delta={100 * (ours_side['recall'] - rensa['recall']):.2f} "
          f"mem_ratio={mem_ratio:.2f} targets_met={str(speed_met and recall_met and mem_ratio <= 2).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
