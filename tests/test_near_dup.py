"""The near-duplicate pass at the scale where it used to break: templated rows, whose LSH buckets hold
thousands of alike rows, pair each row with a bounded number of others; and the signature test that spares
the exact check never passes over a pair at or above the threshold."""

import random

import duckdb
import numpy
import pyarrow as pa
import pytest

from tunesmith.config.schema import with_defaults
from tunesmith.data import near_dup, ngrams
from tunesmith.data.measures import MACROS

NEAR = with_defaults("curate", {})["near_dedup"]
WORDS = [chr(point) for point in range(0x4E00, 0x4E00 + 400)]  # kanji as the template's changing words


def _connection(keys: list[str]):
    """A DuckDB connection with `deduplicated` as curation leaves it: every row passed, row key = question key."""
    con = duckdb.connect(config={"threads": 1})
    con.execute(MACROS)
    con.register("keys", pa.table({"dedup_key": keys}))
    con.execute("CREATE TABLE deduplicated AS SELECT row_number() OVER () - 1 AS pos, "
                "NULL::STRUCT(reason VARCHAR, detail VARCHAR) AS verdict, dedup_key, dedup_key AS question_key, "
                "'' AS context_key FROM keys")
    return con


def _templated(rows: int, rng: random.Random) -> list[str]:
    """One question pattern with three words changed per row: rows alike (their 5-gram Jaccard about
    0.6-0.8; their LSH buckets hold hundreds of rows), few near copies of another at 0.9."""
    def word() -> str:
        return "".join(rng.choice(WORDS) for _ in range(2))
    return [f"{word()}と{word()}について、次の点を順番に詳しく説明してください。{word()}の場合はどうなりますか"
            for _ in range(rows)]


def test_templated_rows_are_paired_with_a_bounded_number_of_others():
    rng = random.Random(3)
    keys = _templated(3_000, rng)
    copies = {index: keys[index][:-1] + "か？" for index in rng.sample(range(len(keys)), 30)}  # near copies, appended
    keys += list(copies.values())
    near = {**NEAR, "threshold": 0.9}
    con = _connection(keys)
    flagged, low_bytes = near_dup._signatures(con, near, 7)
    buckets = con.execute("SELECT count(*) FROM bands GROUP BY band, bucket ORDER BY 1 DESC LIMIT 1").fetchall()[0][0]
    all_pairs = con.execute("SELECT sum(k * (k - 1) / 2) FROM (SELECT count(*) AS k FROM bands "
                            "GROUP BY band, bucket)").fetchall()[0][0]
    assert buckets > 150  # the case at hand: buckets far larger than the anchors
    con.execute(near_dup.CANDIDATES_SQL.format(anchors=near_dup.ANCHORS, neighbours=near_dup.NEIGHBOURS))
    pairs = con.execute("SELECT count(*) FROM candidates").fetchall()[0][0]
    assert pairs <= (near_dup.ANCHORS + near_dup.NEIGHBOURS) * NEAR["bands"] * len(flagged) and pairs * 4 < all_pairs
    # the whole pass still finds the planted copies: each later copy goes, naming its original
    con = _connection(keys)
    near_dup.near_duplicates(con, near, 7)
    found = {pos: (label, jaccard) for pos, label, jaccard in
             con.execute("SELECT pos, label, jaccard FROM clusters WHERE pos <> label").fetchall()}
    planted = {3_000 + order: original for order, original in enumerate(copies)}
    assert sum(found.get(copy, (None,))[0] == original for copy, original in planted.items()) >= 0.9 * len(planted)
    # and a row goes only as a near copy of the row it names: its exact Jaccard, at least the threshold
    assert all(jaccard == _jaccard(keys[pos], keys[label], near["ngram"]) >= 0.9
               for pos, (label, jaccard) in found.items())


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
def test_the_signature_test_keeps_every_pair_at_the_threshold_and_spares_most_others(threshold):
    rng = random.Random(int(threshold * 10))
    n, permutations = NEAR["ngram"], NEAR["permutations"]
    texts, pairs, exact = [], [], []
    while len(pairs) < 600:  # pairs of one 200-character text and a copy with some characters changed
        text = "".join(rng.choice(WORDS) for _ in range(200))
        copy = list(text)
        for index in rng.sample(range(200), rng.randrange(1, 12) if len(pairs) % 2 else rng.randrange(12, 120)):
            copy[index] = rng.choice(WORDS)
        copy = "".join(copy)
        jaccard = _jaccard(text, copy, n)
        pairs.append((len(texts), len(texts) + 1))
        exact.append(jaccard)
        texts += [text, copy]
    hashes, offsets = ngrams.shingle_hashes(pa.array(texts), n)
    from rensa import RMinHash
    low_bytes = numpy.array(RMinHash.digest_matrix_from_flat_token_hashes(
        hashes, offsets.astype(numpy.uint64), permutations, 7).to_rows(), numpy.uint64).astype(numpy.uint8)
    a, b = (numpy.array(side, numpy.int64) for side in zip(*pairs))
    least = threshold - near_dup.SPREADS * (threshold * (1 - threshold) / permutations) ** 0.5
    kept = near_dup._estimated(a, b, low_bytes, least)
    exact = numpy.array(exact)
    assert (exact >= threshold).sum() >= 20 and kept[exact >= threshold].all()
    far = exact < threshold - 0.35
    assert far.sum() >= 20 and kept[far].mean() < 0.05


