"""Near duplicates among the rows that passed every other check: MinHash LSH finds candidate pairs,
exact Jaccard similarity decides, and rows are taken in order so that a row goes only when it is
that similar to a row that is kept (no chains).

The MinHash signatures and the band test are rensa's (a maintained Rust library): it signs every
row from our shingle hashes in one call and flags the rows whose bands collide with another row's;
only those rows' signatures come back, to DuckDB, which pairs rows whose band of `rows` values agree.
The pass then checks each candidate pair's exact Jaccard similarity of its character n-gram sets
(an estimate would lose true pairs near the threshold, and candidates are few), which rensa has no
notion of, and keeps rows in order (greedy, no chains). Reads the `deduplicated` view (pos,
verdict, dedup_key, question_key, context_key); writes `clusters` (pos, label, cluster, jaccard):
each kept row with the rows dropped as its near copies.
"""

from __future__ import annotations

import numpy
import pyarrow as pa

from tunesmith.data.measures import code_points

# What a near-duplicate pair must be similar in (curate.near_dedup.key). instruction_response: the
# instruction with the response(s), and the context passage (an alpaca input) apart, so that a long
# passage shared by different questions does not make them near copies, and a short input that is
# the question itself still tells rows apart. prompt_response: the whole row as one text.
NEAR_PARTS = {"instruction_response": ("question_key", "context_key"), "prompt_response": ("dedup_key",)}
SIGNATURE_CHUNK_ROWS = 16_384  # rows hashed at a time
SIGNED_CHUNK_ROWS = 2_048  # flagged rows signed at a time (their signatures pass through Python lists)
CANDIDATES_SQL = """
CREATE TEMP TABLE candidates AS
WITH bands AS (
  SELECT pos, band, hash(signature[band * {rows} + 1 : (band + 1) * {rows}]) AS bucket
  FROM signatures, range({bands}) AS b(band)
)
SELECT DISTINCT x.pos AS a, y.pos AS b FROM bands x JOIN bands y ON x.band = y.band AND x.bucket = y.bucket
WHERE x.pos < y.pos
"""


def ngrams_sql(text: str, n: int) -> str:
    """SQL: the list of hashes of the text's character n-grams (duplicates kept; empty when shorter)."""
    window = ", ".join(f"cp[i + {offset}]" for offset in range(n))
    return (f"list_transform([code_points({text})], lambda cp: "
            f"list_transform(range(1, len(cp) - {n - 2}), lambda i: hash({window})))[1]")


def _shingle_hashes(texts, n: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The 64-bit hashes of every character n-gram of each text (numpy over code points), flat, and
    each text's offsets into them; a text shorter than n has none."""
    points, lengths = code_points(texts)
    windows = numpy.maximum(lengths - n + 1, 0)
    starts = numpy.repeat(numpy.cumsum(lengths) - lengths, windows) + (
        numpy.arange(windows.sum()) - numpy.repeat(numpy.cumsum(windows) - windows, windows))
    value = numpy.zeros(len(starts), numpy.uint64)
    with numpy.errstate(over="ignore"):
        for offset in range(n):
            value = value * numpy.uint64(0x100000001B3) + points[starts + offset].astype(numpy.uint64)
        # splitmix64's finaliser: every bit of the window reaches every bit of the hash
        value ^= value >> numpy.uint64(30)
        value *= numpy.uint64(0xBF58476D1CE4E5B9)
        value ^= value >> numpy.uint64(27)
        value *= numpy.uint64(0x94D049BB133111EB)
        value ^= value >> numpy.uint64(31)
    return value, numpy.concatenate([[0], numpy.cumsum(windows)]).astype(numpy.int64)


def _signatures(con, near: dict, seed: int) -> None:
    """Table `signatures` (pos, signature): the MinHash signatures of the rows whose LSH bands collide
    with another row's (the only ones that can be in a candidate pair).

    Memory holds the shingle hashes of all rows (8 bytes per n-gram; the keys are streamed from
    DuckDB and hashed a batch at a time), then their compact signature matrix; rensa's one-shot band
    test flags rows without building an index (which would hold every row's bands). The flagged rows
    are few: their keys are read again and signed for SQL."""
    from rensa import RMinHash, RMinHashLSH

    n, permutations = near["ngram"], near["permutations"]
    con.execute("CREATE TEMP TABLE signatures (pos BIGINT, signature UBIGINT[])")
    rows = f"FROM deduplicated WHERE verdict IS NULL AND length(dedup_key) >= {n}"
    count, total = con.execute(f"SELECT count(*), coalesce(sum(length(dedup_key) - {n - 1}), 0) {rows}").fetchall()[0]
    if not count:
        return
    positions, hashes = numpy.empty(count, numpy.int64), numpy.empty(total, numpy.uint64)
    offsets, done = numpy.zeros(count + 1, numpy.uint64), 0
    for batch in con.sql(f"SELECT pos, dedup_key {rows} ORDER BY pos").to_arrow_reader(SIGNATURE_CHUNK_ROWS):
        found, found_offsets = _shingle_hashes(batch.column(1), n)
        positions[done:done + batch.num_rows] = batch.column(0).to_numpy()
        hashes[offsets[done]:offsets[done] + len(found)] = found
        offsets[done + 1:done + batch.num_rows + 1] = offsets[done] + found_offsets[1:].astype(numpy.uint64)
        done += batch.num_rows
    _release_freed()
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, permutations, seed)
    del hashes, offsets
    lsh = RMinHashLSH(threshold=near["threshold"], num_perm=permutations, num_bands=near["bands"])
    flagged = positions[numpy.asarray(lsh.query_duplicate_flags_matrix_one_shot(matrix), bool)]
    del matrix, lsh, positions
    _release_freed()
    con.register("flagged", pa.table({"pos": pa.array(flagged, pa.int64())}))
    flagged = con.sql("SELECT pos, dedup_key FROM deduplicated JOIN flagged USING (pos) ORDER BY pos").to_arrow_table()
    for batch in flagged.to_batches(SIGNED_CHUNK_ROWS):
        found, found_offsets = _shingle_hashes(batch.column(1), n)
        signatures = RMinHash.digest_matrix_from_flat_token_hashes(found, found_offsets.astype(numpy.uint64),
                                                                   permutations, seed).to_rows()
        con.register("signature_chunk", pa.table({"pos": batch.column(0),
                                                  "signature": pa.array(signatures, pa.list_(pa.uint64()))}))
        con.execute("INSERT INTO signatures SELECT * FROM signature_chunk")
        con.unregister("signature_chunk")
    con.unregister("flagged")
    _release_freed()


