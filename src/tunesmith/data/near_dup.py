"""Near duplicates among the rows that passed every other check: MinHash LSH finds candidate pairs,
exact Jaccard similarity decides, and rows are taken in order so that a row goes only when it is
that similar to a row that is kept (no chains).

The MinHash signatures are rensa's (a maintained Rust library). When every row's shingle hashes and
signature fit in half of DuckDB's memory limit, rensa signs them in one call and its band test flags
the rows whose bands collide with another row's; only those rows are signed again. Otherwise every row
is signed a range at a time and DuckDB finds the shared bands, spilling what it cannot hold. Either way
the bands' hashes go to DuckDB, which pairs rows whose band agrees (each row with at most ANCHORS + NEIGHBOURS
others per band, so that templated text cannot make the pairs grow with the square of the rows). A pair whose
signatures agree too little to be near the threshold is set aside; the rest are checked by the exact
Jaccard similarity of their character n-gram sets (an estimate would lose true pairs near the
threshold), which rensa has no notion of, and rows are kept in order (greedy, no chains). Reads the
`deduplicated` view (pos, verdict, dedup_key, question_key, context_key); writes `clusters` (pos,
label, cluster, jaccard): each kept row with the rows dropped as its near copies.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy
import pyarrow as pa
import pyarrow.compute as pc

from tunesmith.data.ngrams import Grams, hashed, shingle_hashes
from tunesmith.jobs.progress import Progress, duration

log = logging.getLogger(__name__)

# What a near-duplicate pair must be similar in (curate.near_dedup.key). instruction_response: the
# instruction with the response(s), and the context passage (an alpaca input) apart, so that a long
# passage shared by different questions does not make them near copies, and a short input that is
# the question itself still tells rows apart. prompt_response: the whole row as one text.
NEAR_PARTS = {"instruction_response": ("question_key", "context_key"), "prompt_response": ("dedup_key",)}
SIGNATURE_CHUNK_ROWS = 16_384  # rows hashed (or, signing a range at a time, read) at a time
SIGNED_CHUNK_ROWS = 2_048  # rows signed at a time for their bands (their signatures pass through Python lists)
# A bucket of a band holds the rows whose band agrees. Templated text (one question pattern with a few
# words changed) fills buckets with thousands of rows that are alike but not near copies, and all pairs of a
# bucket grow with its square (bench/curate.py's 1M rows: ~200M pairs, the machine's 24 GiB exhausted).
# Each row is paired with the first ANCHORS rows of each of its buckets and with the NEIGHBOURS rows before it
# there (in row order): every pair of a bucket of up to ANCHORS + 1 rows, at most ANCHORS + NEIGHBOURS pairs a
# row in a larger one. A near copy whose original is neither, in every bucket they share, is missed: on 300k
# templated rows 0.45% of the near-duplicate links all pairs find (1.45% with the anchors alone).
ANCHORS = 16
NEIGHBOURS = 8
# A pair goes to the exact check only when its signatures agree in enough of their values: the MinHash
# estimate of its Jaccard J reaches the threshold t less SPREADS times the estimate's spread at t,
# sqrt(t (1 - t) / permutations) (0.16 below 0.8 for 128 permutations), so that a pair at the threshold is
# passed over a few times in a million. The values are compared by their low byte, which agrees wherever
# the whole value does: the test only ever keeps more.
SPREADS = 4.5
CANDIDATES_SQL = """
CREATE TEMP TABLE candidates AS
WITH ranked AS (
  SELECT pos, band, bucket, row_number() OVER (PARTITION BY band, bucket ORDER BY pos) AS rank FROM bands
)
SELECT DISTINCT a, b FROM (
  SELECT x.pos AS a, y.pos AS b FROM ranked x JOIN ranked y ON x.band = y.band AND x.bucket = y.bucket
  WHERE x.rank <= {anchors} AND x.pos < y.pos
  UNION ALL  -- the rows just before: an equality join on the rank, so a large bucket is not paired whole
  SELECT x.pos, y.pos FROM (SELECT *, unnest(range(1, {neighbours} + 1)) AS step FROM ranked) x
  JOIN ranked y ON x.band = y.band AND x.bucket = y.bucket AND y.rank = x.rank + x.step
)
"""


def _signatures(con, near: dict, seed: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Table `bands` (pos, band, bucket) of the rows whose LSH bands collide with another row's (the only
    ones that can be in a candidate pair), and those rows' positions (ascending) with the low byte of each
    of their MinHash values (a row a row, for `_estimated`).

    When every row's shingle hashes (8 bytes per n-gram, twice: rensa copies them) and signature matrix
    fit in half of DuckDB's memory limit, rensa signs them at once and its one-shot band test flags the
    rows (without an index, which would hold every row's bands); only the flagged rows are signed again,
    for their bands, from the n-gram hashes held. Otherwise every row is signed a range at a time and its bands go to DuckDB, which
    finds the shared buckets and spills what it cannot hold: the memory stays bounded, at the price of
    taking every row's signature through Python lists (about 8 µs a row, against 1 µs)."""
    n, permutations = near["ngram"], near["permutations"]
    con.execute("CREATE TEMP TABLE bands (pos BIGINT, band INTEGER, bucket UBIGINT)")
    rows = f"FROM deduplicated WHERE verdict IS NULL AND length(dedup_key) >= {n}"
    count, total, first, last = con.execute(f"SELECT count(*), coalesce(sum(length(dedup_key) - {n - 1}), 0), "
                                            f"min(pos), max(pos) {rows}").fetchall()[0]
    if not count:
        return numpy.empty(0, numpy.int64), numpy.empty((0, permutations), numpy.uint8)
    held = 16 * total + 4 * permutations * count  # the n-gram hashes (and rensa's copy), the signatures
    if held <= _memory_limit(con) / 2:
        log.info("near-duplicate pass: %d rows signed at once (%d MB)", count, held // 10**6)
        positions, hashes, offsets, flags = _hashed_and_flagged(con, rows, count, total, near, seed)
        chosen = numpy.flatnonzero(flags)  # only these rows are signed again, from the hashes held
        low_bytes = numpy.concatenate([numpy.empty((0, permutations), numpy.uint8)] + [
            _banded(con, positions[batch], *_of_rows(hashes, offsets, batch), near, seed)
            for batch in (chosen[start:start + SIGNED_CHUNK_ROWS] for start in range(0, len(chosen), SIGNED_CHUNK_ROWS))])
        flagged = positions[chosen]
        del positions, hashes, offsets, flags
        _release_freed()
        con.execute(SHARED_SQL)
        return flagged, low_bytes
    log.info("near-duplicate pass: %d rows signed a range at a time (at once they would hold %d MB, over half "
             "of DuckDB's memory limit)", count, held // 10**6)
    con.execute("CREATE TEMP TABLE low_bytes (pos BIGINT, low BLOB)")
    for start in range(first, last + 1, SIGNATURE_CHUNK_ROWS):  # a range of rows at a time, read whole
        keys = con.sql(f"SELECT pos, dedup_key {rows} AND pos BETWEEN {start} AND {start + SIGNATURE_CHUNK_ROWS - 1} "
                       "ORDER BY pos").to_arrow_table()
        for batch in keys.to_batches(SIGNED_CHUNK_ROWS):
            low = _banded(con, batch.column(0).to_numpy(), *shingle_hashes(batch.column(1), n), near, seed)
            con.register("low_chunk", pa.table({"pos": batch.column(0), "low": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(permutations), len(low), [None, pa.py_buffer(low)])}))
            con.execute("INSERT INTO low_bytes SELECT * FROM low_chunk")
            con.unregister("low_chunk")
    con.execute(SHARED_SQL)
    found = con.sql("SELECT pos, low FROM low_bytes SEMI JOIN bands USING (pos) ORDER BY pos").to_arrow_table()
    con.execute("DROP TABLE low_bytes")
    if not found.num_rows:
        return numpy.empty(0, numpy.int64), numpy.empty((0, permutations), numpy.uint8)
    low = found["low"].combine_chunks().cast(pa.large_binary())  # each value `permutations` bytes, back to back
    start = numpy.frombuffer(low.buffers()[1], numpy.int64)[low.offset]
    data = numpy.frombuffer(low.buffers()[2], numpy.uint8)[start:start + len(low) * permutations]
    return found["pos"].to_numpy(), data.reshape(len(low), permutations).copy()


# Only the bands a row shares with another pair rows (the others, most of them, go before the pairing).
SHARED_SQL = """CREATE TEMP TABLE shared AS
SELECT * FROM bands SEMI JOIN (SELECT band, bucket FROM bands GROUP BY ALL HAVING count(*) > 1) USING (band, bucket);
DROP TABLE bands; ALTER TABLE shared RENAME TO bands"""


def _hashed_and_flagged(con, rows: str, count: int, total: int, near: dict, seed: int) -> tuple:
    """Every row's position (ascending) and n-gram hashes (flat, with each row's offsets), and whether its
    bands collide with another row's, by rensa's one-shot band test over every row's signature."""
    from rensa import RMinHash, RMinHashLSH

    n, permutations = near["ngram"], near["permutations"]
    positions, hashes = numpy.empty(count, numpy.int64), numpy.empty(total, numpy.uint64)
    offsets, done = numpy.zeros(count + 1, numpy.int64), 0
    for batch in con.sql(f"SELECT pos, dedup_key {rows} ORDER BY pos").to_arrow_reader(SIGNATURE_CHUNK_ROWS):
        found, found_offsets = shingle_hashes(batch.column(1), n)
        positions[done:done + batch.num_rows] = batch.column(0).to_numpy()
        hashes[offsets[done]:offsets[done] + len(found)] = found
        offsets[done + 1:done + batch.num_rows + 1] = offsets[done] + found_offsets[1:]
        done += batch.num_rows
    _release_freed()
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets.astype(numpy.uint64), permutations, seed)
    lsh = RMinHashLSH(threshold=near["threshold"], num_perm=permutations, num_bands=near["bands"])
    flags = numpy.asarray(lsh.query_duplicate_flags_matrix_one_shot(matrix), bool)
    del matrix, lsh
    _release_freed()
    return positions, hashes, offsets, flags


