"""Text measures curation judges rows by: script share, estimated tokens, degenerate repetition.

Each is computed over a whole Arrow column at once (`measure`: RE2 kernels; `repetitions`: numpy,
since no regular expression engine at hand finds a unit repeated back to back without backreferences).

- Japanese share: Japanese characters (hiragana, katakana, kanji, the long-vowel mark) over letter
  units, where a run of Latin letters (a word) is one unit and every other letter is one. A
  Japanese question about a Latin-named thing (「Fortranとは？」: 2 of 3 units) stays Japanese;
  an English sentence (every unit a Latin word) does not.
- Estimated tokens: one per Japanese character plus one per 4 other non-space characters, rounded up.
- Repetition: the longest tandem repeat, a unit of up to `max_unit_chars` characters written at
  least `min_copies` times back to back (「はい」×90, one word ×13), and the share of the text's
  non-space characters it covers. Lists and enumerations (ラガー、エール、ラガー…, RAID 0、RAID 1…)
  repeat items, but not one unit many times in a row.
"""

from __future__ import annotations

import numpy

# RE2's \s is ASCII only; \p{Z} adds the ideographic and no-break spaces of Japanese text.
SPACES_RE2 = r"[\s\v\p{Z}]"
JAPANESE_RE2 = r"[\p{Hiragana}\p{Katakana}\p{Han}\x{30FC}]"
NOT_OTHER_LETTER_RE2 = r"[^\p{L}]|[\p{Latin}\p{Hiragana}\p{Katakana}\p{Han}\x{30FC}]"
LATIN_WORD_RE2 = r"\p{Latin}+"
# What the SQL still computes itself: n-gram windows over code points, and seeded uniform draws.
MACROS = r"""
CREATE MACRO code_points(t) AS list_transform(string_split(t, ''), lambda c: unicode(c));
CREATE MACRO uniform(id, seed, purpose) AS hash(concat_ws(':', id, seed, purpose)) / 18446744073709551616.0;
"""


def measure(text) -> dict:
    """Per string of an Arrow array (nulls give nulls): characters, Japanese characters, letter units
    and non-space characters, as int64 arrays (RE2 through pyarrow, over the whole array at once).
    The Japanese share is japanese / units; estimated tokens are japanese + ceil((visible - japanese) / 4)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def count(pattern):
        return pc.count_substring_regex(text, pattern).cast(pa.int64())

    chars = pc.utf8_length(text).cast(pa.int64())
    japanese = count(JAPANESE_RE2)
    other_letters = pc.utf8_length(pc.replace_substring_regex(text, NOT_OTHER_LETTER_RE2, "")).cast(pa.int64())
    return {"chars": chars, "japanese": japanese,
            "units": pc.add(pc.add(japanese, other_letters), count(LATIN_WORD_RE2)),
            "visible": pc.subtract(chars, count(SPACES_RE2))}


def repetitions(compact, min_chars: int, min_copies: int, min_share: float, max_unit_chars: int):
    """Per text with spaces removed (an Arrow array): the repetition found, as the quarantine detail
    ("'はい' repeated 90 times in a row, covering 1.0"), or null. Texts shorter than `min_chars` are
    not judged."""
    import pyarrow as pa

    texts = [text or "" for text in compact.to_pylist()]
    judged = [index for index, text in enumerate(texts) if len(text) >= min_chars]
    copies, units = tandem_repeats([texts[index] for index in judged], max_unit_chars, min_copies)
    details = [None] * len(texts)
    for index, copy, unit in zip(judged, copies.tolist(), units.tolist()):
        share = copy * unit / len(texts[index]) if copy else 0
        if copy and share >= min_share:
            details[index] = (f"{repeated_unit(texts[index], unit, copy)!r} repeated {copy} times in a row, "
                              f"covering {round(share, 2)}")
    return pa.array(details, pa.string())


def tandem_repeats(texts: list[str], max_unit_chars: int, min_copies: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Per text: (copies, unit length) of its tandem repeat covering the most characters among those
    of at least `min_copies` copies (0, 0 when none). The smallest unit wins a tie, so 「はいはい…」
    is 'はい' × 90, not 'はいはい' × 45.

    A unit of p characters repeated k times is a run of (k - 1) p positions i where text[i] ==
    text[i + p]; the runs are found for every p at once over all texts joined (numpy), and only
    texts long enough for min_copies copies take part as p grows."""
    count = len(texts)
    best_copies, best_unit = numpy.zeros(count, numpy.int64), numpy.zeros(count, numpy.int64)
    lengths = numpy.fromiter(map(len, texts), numpy.int64, count)
    rows = numpy.flatnonzero(lengths >= max(min_copies, 1))
    points = numpy.frombuffer("".join(texts[row] for row in rows).encode("utf-32-le"), numpy.uint32)
    best_cover = numpy.zeros(count, numpy.int64)
    for unit in range(1, max_unit_chars + 1):
        eligible = lengths[rows] >= min_copies * unit
        if not eligible.any():
            break
        if eligible.sum() < 0.75 * len(rows):  # shrink the arrays as the long texts thin out
            keep = numpy.repeat(eligible, lengths[rows])
            points, rows = points[keep], rows[eligible]
        row_lengths = lengths[rows]
        starts = numpy.concatenate([[0], numpy.cumsum(row_lengths)[:-1]])
        local = numpy.arange(len(points)) - numpy.repeat(starts, row_lengths)
        equal = numpy.zeros(len(points), bool)
        equal[:-unit] = points[:-unit] == points[unit:]
        equal &= local + unit < numpy.repeat(row_lengths, row_lengths)
        index = numpy.arange(len(points))
        run = index - numpy.maximum.accumulate(numpy.where(equal, -1, index))
        longest = numpy.maximum.reduceat(run, starts)
        copies = (longest + unit) // unit
        cover = numpy.where(copies >= min_copies, copies * unit, 0)
        better = cover > best_cover[rows]
        best_cover[rows[better]] = cover[better]
        best_copies[rows[better]], best_unit[rows[better]] = copies[better], unit
    return best_copies, best_unit


def repeated_unit(text: str, unit: int, copies: int) -> str:
    """The unit of `text` that `tandem_repeats` found repeated `copies` times (for the quarantine detail)."""
    needed, run = (copies - 1) * unit, 0
    for index in range(len(text) - unit):
        run = run + 1 if text[index] == text[index + unit] else 0
        if run >= needed:
            return text[index - run + 1:index - run + 1 + unit]
    return text[:unit]
