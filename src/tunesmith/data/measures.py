"""Text measures curation judges rows by: script share, estimated tokens, degenerate repetition.

Each is computed over a whole Arrow column at once with numpy over its code points: every character
is classed once per process (Japanese, Latin, other letter, space, by RE2's Unicode properties, as
it first appears), and the counts per text are sums of those classes. No regular expression engine
at hand finds a unit repeated back to back without backreferences, so repetition is numpy too.

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
# What the SQL still computes itself: n-gram windows over code points, and seeded uniform draws.
MACROS = r"""
CREATE MACRO code_points(t) AS list_transform(string_split(t, ''), lambda c: unicode(c));
CREATE MACRO uniform(id, seed, purpose) AS hash(concat_ws(':', id, seed, purpose)) / 18446744073709551616.0;
"""

# Class bits of each code point (UNKNOWN until first seen).
JAPANESE, LATIN, OTHER_LETTER, SPACE, UNKNOWN = 1, 2, 4, 8, 255
_CLASSES = numpy.full(0x110000, UNKNOWN, numpy.uint8)


def _classes(points: numpy.ndarray) -> numpy.ndarray:
    """The class bits of each code point, classing the ones not seen before with RE2 (pyarrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    classes = _CLASSES[points]
    unseen = numpy.flatnonzero(numpy.bincount(points[classes == UNKNOWN], minlength=1))
    if len(unseen):
        characters = pa.array([chr(point) for point in unseen.tolist()], pa.string())

        def matches(pattern):
            return pc.match_substring_regex(characters, pattern).to_numpy(zero_copy_only=False)

        latin, japanese = matches(r"\p{Latin}"), matches(JAPANESE_RE2)
        letter = matches(r"\p{L}") & ~latin & ~japanese
        _CLASSES[unseen] = (japanese * JAPANESE | latin * LATIN | letter * OTHER_LETTER
                            | matches(SPACES_RE2) * SPACE).astype(numpy.uint8)
        classes = _CLASSES[points]
    return classes


def code_points(text) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The code points of all strings of an Arrow array joined (uint32), and each string's length
    (nulls: 0). The array's UTF-8 buffer is decoded as one text: no Python object per string. A slice
    of an array shares its parent's buffer: only the slice's own bytes are read (copying the whole
    buffer for each slice of a batch cost as much as the decoding)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.fill_null(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text, "")
    text = text.cast(pa.large_string())
    lengths = pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(numpy.int64)
    offsets = numpy.frombuffer(text.buffers()[1], numpy.int64)[text.offset:text.offset + len(text) + 1]
    data = text.buffers()[2]
    joined = str(memoryview(data)[offsets[0]:offsets[-1]], "utf-8") if len(text) and data is not None else ""
    points = numpy.frombuffer(joined.encode("utf-32-le"), numpy.uint32)
    return points, lengths


def _per_text(flags: numpy.ndarray, lengths: numpy.ndarray) -> numpy.ndarray:
    """How many of each text's positions are flagged: one summing pass over the texts that have any
    (reduceat reads the flags; a running total would write 8 bytes per character)."""
    counts = numpy.zeros(len(lengths), numpy.int64)
    nonempty = lengths > 0
    if nonempty.any():
        starts = (numpy.cumsum(lengths) - lengths)[nonempty]
        counts[nonempty] = numpy.add.reduceat(flags.view(numpy.uint8), starts, dtype=numpy.int64)
    return counts


def measure(text) -> tuple[dict, numpy.ndarray, numpy.ndarray]:
    """Per string of an Arrow array (nulls give nulls): characters, Japanese characters, letter units
    and non-space characters, as int64 Arrow arrays; with the code points and lengths of the texts
    with spaces removed (for `repetitions`). The Japanese share is japanese / units; estimated
    tokens are japanese + ceil((visible - japanese) / 4)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    points, lengths = code_points(text)
    classes = _classes(points)
    latin = (classes & LATIN) > 0
    starts = numpy.zeros(len(points), bool)
    starts[(numpy.cumsum(lengths) - lengths)[lengths > 0]] = True
    previous_latin = numpy.concatenate([[False], latin[:-1]]) & ~starts
    japanese = _per_text((classes & JAPANESE) > 0, lengths)
    units = japanese + _per_text((classes & OTHER_LETTER) > 0, lengths) + _per_text(latin & ~previous_latin, lengths)
    space = (classes & SPACE) > 0
    visible = lengths - _per_text(space, lengths)
    nulls = pc.is_null(text).to_numpy(zero_copy_only=False)
    measures = {name: pa.array(values, pa.int64(), mask=nulls) for name, values in
                (("chars", lengths), ("japanese", japanese), ("units", units), ("visible", visible))}
    return measures, points[~space], visible


# numpy's temporaries take a few bytes per character measured. Texts are measured a slice of SLICE_ROWS
# at a time, so that they stay small enough for the allocator to reuse (and in cache) rather than fresh
# mappings the kernel faults in page by page: at 262,144 texts a time that was 0.1-0.6 s of system time
# per batch of the bench corpus's answers, more than the measuring itself (bench/README.md).
SLICE_ROWS = 16_384
REPETITION_KEYS = ("min_chars", "min_copies", "min_share", "max_unit_chars")


def measure_slices(text, repetition: dict | None = None) -> dict:
    """`measure`'s measures of an Arrow string array, and with `repetition` (the settings of
    `repetitions`, REPETITION_KEYS) the repetition found, as "repeated"; a slice of texts at a time."""
    import pyarrow as pa

    parts = []
    for start in range(0, max(len(text), 1), SLICE_ROWS):
        measures, points, lengths = measure(text.slice(start, SLICE_ROWS))
        if repetition is not None:
            measures["repeated"] = repetitions(points, lengths, **repetition)
        parts.append(measures)
    return {name: pa.concat_arrays([part[name] for part in parts]) for name in parts[0]}


def repetitions(points: numpy.ndarray, lengths: numpy.ndarray, min_chars: int, min_copies: int, min_share: float,
                max_unit_chars: int):
    """Per text given as code points with spaces removed: the repetition found, as the quarantine
    detail ("'はい' repeated 90 times in a row, covering 1.0"), or null. Texts shorter than
    `min_chars` are not judged."""
    import pyarrow as pa

    judged = lengths >= min_chars
    copies, units = tandem_repeats(points, lengths, max_unit_chars, min_copies, keep=judged)
    with numpy.errstate(divide="ignore", invalid="ignore"):
        share = numpy.where(copies > 0, copies * units / numpy.maximum(lengths, 1), 0)
    details = [None] * len(lengths)
    starts = numpy.cumsum(lengths) - lengths
    for index in numpy.flatnonzero((copies > 0) & (share >= min_share)).tolist():
        text = points[starts[index]:starts[index] + lengths[index]].tobytes().decode("utf-32-le")
        unit, copy = int(units[index]), int(copies[index])
        details[index] = f"{repeated_unit(text, unit, copy)!r} repeated {copy} times in a row, covering {round(float(share[index]), 2)}"
    return pa.array(details, pa.string())


def tandem_repeats(points: numpy.ndarray, lengths: numpy.ndarray, max_unit_chars: int, min_copies: int,
                   keep: numpy.ndarray | None = None) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Per text (code points joined, and lengths): (copies, unit length) of its tandem repeat covering
    the most characters among those of at least `min_copies` copies (0, 0 when none). The smallest
    unit wins a tie, so 「はいはい…」 is 'はい' × 90, not 'はいはい' × 45. Only texts with `keep`
    true (all by default) are judged.

    A unit of p characters repeated k times is a run of (k - 1) p positions i where text[i] ==
    text[i + p]; the runs are found for every p at once over all texts joined, and only texts long
    enough for min_copies copies take part as p grows."""
    count = len(lengths)
    best_copies, best_unit = numpy.zeros(count, numpy.int64), numpy.zeros(count, numpy.int64)
    best_cover = numpy.zeros(count, numpy.int64)
    rows = numpy.arange(count)
    selected = lengths >= max(min_copies, 1)
    if keep is not None:
        selected &= keep
    points = points[numpy.repeat(selected, lengths)]
    rows, row_lengths = rows[selected], lengths[selected]
    layout = None
    for unit in range(1, max_unit_chars + 1):
        eligible = row_lengths >= min_copies * unit
        if not eligible.any():
            break
        if layout is None or eligible.sum() < 0.75 * len(rows):  # shrink as the long texts thin out
            points, rows, row_lengths = points[numpy.repeat(eligible, row_lengths)], rows[eligible], row_lengths[eligible]
            starts = numpy.cumsum(row_lengths) - row_lengths
            ends = starts + row_lengths
            layout = True
        equal = numpy.zeros(len(points), bool)
        equal[:-unit] = points[:-unit] == points[unit:]
        # A text's last `unit` positions are never equal (every text is at least `unit` long here): runs
        # stay in their text. Cleared per text, not by comparing each position with its text's end.
        for back in range(1, unit + 1):
            equal[ends - back] = False
        # min_copies copies need a run of (min_copies - 1) * unit equal positions, so at least that many
        # in the text: the runs are measured only in the few texts that have them.
        candidates = numpy.add.reduceat(equal.view(numpy.uint8), starts, dtype=numpy.int64) >= (min_copies - 1) * unit
        if not candidates.any():
            continue
        within = numpy.repeat(candidates, row_lengths)
        found, found_lengths, found_rows = equal[within], row_lengths[candidates], rows[candidates]
        positions = numpy.arange(len(found))
        run = positions - numpy.maximum.accumulate(numpy.where(found, -1, positions))
        longest = numpy.maximum.reduceat(run, numpy.cumsum(found_lengths) - found_lengths)
        copies = (longest + unit) // unit
        cover = numpy.where(copies >= min_copies, copies * unit, 0)
        better = cover > best_cover[found_rows]
        best_cover[found_rows[better]] = cover[better]
        best_copies[found_rows[better]], best_unit[found_rows[better]] = copies[better], unit
    return best_copies, best_unit


def repeated_unit(text: str, unit: int, copies: int) -> str:
    """The unit of `text` that `tandem_repeats` found repeated `copies` times (for the quarantine detail)."""
    needed, run = (copies - 1) * unit, 0
    for index in range(len(text) - unit):
        run = run + 1 if text[index] == text[index + unit] else 0
        if run >= needed:
            return text[index - run + 1:index - run + 1 + unit]
    return text[:unit]