def _of_rows(hashes: numpy.ndarray, offsets: numpy.ndarray, rows: numpy.ndarray) -> tuple:
    """The n-gram hashes of `rows` (indices into `offsets`), flat, and their offsets."""
    lengths = offsets[rows + 1] - offsets[rows]
    ends = numpy.cumsum(lengths)
    taken = numpy.repeat(offsets[rows] - (ends - lengths), lengths) + numpy.arange(ends[-1] if len(ends) else 0)
    return hashes[taken], numpy.concatenate([[0], ends])


def _banded(con, positions: numpy.ndarray, hashes: numpy.ndarray, offsets: numpy.ndarray, near: dict,
            seed: int) -> numpy.ndarray:
    """Sign a batch of rows (positions, their n-gram hashes flat with offsets), insert their bands' hashes
    into `bands`; their MinHash values' low bytes (rows x permutations)."""
    from rensa import RMinHash

    band_count = near["bands"]
    signatures = numpy.array(RMinHash.digest_matrix_from_flat_token_hashes(
        hashes, offsets.astype(numpy.uint64), near["permutations"], seed).to_rows(), numpy.uint64)
    con.register("band_chunk", pa.table({
        "pos": pa.array(numpy.repeat(positions, band_count), pa.int64()),
        "band": pa.array(numpy.tile(numpy.arange(band_count, dtype=numpy.int32), len(positions)), pa.int32()),
        "bucket": pa.array(_band_hashes(signatures, band_count).ravel(), pa.uint64())}))
    con.execute("INSERT INTO bands SELECT * FROM band_chunk")
    con.unregister("band_chunk")
    return signatures.astype(numpy.uint8)