def _release_freed() -> None:
    """Hand memory freed by large numpy and Arrow buffers back to the system (glibc and Arrow's pool keep it)."""
    import ctypes
    import ctypes.util

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _similarity(a: str, b: str, n: int) -> float:
    """Exact Jaccard similarity of two texts' character n-gram sets; texts too short to have n-grams
    are similar only when equal (two empty contexts are)."""
    if len(a) < n or len(b) < n:
        return float(a == b)
    grams_a = {a[index:index + n] for index in range(len(a) - n + 1)}
    grams_b = {b[index:index + n] for index in range(len(b) - n + 1)}
    shared = len(grams_a & grams_b)
    return shared / (len(grams_a) + len(grams_b) - shared)


def _links(con, near: dict) -> dict:
    """Candidate pairs (a < b) whose exact Jaccard, in every key part, reaches the threshold, as
    numpy arrays a, b, jaccard (the least over the parts)."""
    parts, n = NEAR_PARTS[near["key"]], near["ngram"]
    pairs = con.execute("SELECT a, b FROM candidates ORDER BY a, b").fetchall()
    texts = {pos: values for pos, *values in con.execute(
        f"SELECT d.pos, {', '.join(f'd.{part}' for part in parts)} FROM deduplicated d "
        "JOIN (SELECT a AS pos FROM candidates UNION SELECT b FROM candidates) c ON c.pos = d.pos").fetchall()}
    found = [(a, b, min(_similarity(x, y, n) for x, y in zip(texts[a], texts[b]))) for a, b in pairs]
    found = [link for link in found if link[2] >= near["threshold"]]
    return {"a": numpy.array([a for a, _, _ in found], numpy.int64), "b": numpy.array([b for _, b, _ in found], numpy.int64),
            "jaccard": numpy.array([j for _, _, j in found], numpy.float64)}


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
    _signatures(con, near, seed)
    con.execute(CANDIDATES_SQL.format(rows=near["permutations"] // near["bands"], bands=near["bands"]))
    con.execute("DROP TABLE signatures")
    dropped, kept, jaccard = _kept_against(_links(con, near))
    con.execute("DROP TABLE candidates")
    labels = sorted(set(kept))
    cluster = {label: index + 1 for index, label in enumerate(labels)}
    con.register("near_copies", pa.table({
        "pos": pa.array(labels + dropped, pa.int64()), "label": pa.array(labels + kept, pa.int64()),
        "cluster": pa.array([cluster[label] for label in labels + kept], pa.int64()),
        "jaccard": pa.array([1.0] * len(labels) + jaccard, pa.float64())}))
    con.execute("INSERT INTO clusters SELECT * FROM near_copies")
    con.unregister("near_copies")
