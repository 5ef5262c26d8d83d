"""Near duplicates among the rows that passed every other check, in DuckDB: MinHash LSH finds
candidate pairs, exact Jaccard similarity decides, and rows are taken in order so that a row goes
only when it is that similar to a row that is kept (no chains).

Reads the `deduplicated` table (pos, verdict, dedup_key, question_key, context_key) and writes
`clusters` (pos, label, cluster, jaccard): each kept row with the rows dropped as its near copies.
"""

from __future__ import annotations

import hashlib

import numpy
import pyarrow as pa

def ngrams_sql(text: str, n: int) -> str:
    """SQL: the list of hashes of the text's character n-grams (duplicates kept; empty when shorter)."""
    window = ", ".join(f"cp[i + {offset}]" for offset in range(n))
    return (f"list_transform([code_points({text})], lambda cp: "
            f"list_transform(range(1, len(cp) - {n - 2}), lambda i: hash({window})))[1]")


# What a near-duplicate pair must be similar in (curate.near_dedup.key). instruction_response: the
# instruction with the response(s), and the context passage (an alpaca input) apart, so that a long
# passage shared by different questions does not make them near copies, and a short input that is
# the question itself still tells rows apart. prompt_response: the whole row as one text.
NEAR_PARTS = {"instruction_response": ("question_key", "context_key"), "prompt_response": ("dedup_key",)}


# MinHash LSH finds candidate pairs: each row's shingles are hashed once; `permutations` seeded hash
# functions of those hashes give the signature (one min aggregate each, computed in one pass); rows
# whose band of `rows` values agree become candidates. A candidate pair counts when the exact
# Jaccard similarity of its shingle sets reaches `threshold` (an estimate would lose true pairs
# near the threshold, and candidates are few).
SHINGLES_SQL = """
CREATE TEMP TABLE shingles AS
SELECT pos, unnest({grams}) AS shingle FROM deduplicated WHERE verdict IS NULL
"""
SIGNATURES_SQL = "CREATE TEMP TABLE signatures AS SELECT pos, [{minima}] AS signature FROM shingles GROUP BY pos"
LINKS_SQL = """
CREATE TEMP TABLE links AS
WITH bands AS (
  SELECT pos, band, hash(signature[band * {rows} + 1 : (band + 1) * {rows}]) AS bucket
  FROM signatures, range({bands}) AS b(band)
), candidates AS (
  SELECT DISTINCT x.pos AS a, y.pos AS b FROM bands x JOIN bands y ON x.band = y.band AND x.bucket = y.bucket
  WHERE x.pos < y.pos
), sets AS (
  SELECT pos, {sets} FROM deduplicated WHERE pos IN (SELECT a FROM candidates UNION SELECT b FROM candidates)
)
SELECT a, b, jaccard FROM (
  SELECT c.a, c.b, least({similarities}) AS jaccard
  FROM candidates c JOIN sets sa ON sa.pos = c.a JOIN sets sb ON sb.pos = c.b
) WHERE jaccard >= {threshold}
"""


def _similarity_sql(part: str) -> str:
    """SQL: the Jaccard similarity of a candidate pair's n-gram sets of one key part (sets `sa`, `sb`);
    a part too short to have n-grams on either side is similar only when equal (two empty contexts are)."""
    grams, key = f"{part}_grams", f"{part}"
    shared = f"len(list_intersect(sa.{grams}, sb.{grams}))"
    return (f"CASE WHEN len(sa.{grams}) = 0 OR len(sb.{grams}) = 0 THEN (sa.{key} = sb.{key})::DOUBLE "
            f"ELSE {shared} / (len(sa.{grams}) + len(sb.{grams}) - {shared}) END")


def _kept_against(links) -> tuple[list[int], list[int], list[float]]:
    """(dropped row, the kept row it copies, their Jaccard) from links (a < b, jaccard), in row order.
    A row goes only when it is close to a row that is *kept*: a row close only to a dropped row stays,
    so clusters do not chain. Each dropped row names its closest kept row (the earliest on a tie)."""
    order = numpy.lexsort((links["a"], -links["jaccard"], links["b"]))
    dropped: dict[int, tuple[int, float]] = {}
    for a, b, jaccard in zip(links["a"][order].tolist(), links["b"][order].tolist(),
                             links["jaccard"][order].tolist()):
        if b not in dropped and a not in dropped:  # rows before b are settled when b comes
            dropped[b] = (a, jaccard)
    rows = sorted(dropped)
    return rows, [dropped[row][0] for row in rows], [dropped[row][1] for row in rows]


def near_duplicates(con, near: dict, seed: int) -> None:
    """Fill `clusters` (pos, label, cluster, jaccard): each kept row with the rows dropped as its near
    copies (label: the kept row; jaccard 1 for the kept row itself); empty when the pass is off."""
    con.execute("CREATE TEMP TABLE clusters (pos BIGINT, label BIGINT, cluster BIGINT, jaccard DOUBLE)")
    if not near["enabled"]:
        return
    con.execute(SHINGLES_SQL.format(grams=ngrams_sql("dedup_key", near["ngram"])))
    # hash(shingle XOR salt): DuckDB's several-argument hash() combines its arguments too weakly for
    # min-wise independence (estimates twice as noisy as they should be); a full hash of a salted value is not.
    salts = [int.from_bytes(hashlib.sha256(f"{seed}/minhash/{index}".encode()).digest()[:8], "big")
             for index in range(near["permutations"])]
    minima = ", ".join(f"min(hash(xor(shingle, {salt}::UBIGINT)))" for salt in salts)
    con.execute(SIGNATURES_SQL.format(minima=minima))
    con.execute("DROP TABLE shingles")
    parts = NEAR_PARTS[near["key"]]
    sets = ", ".join(f"{part}, list_distinct({ngrams_sql(part, near['ngram'])}) AS {part}_grams" for part in parts)
    con.execute(LINKS_SQL.format(rows=near["permutations"] // near["bands"], bands=near["bands"],
                                 threshold=near["threshold"], sets=sets,
                                 similarities=", ".join(map(_similarity_sql, parts))))
    con.execute("DROP TABLE signatures")
    dropped, kept, jaccard = _kept_against(con.execute("SELECT a, b, jaccard FROM links").fetchnumpy())
    labels = sorted(set(kept))
    cluster = {label: index + 1 for index, label in enumerate(labels)}
    con.register("near_copies", pa.table({
        "pos": pa.array(labels + dropped, pa.int64()), "label": pa.array(labels + kept, pa.int64()),
        "cluster": pa.array([cluster[label] for label in labels + kept], pa.int64()),
        "jaccard": pa.array([1.0] * len(labels) + jaccard, pa.float64())}))
    con.execute("INSERT INTO clusters SELECT * FROM near_copies")
    con.unregister("near_copies")