def _memory_limit(con) -> float:
    """DuckDB's memory limit in bytes (it reports it as e.g. '1.8 GiB')."""
    value, unit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0].split()
    return float(value) * 1024 ** ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB").index(unit)


def _band_hashes(signatures: numpy.ndarray, band_count: int) -> numpy.ndarray:
    """Per row (of MinHash values) and band, a 64-bit hash of the band's values: rows whose band agrees
    share it (two bands that differ sharing it is a 64-bit collision)."""
    return hashed(signatures.reshape(len(signatures), band_count, -1).transpose(2, 0, 1))


def _release_freed() -> None:
    """Hand memory freed by large numpy and Arrow buffers back to the system (glibc and Arrow's pool keep it)."""
    import ctypes
    import ctypes.util

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _links(con, near: dict, flagged: numpy.ndarray, low_bytes: numpy.ndarray) -> dict:
    """Candidate pairs (a < b) whose exact Jaccard, in every key part, reaches the threshold, as
    numpy arrays a, b, jaccard (the least over the parts). The pairs are read a batch at a time and only
    those whose signatures agree enough (`_estimated`) are kept; they are checked exactly a chunk at a time,
    with the n-grams of that chunk's rows (`Grams.similarities`, a part only for the pairs the parts before
    left at or above the threshold)."""
    threshold = near["threshold"]
    least = threshold - SPREADS * (threshold * (1 - threshold) / near["permutations"]) ** 0.5
    kept_a, kept_b, pairs, place = [], [], 0, _places(flagged)
    for batch in con.sql("SELECT a, b FROM candidates ORDER BY a, b").to_arrow_reader(PAIR_CHUNK):
        a, b = batch.column(0).to_numpy(), batch.column(1).to_numpy()
        keep = _estimated(place(a), place(b), low_bytes, least)
        pairs += len(a)
        kept_a.append(a[keep])
        kept_b.append(b[keep])
    a, b = numpy.concatenate(kept_a or [numpy.empty(0, numpy.int64)]), numpy.concatenate(kept_b or [numpy.empty(0, numpy.int64)])
    del kept_a, kept_b, place
    log.info("near-duplicate pass: %d rows share a band with another, %d candidate pairs, %d close enough to "
             "check exactly", len(flagged), pairs, len(a))
    parts, n, found, start, size = NEAR_PARTS[near["key"]], near["ngram"], [], 0, CHECKED_CHUNK
    checked = Progress("near-duplicate pass", len(a), "pairs checked exactly", every=sys.maxsize)  # a line each 30 s
    while start < len(a):
        chunk_a, chunk_b = a[start:start + size], b[start:start + size]
        rows = numpy.union1d(chunk_a, chunk_b)
        con.register("checked", pa.table({"pos": rows}))
        texts = con.sql(f"SELECT {', '.join(parts)} FROM deduplicated SEMI JOIN checked USING (pos) ORDER BY pos").to_arrow_table()
        con.unregister("checked")
        if size > 1 and sum(pc.sum(pc.utf8_length(column)).as_py() or 0 for column in texts.columns) > CHECKED_CHARACTERS:
            size //= 2  # long texts: fewer pairs at a time
            continue
        place = _places(rows)
        index_a, index_b, close = place(chunk_a), place(chunk_b), numpy.arange(len(chunk_a))
        jaccard = numpy.ones(len(chunk_a))
        for column in texts.columns:  # the least over the parts; a part only for the pairs still close
            similar = Grams(column, n, SIGNATURE_CHUNK_ROWS).similarities(index_a[close], index_b[close])
            jaccard[close] = numpy.minimum(jaccard[close], similar)
            close = close[similar >= threshold]
        del texts
        found.append((chunk_a[close], chunk_b[close], jaccard[close]))
        start += len(chunk_a)
        checked.update(start)
    return {name: numpy.concatenate([part[index] for part in found] or [numpy.empty(0, kind)])
            for index, (name, kind) in enumerate((("a", numpy.int64), ("b", numpy.int64), ("jaccard", numpy.float64)))}


