"""tunesmith's MinHash LSH near-duplicate pass against datasketch's MinHashLSH, on 100,000 rows.

    python bench/near_dup.py            # options: --rows --pairs --threads

Both sides get the same texts (the normalised, case-folded, whitespace-free keys curation compares),
the same character 5-grams, 128 permutations, 16 bands of 8 rows and threshold 0.8 (the recipe
defaults). Ours is `tunesmith.curate._near_duplicates` on a DuckDB table of those keys (signatures,
bands, candidate pairs, estimated-Jaccard check, connected components); datasketch is the usual loop
(one MinHash per row with shared permutations, `update_batch`, `query` then `insert`).

Ground truth: the corpus is random sentences from a word list, plus `--pairs` planted near duplicates
(a copy with one to three small edits). The truth set is the planted pairs whose exact 5-gram Jaccard
similarity is at least the threshold. Recall = share of those pairs each method reports: ours when
both rows end up in the same cluster; datasketch when the copy's query returns the original and their
MinHash Jaccard estimate reaches the threshold (the same check ours makes; the recall of its raw LSH
candidates, which include pairs below the threshold, is printed too).
Ends with one line:
RESULT near_dup ratio=<datasketch seconds / ours> recall_delta=<(our recall - datasketch recall) in points>
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import duckdb
import pyarrow as pa

from _common import print_table
from tunesmith.curate import with_defaults
from tunesmith.measures import MACROS
from tunesmith.near_dup import near_duplicates
from tunesmith.normalize import match_keys_of_normalized, normalize_many

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
    """Seconds of the near-duplicate pass, and each clustered row's cluster."""
    with duckdb.connect(config={"threads": threads}) as con:
        con.execute(MACROS)
        con.register("keys", pa.table({"dedup_key": keys}))
        con.execute("CREATE TABLE deduplicated AS SELECT row_number() OVER () - 1 AS pos, "
                    "NULL::STRUCT(reason VARCHAR, detail VARCHAR) AS verdict, dedup_key FROM keys")
        start = time.perf_counter()
        _near_duplicates(con, settings, SEED)
        seconds = time.perf_counter() - start
        return seconds, dict(con.execute("SELECT pos, cluster FROM clusters").fetchall())


def theirs(keys: list[str], settings: dict) -> tuple[float, set[tuple[int, int]], set[tuple[int, int]]]:
    """Seconds of datasketch's MinHash + LSH, the (earlier row, row) pairs its queries returned, and
    those whose MinHash Jaccard estimate reaches the threshold (the check ours makes)."""
    from datasketch import MinHash, MinHashLSH

    near = settings["near_dedup"]
    n, permutations, bands = near["ngram"], near["permutations"], near["bands"]
    start = time.perf_counter()
    template = MinHash(num_perm=permutations, seed=SEED)
    lsh = MinHashLSH(threshold=near["threshold"], num_perm=permutations, params=(bands, permutations // bands))
    found, verified, signatures = set(), set(), []
    for index, key in enumerate(keys):
        minhash = MinHash(num_perm=permutations, permutations=template.permutations, scheme=template.scheme)
        minhash.update_batch([gram.encode("utf-8") for gram in shingles(key, n)])
        for other in lsh.query(minhash):
            found.add((other, index))
            if signatures[other].jaccard(minhash) >= near["threshold"]:
                verified.add((other, index))
        lsh.insert(index, minhash)
        signatures.append(minhash)
    return time.perf_counter() - start, found, verified


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=5_000, help="planted near duplicates")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads for ours")
    arguments = parser.parse_args()
    settings = with_defaults({})
    near = settings["near_dedup"]
    keys, planted = corpus(arguments.rows, arguments.pairs)
    truth = [(a, b) for a, b in planted
             if len(shingles(keys[a], near["ngram"]) & shingles(keys[b], near["ngram"]))
             / len(shingles(keys[a], near["ngram"]) | shingles(keys[b], near["ngram"])) >= near["threshold"]]

    our_seconds, cluster_of = ours(keys, settings, arguments.threads)
    their_seconds, their_pairs, their_verified = theirs(keys, settings)
    our_recall = sum(a in cluster_of and cluster_of.get(a) == cluster_of.get(b) for a, b in truth) / len(truth)
    candidate_recall = sum((a, b) in their_pairs for a, b in truth) / len(truth)
    their_recall = sum((a, b) in their_verified for a, b in truth) / len(truth)
    clustered = len(cluster_of) - len(set(cluster_of.values()))

    print(f"rows: {len(keys):,} keys of {sum(map(len, keys)) / len(keys):.0f} characters on average; "
          f"{len(planted):,} planted near duplicates, {len(truth):,} of them with exact Jaccard >= {near['threshold']}")
    print(f"settings: {near['ngram']}-grams, {near['permutations']} permutations, {near['bands']} bands, "
          f"threshold {near['threshold']}; ours on {arguments.threads} DuckDB threads, datasketch single-threaded")
    print_table(["method", "wall s", "rows/s", "recall", "rows flagged"], [
        ["tunesmith (DuckDB MinHash LSH, verified, clusters)", f"{our_seconds:.2f}",
         f"{len(keys) / our_seconds:,.0f}", f"{our_recall:.4f}", f"{clustered:,}"],
        ["datasketch MinHashLSH, candidates checked by MinHash.jaccard", f"{their_seconds:.2f}",
         f"{len(keys) / their_seconds:,.0f}", f"{their_recall:.4f}", f"{len({b for _, b in their_verified}):,}"],
        ["datasketch MinHashLSH, raw candidates (same run)", "", "", f"{candidate_recall:.4f}",
         f"{len({b for _, b in their_pairs}):,}"],
    ])
    print(f"RESULT near_dup ratio={their_seconds / our_seconds:.2f} "
          f"recall_delta={100 * (our_recall - their_recall):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
