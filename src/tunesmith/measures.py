"""Text measures curation judges rows by: script share, estimated tokens, degenerate repetition.

The script and token measures are DuckDB macros (MACROS), so they run inside curation's SQL; the
repetition measure is numpy over a whole column (`tandem_repeats`), since SQL has no way to find a
unit repeated back to back.

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
MACROS = r"""
CREATE MACRO japanese_chars(t) AS length(regexp_replace(t, '[^\p{Hiragana}\p{Katakana}\p{Han}\x{30FC}]', '', 'g'));
CREATE MACRO letter_units(t) AS japanese_chars(t)
  + length(regexp_replace(t, '[^\p{L}]|[\p{Latin}\p{Hiragana}\p{Katakana}\p{Han}\x{30FC}]', '', 'g'))
  + len(regexp_extract_all(t, '\p{Latin}+'));
CREATE MACRO visible_chars(t) AS length(regexp_replace(t, '[\s\v\p{Z}]', '', 'g'));
CREATE MACRO estimated_tokens(t) AS japanese_chars(t) + ceil((visible_chars(t) - japanese_chars(t)) / 4)::BIGINT;
CREATE MACRO japanese_share(t) AS japanese_chars(t) / nullif(letter_units(t), 0);
CREATE MACRO code_points(t) AS list_transform(string_split(t, ''), lambda c: unicode(c));
CREATE MACRO uniform(id, seed, purpose) AS hash(concat_ws(':', id, seed, purpose)) / 18446744073709551616.0;
"""
SPACES_RE2 = r"[\s\v\p{Z}]"


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
