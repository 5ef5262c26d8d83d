"""Character n-grams of texts, for finding copies: as hashes in SQL (decontamination's overlap with a task
input), as 64-bit hashes over whole Arrow columns in numpy (MinHash signing, LSH band hashes), and the
exact Jaccard similarity of pairs of texts' n-gram sets, which decides a near-duplicate pair
(tunesmith.data.near_dup), by polars' list set intersection."""

from __future__ import annotations

import numpy
import pyarrow as pa
import pyarrow.compute as pc

from tunesmith.data.measures import code_points


def ngrams_sql(text: str, n: int) -> str:
    """SQL: the list of hashes of the text's character n-grams (duplicates kept; empty when shorter)."""
    window = ", ".join(f"cp[i + {offset}]" for offset in range(n))
    return (f"list_transform([code_points({text})], lambda cp: "
            f"list_transform(range(1, len(cp) - {n - 2}), lambda i: hash({window})))[1]")


def shingle_hashes(texts, n: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The 64-bit hashes of every character n-gram of each text (numpy over code points), flat, and
    each text's offsets into them; a text shorter than n has none."""
    points, lengths = code_points(texts)
    windows = numpy.maximum(lengths - n + 1, 0)
    starts = numpy.repeat(numpy.cumsum(lengths) - lengths, windows) + (
        numpy.arange(windows.sum()) - numpy.repeat(numpy.cumsum(windows) - windows, windows))
    return (hashed(points[starts + offset].astype(numpy.uint64) for offset in range(n)),
            numpy.concatenate([[0], numpy.cumsum(windows)]).astype(numpy.int64))


def hashed(columns) -> numpy.ndarray:
    """A 64-bit hash of each position's values in `columns` (uint64 arrays of one shape), in their order."""
    value = None
    with numpy.errstate(over="ignore"):
        for column in columns:
            value = column.copy() if value is None else value * numpy.uint64(0x100000001B3) + column
        # splitmix64's finaliser: every bit of the values reaches every bit of the hash
        value ^= value >> numpy.uint64(30)
        value *= numpy.uint64(0xBF58476D1CE4E5B9)
        value ^= value >> numpy.uint64(27)
        value *= numpy.uint64(0x94D049BB133111EB)
        value ^= value >> numpy.uint64(31)
    return value


class Grams:
    """The character n-grams of the texts of an Arrow string array (rows by index), for exact Jaccard
    similarity of pairs of rows (`similarities`): held as 64-bit hashes (`shingle_hashes`, `rows` texts at a
    time), one list a row, compared a batch of pairs at a time by polars' list set intersection (Rust, over whole
    columns: a Python set a pair took three times as long). Two n-grams count as one only when their hashes
    collide (odds of about (n-grams of the pair)^2 / 2^64); n-grams a text repeats count once."""

    PAIR_GRAMS = 1 << 21  # n-grams of the pairs gathered at a time (8 bytes each: 16 MiB a side)

    def __init__(self, texts, n: int, rows: int = 16_384):
        import polars

        texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
        pieces = [shingle_hashes(texts.slice(start, rows), n) for start in range(0, max(len(texts), 1), rows)]
        ends = numpy.cumsum([0] + [len(hashes) for hashes, _ in pieces])
        hashes = numpy.concatenate([hashes for hashes, _ in pieces]).view(numpy.int64)
        offsets = numpy.concatenate([[0]] + [offsets[1:] + end for (_, offsets), end in zip(pieces, ends)])
        self.lists = polars.from_arrow(pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(hashes)))
        self.sizes = self.lists.list.n_unique().to_numpy().astype(numpy.int64)  # distinct n-grams a row
        self.lengths = numpy.diff(offsets)
        self.texts = texts  # a text too short to have n-grams stands for itself

    def similarities(self, a: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
        """Exact Jaccard similarity of the n-grams of each pair of rows a[i], b[i]; texts too short to have
        n-grams are similar only when equal (two empty contexts are), and to no text that has them."""
        import polars

        found = numpy.zeros(len(a), numpy.float64)
        short_a, short_b = self.lengths[a] == 0, self.lengths[b] == 0
        both = numpy.flatnonzero(short_a & short_b)
        if len(both):
            equal = pc.equal(self.texts.take(pa.array(a[both])), self.texts.take(pa.array(b[both])))
            found[both] = pc.fill_null(equal, False).to_numpy(zero_copy_only=False)
        grams = numpy.flatnonzero(~short_a & ~short_b)
        cost = numpy.cumsum(self.lengths[a[grams]] + self.lengths[b[grams]])
        start = 0
        while start < len(grams):
            end = max(int(numpy.searchsorted(cost, (cost[start - 1] if start else 0) + self.PAIR_GRAMS)), start + 1)
            chosen = grams[start:end]
            pairs = polars.DataFrame({"a": self.lists.gather(a[chosen]), "b": self.lists.gather(b[chosen])})
            shared = pairs.select(polars.col("a").list.set_intersection(polars.col("b")).list.len())
            shared = shared.to_series().to_numpy().astype(numpy.int64)
            found[chosen] = shared / (self.sizes[a[chosen]] + self.sizes[b[chosen]] - shared)
            start = end
        return found