def _jaccard(text: str, other: str, n: int) -> float:
    """Exact Jaccard similarity of two texts' character n-gram sets, as strings; a text too short to have
    n-grams is similar only to itself."""
    if len(text) < n or len(other) < n:
        return float(text == other)
    grams, others = ({t[i:i + n] for i in range(len(t) - n + 1)} for t in (text, other))
    return len(grams & others) / len(grams | others)


def test_the_exact_check_is_the_jaccard_of_the_texts_n_gram_sets(monkeypatch):
    """The exact check compares n-grams by their 64-bit hashes, a batch of pairs at a time: it gives the
    Jaccard similarity of the n-gram sets of the texts themselves, with n-grams a text repeats counted once,
    short and empty texts equal only to themselves, whatever pairs a batch holds."""
    rng = random.Random(11)
    n = NEAR["ngram"]
    texts = ["", "", "短い", "短い", "短いね", "ははははははははははははははは", "はははははははは", "ab", "abcde", "abcdef"]
    for _ in range(60):
        text = "".join(rng.choice(WORDS[:30]) for _ in range(rng.randrange(3, 60)))
        copy = list(text)
        for index in rng.sample(range(len(text)), rng.randrange(0, len(text) // 2 + 1)):
            copy[index] = rng.choice(WORDS[:30])
        texts += [text, "".join(copy)]
    grams = ngrams.Grams(pa.array(texts), n)
    a, b = (side.ravel() for side in numpy.meshgrid(numpy.arange(len(texts)), numpy.arange(len(texts)), indexing="ij"))
    expected = [_jaccard(texts[row], texts[other], n) for row, other in zip(a, b)]
    assert grams.similarities(a, b).tolist() == expected
    assert sum(0 < value < 1 for value in expected) > 50  # not only the trivial cases
    order = numpy.random.default_rng(3).permutation(len(a))  # pairs in any order, a few n-grams a batch
    monkeypatch.setattr(ngrams.Grams, "PAIR_GRAMS", 40)
    assert grams.similarities(a[order], b[order]).tolist() == [expected[index] for index in order]


def test_checking_a_few_pairs_at_a_time_finds_the_same_near_copies(monkeypatch, caplog):
    """The exact check holds the n-grams of a chunk of pairs' rows; chunks of any size, cut by pairs or
    by the characters of their rows, find the same clusters. A long check logs how far it is."""
    from tunesmith.jobs import progress

    monkeypatch.setattr(progress, "LOG_SECONDS", 0)  # a line at every chunk, not every 30 s
    caplog.set_level("INFO", logger="tunesmith.jobs.progress")
    rng = random.Random(9)
    keys = _templated(1_500, rng)
    keys += [keys[index][:-1] + "か？" for index in rng.sample(range(len(keys)), 20)]
    near = {**NEAR, "threshold": 0.9}
    found = []
    for pairs, characters in ((near_dup.CHECKED_CHUNK, near_dup.CHECKED_CHARACTERS), (7, 1 << 25), (1 << 20, 300)):
        monkeypatch.setattr(near_dup, "CHECKED_CHUNK", pairs)
        monkeypatch.setattr(near_dup, "CHECKED_CHARACTERS", characters)
        con = _connection(keys)
        near_dup.near_duplicates(con, near, 7)
        found.append(con.execute("SELECT * FROM clusters ORDER BY pos").fetchall())
    assert len(found[0]) >= 20 and found[0] == found[1] == found[2]
    lines = [record.getMessage() for record in caplog.records if "pairs checked exactly" in record.getMessage()]
    assert len(lines) > 10 and lines[-1].startswith("near-duplicate pass: ") and "(100%)" in lines[-1]


def test_signing_a_range_at_a_time_finds_what_signing_at_once_does(monkeypatch):
    """Past half of DuckDB's memory limit, every row is signed a range at a time and DuckDB finds the
    shared buckets: the same rows, low bytes, pairs and clusters as rensa's one-shot band test."""
    rng = random.Random(5)
    keys = _templated(2_000, rng)
    keys += [keys[index][:-1] + "か？" for index in rng.sample(range(len(keys)), 20)]
    near = {**NEAR, "threshold": 0.9}
    found = []
    for limit in (None, 0):
        if limit is not None:
            monkeypatch.setattr(near_dup, "_memory_limit", lambda con: limit)
        con = _connection(keys)
        flagged, low_bytes = near_dup._signatures(con, near, 7)
        bands = con.execute("SELECT pos, band, bucket FROM bands ORDER BY ALL").fetchall()
        con = _connection(keys)
        near_dup.near_duplicates(con, near, 7)
        found.append((flagged, low_bytes, bands, con.execute("SELECT * FROM clusters ORDER BY pos").fetchall()))
    (flagged, low_bytes, bands, clusters), (flagged_2, low_bytes_2, bands_2, clusters_2) = found
    assert len(flagged) > 500 and (flagged == flagged_2).all() and (low_bytes == low_bytes_2).all()
    assert bands == bands_2 and clusters == clusters_2 and len(clusters) >= 20


def test_in_a_large_bucket_each_row_meets_the_first_rows_and_the_rows_just_before_it():
    """The pairing rule itself: in a band shared by 200 rows, a row is paired with the bucket's first
    ANCHORS rows and the NEIGHBOURS rows just before it (a copy written right after its original, an
    augmented row, is met wherever it lies), and with no other; a small bucket is paired whole."""
    con = duckdb.connect()
    large = list(range(1_000, 1_200))  # one bucket of 200 rows in band 3
    small = [5, 7, 9]  # and a bucket of three in band 4
    con.register("rows", pa.table({"pos": large + small, "band": [3] * 200 + [4] * 3,
                                   "bucket": [42] * 200 + [42] * 3}))
    con.execute("CREATE TEMP TABLE bands AS SELECT pos, band::INTEGER AS band, bucket::UBIGINT AS bucket FROM rows")
    con.execute(near_dup.CANDIDATES_SQL.format(anchors=near_dup.ANCHORS, neighbours=near_dup.NEIGHBOURS))
    pairs = set(con.execute("SELECT a, b FROM candidates").fetchall())
    expected = {(a, b) for index, b in enumerate(large) for a in large[:index]
                if a < large[near_dup.ANCHORS] or index - large.index(a) <= near_dup.NEIGHBOURS}
    assert pairs == expected | {(5, 7), (5, 9), (7, 9)}
    assert (1_150, 1_151) in pairs and (1_100, 1_150) not in pairs and (1_003, 1_150) in pairs