PAIR_CHUNK = 65_536  # pairs compared at a time (a few MB of gathered signatures)
CHECKED_CHUNK = 1_048_576  # pairs checked exactly at a time: the n-gram hashes of their rows are held ...
CHECKED_CHARACTERS = 1 << 25  # ... fewer when those rows' texts hold more characters (8 bytes an n-gram)


def _places(positions: numpy.ndarray):
    """A function from positions (of the ascending `positions`) to their places in it: one gather
    from a table over their span (a search of the unordered second rows of pairs was most of the time
    of the signature test)."""
    if not len(positions):
        return lambda found: numpy.empty(0, numpy.int64)
    first = int(positions[0])
    table = numpy.empty(int(positions[-1]) - first + 1, numpy.int32)
    table[positions - first] = numpy.arange(len(positions), dtype=numpy.int32)
    return lambda found: table[found - first]


def _estimated(a, b, low_bytes: numpy.ndarray, least: float) -> numpy.ndarray:
    """Whether the signatures (low bytes) of each pair of rows a, b (places in `low_bytes`) agree in at
    least `least` of their values."""
    keep = numpy.zeros(len(a), bool)
    needed = least * low_bytes.shape[1]
    for start in range(0, len(a), PAIR_CHUNK):
        x, y = low_bytes[a[start:start + PAIR_CHUNK]], low_bytes[b[start:start + PAIR_CHUNK]]
        keep[start:start + PAIR_CHUNK] = (x == y).sum(axis=1) >= needed
    return keep


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
    started = time.monotonic()
    flagged, low_bytes = _signatures(con, near, seed)
    con.execute(CANDIDATES_SQL.format(anchors=ANCHORS, neighbours=NEIGHBOURS))
    con.execute("DROP TABLE bands")
    dropped, kept, jaccard = _kept_against(_links(con, near, flagged, low_bytes))
    del flagged, low_bytes
    con.execute("DROP TABLE candidates")
    labels = sorted(set(kept))
    cluster = {label: index + 1 for index, label in enumerate(labels)}
    con.register("near_copies", pa.table({
        "pos": pa.array(labels + dropped, pa.int64()), "label": pa.array(labels + kept, pa.int64()),
        "cluster": pa.array([cluster[label] for label in labels + kept], pa.int64()),
        "jaccard": pa.array([1.0] * len(labels) + jaccard, pa.float64())}))
    con.execute("INSERT INTO clusters SELECT * FROM near_copies")
    con.unregister("near_copies")
    log.info("near-duplicate pass: %d near copies of %d kept rows, in %s", len(dropped), len(labels),
             duration(time.monotonic() - started))
