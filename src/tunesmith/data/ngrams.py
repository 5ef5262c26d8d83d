"""Character n-grams of texts, for finding copies: as hashes in SQL (decontamination's overlap with a task
input), as 64-bit hashes over whole Arrow columns in numpy (MinHash signing, LSH band hashes), and the
exact Jaccard similarity of two texts' n-gram sets, which decides a near-duplicate pair
(tunesmith.data.near_dup)."""

from __future__ import annotations

import numpy
import pyarrow as pa

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
    similarity: held as 64-bit hashes in numpy (`shingle_hashes`, `rows` texts at a time), made Python
    objects only for the rows being compared: `of` a row's n-gram set, `similarity` of such a set and
    another row's n-grams, read as they are. Two n-grams count as one only when their hashes collide
    (odds of about (n-grams of the pair)^2 / 2^64)."""

    def __init__(self, texts, n: int, rows: int = 16_384):
        texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
        pieces = [shingle_hashes(texts.slice(start, rows), n) for start in range(0, max(len(texts), 1), rows)]
        ends = numpy.cumsum([0] + [len(hashes) for hashes, _ in pieces])
        self.hashes = numpy.concatenate([hashes for hashes, _ in pieces]).view(numpy.int64)
        offsets = numpy.concatenate([[0]] + [offsets[1:] + end for (_, offsets), end in zip(pieces, ends)])
        short = offsets[1:] == offsets[:-1]  # texts too short to have n-grams: only they are kept as text
        self.short, self.short_place = texts.filter(pa.array(short)), numpy.cumsum(short) - 1
        self.offsets, self.sizes = offsets.tolist(), {}

    def _text(self, row: int) -> str:
        return self.short[int(self.short_place[row])].as_py()

    def of(self, row: int) -> set[int] | str:
        """The row's distinct n-grams; a text too short to have n-grams stands for itself."""
        start, end = self.offsets[row], self.offsets[row + 1]
        return set(self.hashes[start:end].tolist()) if end > start else self._text(row)

    def similarity(self, grams: set[int] | str, row: int) -> float:
        """Exact Jaccard similarity of n-grams (`of`) with the row's; texts too short to have n-grams
        are similar only when equal (two empty contexts are)."""
        start, end = self.offsets[row], self.offsets[row + 1]
        if end == start or isinstance(grams, str):
            return float(end == start and grams == self._text(row))
        found = self.hashes[start:end].tolist()
        size = self.sizes.get(row)
        if size is None:  # a row is often compared again (an anchor of its buckets)
            size = self.sizes[row] = len(set(found))
        shared = len(grams.intersection(found))
        return shared / (len(grams) + size - shared)
